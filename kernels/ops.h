/* The CUDA kernels of the forward pass, each the mirror of its CPU
 * reference in engine/cpu.c by name (cpu_rmsnorm / cuda_add_rmsnorm), and
 * their launchers, callable from C. Pointers are device pointers; bf16
 * arrays are uint16_t here (__nv_bfloat16 inside the kernels). Every
 * launcher queues work on stream s and returns at once, with the result of
 * its launches (cudaGetLastError after each: a bad configuration shows
 * here, a fault inside a kernel at the stream's next synchronisation).
 * Runs in the worker's engine thread (and in the GPU tests). */
#ifndef EMBER_CUDA_OPS_H
#define EMBER_CUDA_OPS_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "../engine/backend.h"

/* Where a step's entries find their sequence's KV blocks: entry t's block
 * table is tables[tab[t] * max_blocks ...]. */
struct cuda_kv {
	uint16_t *k, *v;     /* this layer's caches: (kv_blocks, KV_BLOCK, kv_dim) bf16 */
	const int32_t *tables; /* (step's sequences, max_blocks) */
	const int32_t *tab;  /* (n) the row of each entry's table */
	int max_blocks;
};

/* x[t] = embed[e[t].token] (bf16 rows to f32), for n entries of hidden h. */
cudaError_t cuda_embed(float *x, const uint16_t *embed, int h, const struct be_entry *e, int n,
		       cudaStream_t s);

/* For each of n output rows r, with src = rows ? rows[r] : r:
 * v = x[src] + add[src] (add may be NULL); x[src] = v when rows is NULL;
 * out[r] = bf16(v / sqrt(mean(v^2) + eps) * w). cpu_rmsnorm after the
 * residual add. h at most CUDA_NORM_MAX (cudaErrorInvalidValue beyond). */
#define CUDA_NORM_MAX 16384
cudaError_t cuda_add_rmsnorm(float *x, const float *add, uint16_t *out, const float *w, int h,
			     float eps, const int32_t *rows, int n, cudaStream_t s);

/* The decode matrix product (dgemm.cu): y(t, n) = x(t, k) . w(n, k)^T +
 * bias (bf16 x and w, f32 bias or NULL, FP32 accumulation) on the tensor
 * cores for t up to CUDA_DGEMM_ROWS, with an epilogue: DGEMM_PLAIN writes
 * y; DGEMM_RESID adds to y, the residual stream (y += x . w^T + bias, as
 * cuda_add_rmsnorm would add it); DGEMM_SWIGLU takes w's first n / 2 rows
 * as the gate and the others as the up projection and writes act(t, n / 2)
 * = bf16(silu(gate) * up), as cuda_swiglu would. A row's result does not
 * depend on t nor on the other rows: the order of every sum is fixed by
 * (n, k). Some shapes at some t need `work`, cuda_dgemm_work(n, k, t, epi)
 * floats of it (0: none). cuda_dgemm_fits says whether a shape has a
 * kernel (k a multiple of 8; n even for SwiGLU); cudaErrorInvalidValue
 * otherwise, or when work is short. */
#define CUDA_DGEMM_ROWS 512
enum { DGEMM_PLAIN, DGEMM_RESID, DGEMM_SWIGLU };
bool cuda_dgemm_fits(int n, int k, int epi);
size_t cuda_dgemm_work(int n, int k, int t, int epi);
cudaError_t cuda_dgemm(float *y, uint16_t *act, const uint16_t *x, const uint16_t *w,
		       const float *bias, int n, int k, int t, int epi, float *work, size_t work_n,
		       cudaStream_t s);
/* cuda_dgemm of the RMSNorm of x (f32, rows rows[r] or r, k wide; weights
 * norm_w) without its output: the product makes those bf16 rows itself,
 * the same bits as cuda_add_rmsnorm without an add would write (so the
 * same y), for t up to CUDA_DGEMM_NORM_ROWS where cuda_dgemm_norm_fits. */
#define CUDA_DGEMM_NORM_ROWS 1
bool cuda_dgemm_norm_fits(int n, int k, int t, int epi);
cudaError_t cuda_dgemm_norm(float *y, uint16_t *act, const float *x, const int32_t *rows,
			    const float *norm_w, float eps, const uint16_t *w, const float *bias,
			    int n, int k, int t, int epi, cudaStream_t s);

