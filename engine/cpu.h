/* The CPU backend: the reference implementation of the program's
 * operations (program.h), with F32 activations and KV cache over BF16, F16
 * or F32 weights. Runs in the worker's engine thread and its thread pool. */
#ifndef EMBER_CPU_H
#define EMBER_CPU_H

#include "backend.h"
#include "model.h"

struct cpu_opts {
	int threads;    /* 0: one per processor */
	int max_tokens; /* entries per step; 0: 512 */
	int max_seqs;   /* 0: 1 */
	int max_ctx;    /* 0: min(max_position_embeddings, 4096) */
	int kv_blocks;  /* > 0: this many blocks for bound tables; 0: each
	                 * sequence its own max_ctx positions until a table is
	                 * bound; < 0: max_seqs * max_ctx positions for bound
	                 * tables (kv.h) */
};

/* The per-token operations of the forward pass, which the CUDA kernels
 * mirror by name (kernels/ops.h) and the GPU tests compare against.
 * out = x / sqrt(mean(x^2) + eps) * w: */
void cpu_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
/* out = row token of the embedding, as f32: */
void cpu_embed(float *out, const struct wdesc *e, int token);
/* each head of x (n_heads, head_dim) rotated by a position's cos and sin
 * (head_dim / 2 each), rotate_half pairs: */
void cpu_rope(float *x, int n_heads, int head_dim, const float *cos, const float *sin);
/* gate = silu(gate) * up: */
void cpu_swiglu(float *gate, const float *up, int n);

/* Bytes of one KV cache block for model m on the CPU backend. */
size_t cpu_kv_block_bytes(const struct model *m);

/* Creates a CPU backend over m (which must outlive it), allocating every
 * buffer the forward pass needs. Returns 0 or a negative errno with err set. */
int cpu_backend_create(const struct model *m, const struct cpu_opts *o, struct backend **out,
		       char *err);

#endif
