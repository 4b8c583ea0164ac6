/* A model's forward step as data: the weights a recipe bound (engine/arch/)
 * and its layers as a list of operations over per-token buffers, which every
 * backend walks with its own table of operations. Written once by the recipe
 * when the model opens, read by the backends; computes nothing. Runs in the
 * worker. */
#ifndef EMBER_PROGRAM_H
#define EMBER_PROGRAM_H

#include "common.h"
#include "kv.h"

/* A matrix as stored in the model file, row-major (rows, cols) of dtype.
 * scales is NULL for BF16, F16 and F32; a block-quantized format gives one
 * scale of scale_dtype per (block_rows, block_cols) block, which only a gemm
 * kernel for that format reads. */
struct wdesc {
	enum dtype dtype;
	const void *data;
	int rows, cols;
	const void *scales;    /* (ceil(rows / block_rows), ceil(cols / block_cols)) or NULL */
	enum dtype scale_dtype;
	int block_rows, block_cols;
};

#define PROG_MAX_PARTS 4

/* The matrix of one gemm: parts of the same cols stacked by rows, as one
 * product computes them (q, k and v; gate and up), each with its bias or
 * NULL. The output row of part p's row r is the rows of the parts before p
 * plus r. */
struct weight {
	int n_parts;
	struct wdesc part[PROG_MAX_PARTS];
	const float *bias[PROG_MAX_PARTS]; /* (part[p].rows) f32 or NULL */
	int rows, cols;                    /* rows summed over the parts */
	int alias;                         /* the earlier weight this one is again
	                                    * (a tied LM head), which backends store
	                                    * once; -1 for none */
};

/* The operations every backend implements. Each runs on the n tokens of a
 * step (the head's, on its logits rows), reading and writing whole rows of
 * the buffers it names. Fused ones say what they fuse. */
enum op_kind {
	OP_EMBED,     /* out = row token of weight w's only part */
	OP_RMSNORM,   /* fused residual add: x += add (when add is not OP_NONE), then
	               * out = rmsnorm(x) * vector w; in the head, row r reads the
	               * entry of logits row r and x is left as it was */
	OP_GEMM,      /* out = in . w^T + biases */
	OP_ROPE_KV,   /* fused: rotates the q and k heads of x (q, then k, then v,
	               * as the attention shape says) by each token's position, in
	               * place, and writes k and v into layer's KV cache */
	OP_ATTENTION, /* out = causal attention of x's q heads over layer's cache */
	OP_SWIGLU,    /* out = silu(in[:, :w]) * in[:, w:], w = out's width */
	OP_KINDS
};

#define OP_NONE -1   /* no buffer */
#define OP_LOGITS -2 /* the head's output: the step's logits, (rows, vocab) f32 */

struct op {
	enum op_kind kind;
	int out, in, add;  /* buffers (or OP_NONE); out may be OP_LOGITS in the head */
	int x;             /* RMSNORM: the residual stream; ROPE_KV, ATTENTION: the qkv rows */
	int w;             /* EMBED, GEMM: a weight; RMSNORM: a vector */
	int layer;         /* ROPE_KV, ATTENTION: whose KV cache */
};

/* A per-token buffer: width values per token of a step. gemm_in marks a
 * buffer that some gemm reads (a backend may keep those in the gemm's
 * input dtype, BF16 on a GPU); the others hold f32. */
struct buffer {
	int width;
	bool gemm_in;
};

/* What attention needs: head counts and size (grouped-query: n_heads /
 * n_kv_heads q heads share a KV head). A qkv row is n_heads q heads, then
 * n_kv_heads k heads, then as many v heads. */
struct attn_shape {
	int n_heads, n_kv_heads, head_dim;
};

struct program {
	struct op *ops;        /* (n_ops): ops[0..n_body) per token, then the head */
	int n_ops, n_body;
	struct buffer *bufs;   /* (n_bufs) */
	int n_bufs;
	struct weight *weights; /* (n_weights) */
	int n_weights;
	const float **vecs;    /* (n_vecs) norms' vectors, f32 */
	int *vec_len;          /* (n_vecs) */
	int n_vecs;
	float eps;             /* of every RMSNORM */
	struct attn_shape attn;
	struct kv_layout kv;    /* what the KV cache keeps per layer and position */
};

/* Whether p's KV cache keeps K and V per KV head (two parts of n_kv_heads *
 * head_dim), the layout the backends' attention reads today. */
static inline bool prog_kv_per_head(const struct program *p)
{
	return p->kv.n_parts == 2 && p->kv.width[0] == p->kv.width[1] &&
	       p->kv.width[0] == p->attn.n_kv_heads * p->attn.head_dim;
}

static inline size_t wdesc_bytes(const struct wdesc *d)
{
	return (size_t)d->rows * (size_t)d->cols * dtype_size(d->dtype);
}

#endif
