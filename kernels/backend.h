// The CUDA backend's own state and the functions its files share
// (backend.cu: creation, the step, graphs, sampling; optable.cu: the table
// of operations and the step's split by op). C++, kernels/ only.
#pragma once

#include "cuda.h"

#include "../engine/kv.h"
#include "../engine/program.h"
#include "gemm.h"
#include "ops.h"

#include <cuda_runtime.h>

typedef uint16_t bf16_t;

namespace cuda_be {

// A gemm's matrix on the device: its parts stacked by rows as BF16, and
// their biases side by side (zero where a part has none).
struct dweight {
	bf16_t *w;    // (rows, cols)
	float *bias;  // (rows) or NULL
	bool alias;   // another weight's memory (a tied LM head): not freed
};

#define MAX_GRAPHS 16

// A decode step captured for batches of up to `size` entries.
struct graph {
	int size;
	cudaGraphExec_t exec;
};

struct cuda_backend {
	struct backend base;
	const struct program *p;
	int kv_dim, max_blocks;
	int dev;        // the CUDA device, made current in the thread that steps
	cudaStream_t st;
	struct gemm_plans gemm;
	// the program's weights, norm vectors and buffers
	struct dweight *w; // (n_weights)
	float **vec;    // (n_vecs) (width) the norms' vectors; NULL where no norm reads one
	void **buf;     // (n_bufs) (max_tokens, width): bf16 where a gemm reads it, else f32
	float *cos, *sin; // (max_ctx, head_dim / 2)
	// the cache: (n_layers, kv_blocks + 1, KV_BLOCK, kv_dim) each
	bf16_t *kc, *vc;
	float *logits;  // (logit_cap, vocab)
	float *work;    // attention's split partials: cuda_attention_work floats
	int splits;
	// a step's entries and block tables: built in pinned memory, one upload
	void *h_step, *d_step;
	size_t step_bytes;
	float *h_logits;
	int logit_cap;
	struct kv_tables kv; // the sequences' block tables (before the KV cache is sized: none)
	int *seq_row; // (max_seqs) a sequence's row in this step's tables, or -1
	int pad_block; // a block of no sequence's: padded entries write there
	int n_dec, n_tiles; // this step's attention plan (step_upload)
	bool rope_in_attention; // this step's rope_kv is attention's (cuda_attention)
	// sampling: (max_seqs) rows, then their penalty lists (seen_cap each
	// of tokens and counts), one upload; results (max_seqs) back
	void *h_samp, *d_samp;
	size_t seen_cap;
	struct sampler_result *h_out, *d_out;
	float *samp_work;  // (max_seqs, 2 * vocab)
	struct graph graphs[MAX_GRAPHS];
	int n_graphs;
	// How a step of at most dgemm_rows entries runs each op (fuse_plan):
	// its products through cuda_dgemm, some with the next op in their
	// epilogue. Larger steps run every op as the program says.
	struct fusion *fused; // (n_ops)
	int dgemm_rows;       // cuda_opts's, resolved: 0 for none
	bool small;           // this step's: body and head alike
	float *dg_work;       // the largest cuda_dgemm_work of the program's products
	size_t dg_work_n;
};

// What becomes of an op in a small step. A gemm whose output only the next
// op reads, an RMSNorm's residual add (RESID: the product is added into
// that norm's residual, and the norm adds nothing) or SwiGLU (SWIGLU: the
// product writes the activation, and the SwiGLU op is skipped). And in a
// step whose entries are distinct sequences one by one (rope_in_attention,
// small or not), a rope_kv that the attention of its rows follows (ROPE,
// both ops): the attention kernel rotates and writes the cache itself.
enum fuse_how { FUSE_NONE, FUSE_RESID, FUSE_SWIGLU, FUSE_NO_ADD, FUSE_SKIP, FUSE_ROPE };

struct fusion {
	enum fuse_how how;
	int buf; // RESID: the residual buffer; SWIGLU: the activation's
	// An RMSNorm (with nothing to add) that only the gemm after it reads:
	// in a step of few rows (norm_in_gemm) the gemm does it (cuda_dgemm_norm)
	// and the norm is skipped. The gemm's norm: that op's index, or -1.
	bool in_next;
	int norm;
};

// The step's device arrays, in d_step as step_upload lays them out.
struct step_dev {
	struct be_entry *e;   // (max_tokens)
	int32_t *tab, *rows;  // (max_tokens) each entry's table row; each logits row's entry
	int32_t *dec, *tiles; // (max_tokens), (max_tokens, 2): cuda_attention_plan's
	int32_t *tables;      // (max_seqs + 1, max_blocks), the last for padding
};

// What every operation gets: how many rows it runs on (the entries in the
// body, the logits rows in the head), the step's device arrays and, in
// the head, each row's entry.
struct cuda_step {
	int n;
	int max_pos;
	const int32_t *rows; // (n) in the head; NULL in the body
	struct step_dev d;
};

typedef int (*cuda_op_fn)(struct cuda_backend *cb, const struct op *o, const struct cuda_step *s,
			  char *err);
extern const cuda_op_fn cuda_op_table[OP_KINDS];
extern const char *const op_names[OP_KINDS];

// backend.cu
struct step_dev step_arrays(struct cuda_backend *cb, void *base);
int step_upload(struct cuda_backend *cb, const struct be_entry *e, int n, int pad, bool graph,
		char *err);
int sample_upload(struct cuda_backend *cb, const struct sampler_row *rows, int r0, int r1,
		  char *err);
int step_finish(struct cuda_backend *cb, char *err);

// optable.cu
int launched(cudaError_t ce, const char *kernel, char *err);
bool op_fits(const struct program *p, const struct op *o);
void fuse_plan(const struct program *p, struct fusion *f);
int run_ops(struct cuda_backend *cb, int from, int to, const struct cuda_step *s, char *err);

} // namespace cuda_be