/* Rotates the q and k heads of each entry's row of qkv (q_dim, then
 * kv_dim of k, then of v; f32) by its position (rotate_half pairs, tables
 * cos/sin of (positions, head_dim / 2)), in place, and writes k and v as
 * bf16 into the paged cache at the entry's position. cpu_rope + the cache
 * write of cpu_forward. */
cudaError_t cuda_rope_kv(float *qkv, int n_heads, int n_kv_heads, int head_dim, const float *cos,
			 const float *sin, const struct be_entry *e, int n, const struct cuda_kv *kv,
			 cudaStream_t s);

/* out[t, i] = bf16(silu(gu[t, i]) * gu[t, inter + i]) for n rows. cpu_swiglu. */
cudaError_t cuda_swiglu(uint16_t *out, const float *gu, int inter, int n, cudaStream_t s);

/* Attention of each entry over positions 0..pos of its own sequence:
 * softmax(q.K^T / sqrt(d)) V per head, grouped-query (n_heads / n_kv_heads
 * heads share a KV head), with an online softmax and no score matrix.
 * Entries go one of two ways (cuda_attention_plan): one by one (dec, entry
 * indices), long contexts split over up to `splits` blocks per head by
 * the entry's own length and merged (work: cuda_attention_work floats for
 * n entries); or, runs of at least CUDA_TILE_MIN entries of one sequence
 * at consecutive positions (a prompt's chunk), in tiles of up to
 * CUDA_TILE_Q queries that read each key once for the tile (tiles: pairs
 * of first entry and count). dec and tiles are device arrays. out is (n,
 * q_dim) bf16. The attention of cpu_forward's attn_worker. */
#define CUDA_TILE_Q 32
#define CUDA_TILE_K 32
#define CUDA_TILE_MIN 8

/* Fills dec (room for n) and tiles (room for 2 n) for entries e[0..n),
 * host arrays; with tiles_ok false every entry goes one by one. Returns
 * the number of tiles and sets *n_dec. */
int cuda_attention_plan(const struct be_entry *e, int n, bool tiles_ok, int32_t *dec, int *n_dec,
			int32_t *tiles);
size_t cuda_attention_work(int n, int n_heads, int head_dim, int splits);
/* Whether attention has kernels for heads of hd dimensions: a power of two
 * from 8 to 256. */
bool cuda_head_dim_ok(int hd);
/* With cos and sin (cuda_rope_kv's tables), a step of entries of distinct
 * sequences all one by one does cuda_rope_kv's work itself, to the same
 * bits: it rotates the queries as it reads them and writes each entry's
 * key and value to the cache, using them from qkv meanwhile; qkv is left
 * as it was. NULL: cuda_rope_kv has run. cudaErrorInvalidValue for a head
 * shape it has no kernel for (more than 8 query heads per KV head, or
 * !cuda_head_dim_ok(head_dim)), or cos with tiles. */
cudaError_t cuda_attention(uint16_t *out, const float *qkv, int n_heads, int n_kv_heads,
			   int head_dim, const struct be_entry *e, const int32_t *dec, int n_dec,
			   const int32_t *tiles, int n_tiles, int max_pos, const struct cuda_kv *kv,
			   float *work, int splits, const float *cos, const float *sin,
			   cudaStream_t s);

/* One row to sample: a sampler_row (engine/sampler.h) made flat for the
 * device, its penalty list at seen[seen_off ..] and generated[seen_off ..]. */
struct cuda_sample_row {
	float temperature, top_p, min_p;
	float presence_penalty, frequency_penalty, repetition_penalty;
	int top_k, top_logprobs;
	double u;
	int seen_off, n_seen;
};

#define CUDA_SAMPLE_MAX_VOCAB (1 << 20)

/* For each of n_rows rows r of logits ((n_rows, vocab) f32, left as they
 * are): out[r] = what sampler_sample_row chooses with rows[r], one block a
 * row. work: cuda_sample_work floats. vocab at most CUDA_SAMPLE_MAX_VOCAB. */
size_t cuda_sample_work(int rows, int vocab);
cudaError_t cuda_sample(struct sampler_result *out, const float *logits, float *work, int vocab,
			const struct cuda_sample_row *rows, const int32_t *seen,
			const uint32_t *generated, int n_rows, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
