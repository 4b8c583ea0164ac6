/* The CUDA backend of the engine's backend interface (engine/backend.h):
 * the model's matrices in GPU memory as BF16, linear layers through
 * cublasLt (BF16 inputs, FP32 accumulation and output), the kernels of
 * kernels/ops.h for the rest, and a paged BF16 KV cache sized from the GPU
 * memory left. Built only when nvcc is found (EMBER_CUDA). The engine
 * reaches it as cuda_device (engine/device.h); this header is for the GPU
 * tests and benchmark, which ask for more (eager steps, upload figures).
 * Runs in the worker's engine thread. */
#ifndef EMBER_CUDA_H
#define EMBER_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

#include "../engine/backend.h"
#include "../engine/model.h"

struct cuda_opts {
	int device;          /* CUDA device index */
	int max_tokens;      /* entries per step; 0: 512 */
	int max_seqs;        /* 0: 1 */
	int max_ctx;         /* 0: min(max_position_embeddings, 4096) */
	int kv_blocks;       /* > 0: this many blocks for bound tables; 0: each
	                      * sequence its own max_ctx (as cpu_opts); < 0: a
	                      * pool from gpu_memory_fraction */
	double gpu_memory_fraction; /* of the memory free once the model is in (0: 0.9) */
	bool eager;          /* no CUDA graphs: every step launched kernel by kernel
	                      * (for tests and benchmarks that compare the two) */
	int dgemm_rows;      /* steps of at most this many entries run their products
	                      * through cuda_dgemm, larger ones through cublasLt; 0:
	                      * CUDA_DGEMM_ROWS, < 0: never (for the benchmark that
	                      * measures where the two cross) */
};

/* How the weights went up; for logs and benchmarks. */
struct cuda_load_stats {
	double init_s;       /* CUDA context and cuBLAS */
	double upload_s;     /* the weights to the GPU */
	size_t upload_bytes;
	int upload_threads;  /* host threads filling the pinned staging buffers */
	double graph_s;      /* capturing the decode steps' CUDA graphs */
	int graphs;          /* batch sizes captured */
	char graph_error[EMBER_ERR_LEN]; /* why capturing stopped early ("" when it did not):
	                      * the larger batches then run kernel by kernel */
	size_t free_bytes, total_bytes; /* GPU memory after the KV cache */
};

/* GPUs visible; 0 without a driver or device (never an error). */
int cuda_device_count(void);

/* Bytes of one KV cache block (all layers, K and V, BF16). */
size_t cuda_kv_block_bytes(const struct model *m);

/* Creates the backend on device o->device: uploads every matrix of m
 * (converted to BF16 when stored otherwise, several host threads filling
 * pinned staging buffers on streams of their own), allocates every
 * buffer, so that a step allocates nothing, and captures a CUDA graph of
 * the decode step for each batch size bucket up to max_seqs (a step whose
 * every entry is one sequence's next token, with a logits row each, is
 * replayed from the smallest bucket that holds it; others are launched
 * kernel by kernel). The backend samples on the GPU (be_sample). Returns 0, or a negative errno with
 * err saying what is missing (no GPU, not enough memory for the model:
 * how much it needs and how much is free). stats may be NULL. */
int cuda_backend_create(const struct model *m, const struct cuda_opts *o, struct backend **out,
			struct cuda_load_stats *stats, char *err);

/* Where a decode step's time goes: the GPU time of each class of its
 * kernels and the fewest bytes each moves (weights, activations read and
 * written once, the keys and values attention reads). */
enum { CUDA_SPLIT_PRODUCTS, CUDA_SPLIT_ATTENTION, CUDA_SPLIT_REST, CUDA_SPLITS };
#define CUDA_SPLIT_PARTS 16
struct cuda_split {
	double s[CUDA_SPLITS], bytes[CUDA_SPLITS];
	/* the same by op kind, and a product by its shape ("gemm 1536x8960"),
	 * in the order they first run; the sampling kernel last */
	int n_parts;
	struct cuda_split_part {
		char what[32];
		int count;
		double s, bytes;
	} part[CUDA_SPLIT_PARTS];
};

/* Runs the step of n entries as be_sample would with greedy rows, kernel by
 * kernel (the ops a graph holds, the same fusions) behind a 20 ms hold, so
 * that they run back to back as from a graph, with an event after each op:
 * the tokens go nowhere. Returns as be_sample. */
int cuda_step_split(struct backend *b, const struct be_entry *e, int n, struct cuda_split *out,
		    char *err);

#ifdef __cplusplus
}
#endif

#endif
