// The CUDA backend (cuda.h): the step that walks the program's operations
// (program.h, their table in optable.cu): the body for every entry, then
// the head for the logits rows, then the sampling kernel (sample.cu) when
// the step is sampled, so that only the chosen ids cross to the host.
// Buffers that a gemm reads are BF16, the others FP32; matrix products of
// steps up to dgemm_rows go through cuda_dgemm (dgemm.cu), larger ones
// through cublasLt (gemm.h). Decode steps replay CUDA graphs captured at
// creation, one per batch bucket. The weights go up through upload.h.
#include "backend.h"

#include "../engine/device.h"

#include "check.h"
#include "upload.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int cuda_check(char *err, cudaError_t e, const char *expr, const char *file, int line)
{
	if (e == cudaSuccess)
		return 0;
	return ember_err(err, e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO, "%s:%d: %s: %s", file,
			 line, expr, cudaGetErrorString(e));
}

int cuda_check(char *err, cublasStatus_t s, const char *expr, const char *file, int line)
{
	if (s == CUBLAS_STATUS_SUCCESS)
		return 0;
	return ember_err(err, s == CUBLAS_STATUS_ALLOC_FAILED ? -ENOMEM : -EIO, "%s:%d: %s: status %d",
			 file, line, expr, (int)s);
}

namespace cuda_be {

double now_s()
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ---- the step ----------------------------------------------------------------

struct step_dev step_arrays(struct cuda_backend *cb, void *base)
{
	struct step_dev d;
	int T = cb->base.max_tokens;
	d.e = (struct be_entry *)base;
	d.tab = (int32_t *)(d.e + T);
	d.rows = d.tab + T;
	d.dec = d.rows + T;
	d.tiles = d.dec + T;
	d.tables = d.tiles + 2 * T;
	return d;
}

// Whether the n entries are of n sequences (seq_row, all -1, is the scratch).
static bool distinct_seqs(struct cuda_backend *cb, const struct be_entry *e, int n)
{
	int t = 0;
	for (; t < n && cb->seq_row[e[t].seq] < 0; t++)
		cb->seq_row[e[t].seq] = t;
	for (int i = 0; i < t; i++)
		cb->seq_row[e[i].seq] = -1;
	return t == n;
}

// The graph for a step of n entries, or NULL: a decode step (each entry
// the next token of its own sequence, with logits row t for entry t) that
// fits one. The graphs were captured with rope_in_attention.
const struct graph *graph_for(struct cuda_backend *cb, const struct be_entry *e, int n)
{
	if (cb->n_graphs == 0 || n > cb->graphs[cb->n_graphs - 1].size)
		return nullptr;
	for (int t = 0; t < n; t++)
		if (e[t].logits_row != t)
			return nullptr;
	if (!distinct_seqs(cb, e, n))
		return nullptr;
	for (int i = 0; i < cb->n_graphs; i++)
		if (cb->graphs[i].size >= n)
			return &cb->graphs[i];
	return nullptr;
}

// Builds the step's entries, each entry's table row, the logits rows'
// entries, how attention takes them and the tables of the sequences in
// the step in pinned memory, padded to pad entries (a decode step replayed
// from a larger graph: the padding writes and reads only pad_block, and
// every entry is attended one by one, as the graph was captured), and
// queues their upload. Returns the largest position, or -EINVAL when a
// sequence lacks a block.
int step_upload(struct cuda_backend *cb, const struct be_entry *e, int n, int pad, bool graph,
		char *err)
{
	struct step_dev h = step_arrays(cb, cb->h_step);
	int n_tab = 0, max_pos = 0;
	int rc = kv_check(&cb->kv, e, n, err);
	if (rc < 0)
		return rc;
	for (int t = 0; t < n; t++) {
		int seq = e[t].seq;
		if (cb->seq_row[seq] < 0)
			cb->seq_row[seq] = n_tab++;
		h.e[t] = e[t];
		h.tab[t] = cb->seq_row[seq];
		if (e[t].logits_row >= 0)
			h.rows[e[t].logits_row] = t;
		if (e[t].pos > max_pos)
			max_pos = e[t].pos;
	}
	for (int t = 0; t < n; t++) { // each sequence's table, once
		int seq = e[t].seq, r = cb->seq_row[seq];
		if (r < 0)
			continue;
		memcpy(h.tables + (size_t)r * cb->max_blocks, cb->kv.table[seq],
		       (size_t)cb->kv.len[seq] * sizeof *h.tables);
		cb->seq_row[seq] = -1;
	}
	if (pad > n) {
		int32_t *dst = h.tables + (size_t)n_tab * cb->max_blocks;
		for (int i = 0; i < cb->max_blocks; i++)
			dst[i] = cb->pad_block;
		for (int t = n; t < pad; t++) {
			h.e[t] = (struct be_entry){0, 0, 0, t};
			h.tab[t] = n_tab;
			h.rows[t] = t;
		}
		n_tab++;
	}
	bool distinct = n_tab == n; // before the padding's table
	int total = pad > n ? pad : n;
	cb->n_tiles = cuda_attention_plan(h.e, total, !graph, h.dec, &cb->n_dec, h.tiles);
	cb->rope_in_attention = cb->n_tiles == 0 && distinct;
	size_t bytes = (size_t)((char *)(h.tables + (size_t)n_tab * cb->max_blocks) - (char *)cb->h_step);
	CUDA_CHECK(cudaMemcpyAsync(cb->d_step, cb->h_step, bytes, cudaMemcpyHostToDevice, cb->st));
	return max_pos;
}

// Queues the body for the n entries in d_step, as step_upload planned them.
int step_layers(struct cuda_backend *cb, int n, int max_pos, char *err)
{
	struct cuda_step s = {n, max_pos, nullptr, step_arrays(cb, cb->d_step)};
	cb->small = n <= cb->dgemm_rows; // the head follows the body's choice
	return run_ops(cb, 0, cb->p->n_body, &s, err);
}

// Queues the head for logits rows r0 .. r0 + k (k at most logit_cap) into
// cb->logits.
int step_head(struct cuda_backend *cb, int r0, int k, char *err)
{
	struct cuda_step s = {k, 0, nullptr, step_arrays(cb, cb->d_step)};
	s.rows = s.d.rows + r0;
	return run_ops(cb, cb->p->n_body, cb->p->n_ops, &s, err);
}

// Uploads the step and queues it up to the logits of its first `rows`
// rows (at most logit_cap): from a graph when one fits, else kernel by
// kernel.
int step_run(struct cuda_backend *cb, const struct be_entry *e, int n, int rows, char *err)
{
	CUDA_CHECK(cudaSetDevice(cb->dev)); // the engine thread is not the creator
	const struct graph *g = graph_for(cb, e, n);
	int max_pos = step_upload(cb, e, n, g ? g->size : n, g != nullptr, err);
	if (max_pos < 0)
		return max_pos;
	cb->small = (g ? g->size : n) <= cb->dgemm_rows;
	if (g) {
		CUDA_CHECK(cudaGraphLaunch(g->exec, cb->st));
		return 0;
	}
	int rc = step_layers(cb, n, max_pos, err);
	if (rc == 0 && rows > 0)
		rc = step_head(cb, 0, rows < cb->logit_cap ? rows : cb->logit_cap, err);
	return rc;
}

// Waits for the step: where a kernel failed, the error shows here.
int step_finish(struct cuda_backend *cb, char *err)
{
	CUDA_CHECK(cudaStreamSynchronize(cb->st));
	CUDA_CHECK(cudaGetLastError());
	return 0;
}

int cuda_forward(struct backend *b, const struct be_entry *e, int n, float *logits, char *err)
{
	struct cuda_backend *cb = (struct cuda_backend *)b;
	int rows = be_check(b, e, n, err);
	if (rows < 0)
		return rows;
	int rc = step_run(cb, e, n, rows, err);
	// The logits, logit_cap rows at a time (the first chunk is made).
	size_t V = (size_t)cb->base.vocab;
	for (int r0 = 0; rc == 0 && r0 < rows; r0 += cb->logit_cap) {
		int k = rows - r0 < cb->logit_cap ? rows - r0 : cb->logit_cap;
		if (r0 > 0 && (rc = step_head(cb, r0, k, err)) < 0)
			break;
		size_t lb = (size_t)k * V * sizeof(float);
		CUDA_CHECK(cudaMemcpyAsync(cb->h_logits, cb->logits, lb, cudaMemcpyDeviceToHost,
					   cb->st));
		if ((rc = step_finish(cb, err)) == 0)
			memcpy(logits + (size_t)r0 * V, cb->h_logits, lb);
	}
	return rc < 0 ? rc : step_finish(cb, err);
}

// Rows [r0, r1) for the sampling kernel and their penalty lists into
// pinned memory, and their upload (the caller has checked that the lists
// fit seen_cap).
int sample_upload(struct cuda_backend *cb, const struct sampler_row *rows, int r0, int r1,
		  char *err)
{
	struct cuda_sample_row *h = (struct cuda_sample_row *)cb->h_samp;
	int32_t *seen = (int32_t *)(h + cb->base.max_seqs);
	uint32_t *gen = (uint32_t *)(seen + cb->seen_cap);
	size_t used = 0;
	for (int r = r0; r < r1; r++) {
		const struct sampler_row *sr = &rows[r];
		h[r - r0] = (struct cuda_sample_row){sr->p.temperature, sr->p.top_p, sr->p.min_p,
						     sr->p.presence_penalty, sr->p.frequency_penalty,
						     sr->p.repetition_penalty, sr->p.top_k,
						     sr->p.top_logprobs, sr->u, (int)used, sr->n_seen};
		if (sr->n_seen > 0) {
			memcpy(seen + used, sr->seen, (size_t)sr->n_seen * sizeof *seen);
			memcpy(gen + used, sr->generated, (size_t)sr->n_seen * sizeof *gen);
		}
		used += (size_t)sr->n_seen;
	}
	CUDA_CHECK(cudaMemcpyAsync(cb->d_samp, h, (size_t)(r1 - r0) * sizeof *h,
				   cudaMemcpyHostToDevice, cb->st));
	if (used == 0)
		return 0;
	size_t off = (size_t)((char *)seen - (char *)h);
	CUDA_CHECK(cudaMemcpyAsync((char *)cb->d_samp + off, seen, used * sizeof *seen,
				   cudaMemcpyHostToDevice, cb->st));
	off = (size_t)((char *)gen - (char *)h);
	CUDA_CHECK(cudaMemcpyAsync((char *)cb->d_samp + off, gen, used * sizeof *gen,
				   cudaMemcpyHostToDevice, cb->st));
	return 0;
}

int cuda_sample_step(struct backend *b, const struct be_entry *e, int n,
		     const struct sampler_row *rows, struct sampler_result *out, char *err)
{
	struct cuda_backend *cb = (struct cuda_backend *)b;
	int n_rows = be_check_sample(b, e, n, err);
	if (n_rows < 0)
		return n_rows;
	for (int r = 0; r < n_rows; r++)
		if (rows[r].n_seen < 0 || (size_t)rows[r].n_seen > cb->seen_cap)
			return ember_err(err, -EINVAL, "row %d: a penalty list of %d tokens (at most %zu)",
					 r, rows[r].n_seen, cb->seen_cap);
	// n_rows <= min(max_seqs, max_tokens) <= logit_cap: one chunk of logits
	int rc = step_run(cb, e, n, n_rows, err);
	// The rows in groups whose penalty lists fit the buffer: one group,
	// unless many rows with penalties have long contexts.
	struct cuda_sample_row *dr = (struct cuda_sample_row *)cb->d_samp;
	int32_t *seen = (int32_t *)(dr + cb->base.max_seqs);
	size_t V = (size_t)cb->base.vocab;
	for (int r0 = 0, r1; rc == 0 && r0 < n_rows; r0 = r1) {
		size_t used = 0;
		for (r1 = r0; r1 < n_rows && used + (size_t)rows[r1].n_seen <= cb->seen_cap; r1++)
			used += (size_t)rows[r1].n_seen;
		if (r0 > 0)
			rc = step_finish(cb, err); // the pinned rows of the group before are read
		if (rc == 0)
			rc = sample_upload(cb, rows, r0, r1, err);
		if (rc == 0) {
			CUDA_CHECK(cuda_sample(cb->d_out + r0, cb->logits + r0 * V,
					       cb->samp_work + cuda_sample_work(r0, (int)V), (int)V, dr, seen,
					       (const uint32_t *)(seen + cb->seen_cap), r1 - r0,
					       cb->st));
		}
	}
	if (rc == 0 && n_rows > 0)
		CUDA_CHECK(cudaMemcpyAsync(cb->h_out, cb->d_out, (size_t)n_rows * sizeof *out,
					   cudaMemcpyDeviceToHost, cb->st));
	if (rc < 0)
		return rc;
	if ((rc = step_finish(cb, err)) == 0)
		memcpy(out, cb->h_out, (size_t)n_rows * sizeof *out);
	return rc;
}

// Captures a graph of the decode step for each bucket of batch sizes up
// to `most`, each after one run outside the capture (which makes the
// matrix products' plans): every entry is padding then, writing only
// pad_block. Returns a negative errno when a step fails outside the
// capture (the backend cannot work); a capture that fails stops there,
// with why in why (the buckets above it run kernel by kernel).
int capture_graphs(struct cuda_backend *cb, int most, char *why, char *err)
{
	static const int sizes[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512};
	int n_sizes = (int)(sizeof sizes / sizeof sizes[0]);
	for (int i = 0; i < n_sizes && cb->n_graphs < MAX_GRAPHS; i++) {
		int size = sizes[i] < most ? sizes[i] : most;
		if (cb->n_graphs > 0 && cb->graphs[cb->n_graphs - 1].size >= size)
			break;
		int max_pos = cb->base.max_ctx - 1; // launch every split an entry may take
		int rc = step_upload(cb, nullptr, 0, size, true, err);
		if (rc >= 0)
			rc = step_layers(cb, size, max_pos, err);
		if (rc >= 0)
			rc = step_head(cb, 0, size, err);
		if (rc >= 0)
			rc = step_finish(cb, err);
		if (rc < 0)
			return rc;
		cudaGraph_t g = nullptr;
		cudaError_t ce = cudaStreamBeginCapture(cb->st, cudaStreamCaptureModeThreadLocal);
		if (ce == cudaSuccess) {
			rc = step_layers(cb, size, max_pos, why);
			if (rc >= 0)
				rc = step_head(cb, 0, size, why);
			ce = cudaStreamEndCapture(cb->st, &g);
		}
		if (rc >= 0 && ce == cudaSuccess)
			ce = cudaGraphInstantiate(&cb->graphs[cb->n_graphs].exec, g, 0);
		if (g && cudaGraphDestroy(g) != cudaSuccess && rc >= 0 && ce == cudaSuccess)
			ce = cudaGetLastError();
		if (rc < 0 || ce != cudaSuccess) {
			if (rc >= 0)
				ember_err(why, -EIO, "capturing the decode step's graph: %s",
					  cudaGetErrorString(ce));
			(void)cudaGetLastError(); // the stream is out of capture: eager steps go on
			return 0;
		}
		cb->graphs[cb->n_graphs++].size = size;
	}
	return 0;
}

int cuda_bind(struct backend *b, int seq, const int32_t *blocks, int n, char *err)
{
	struct cuda_backend *cb = (struct cuda_backend *)b;
	return kv_bind(&cb->kv, seq, blocks, n, err);
}

// Frees everything; what the frees return is not looked at (there is
// nothing left to tell, and a sticky error would fail them all alike).
void cuda_destroy(struct backend *b)
{
	struct cuda_backend *cb = (struct cuda_backend *)b;
	if (!cb)
		return;
	(void)cudaSetDevice(cb->dev);
	if (cb->st)
		(void)cudaStreamSynchronize(cb->st);
	const struct program *p = cb->p;
	for (int i = 0; cb->w && i < p->n_weights; i++)
		if (!cb->w[i].alias) {
			(void)cudaFree(cb->w[i].w);
			(void)cudaFree(cb->w[i].bias);
		}
	for (int i = 0; cb->vec && i < p->n_vecs; i++)
		(void)cudaFree(cb->vec[i]);
	for (int i = 0; cb->buf && i < p->n_bufs; i++)
		(void)cudaFree(cb->buf[i]);
	free(cb->w);
	free(cb->fused);
	free(cb->vec);
	free(cb->buf);
	for (int i = 0; i < cb->n_graphs; i++)
		(void)cudaGraphExecDestroy(cb->graphs[i].exec);
	void *d[] = {cb->cos,    cb->sin,   cb->kc,    cb->vc,        cb->logits, cb->work,
		     cb->d_step, cb->d_samp, cb->d_out, cb->samp_work, cb->dg_work};
	for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
		(void)cudaFree(d[i]);
	(void)cudaFreeHost(cb->h_step);
	(void)cudaFreeHost(cb->h_logits);
	(void)cudaFreeHost(cb->h_samp);
	(void)cudaFreeHost(cb->h_out);
	gemm_destroy(&cb->gemm);
	if (cb->st)
		(void)cudaStreamDestroy(cb->st);
	kv_tables_free(&cb->kv);
	free(cb->seq_row);
	free(cb);
}

const struct backend_ops cuda_ops = {cuda_forward, cuda_sample_step, cuda_bind, cuda_destroy};

} // namespace cuda_be

using namespace cuda_be;

extern "C" int cuda_device_count(void)
{
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		(void)cudaGetLastError(); // no driver or no device: not an error here
		return 0;
	}
	return n;
}

extern "C" size_t cuda_kv_block_bytes(const struct model *m)
{
	return kv_block_bytes(&m->prog.kv, 2);
}

// cudaMalloc of n bytes into p, or rc and err saying how much was missing
// for what, then to fail.
#define DALLOC(p, n)                                                                              \
	do {                                                                                      \
		size_t n_ = (n);                                                                  \
		cudaError_t e_ = cudaMalloc((void **)&(p), n_ > 0 ? n_ : 1);                      \
		if (e_ != cudaSuccess) {                                                          \
			size_t free_ = 0, total_ = 0;                                             \
			if (cudaMemGetInfo(&free_, &total_) != cudaSuccess)                       \
				free_ = total_ = 0;                                               \
			rc = ember_err(err, e_ == cudaErrorMemoryAllocation ? -ENOMEM : -EIO,     \
				       "GPU memory: %zu MB more are needed for %s, %zu MB are free " \
				       "of %zu MB (%s)",                                          \
				       n_ >> 20, #p, free_ >> 20, total_ >> 20,                   \
				       cudaGetErrorString(e_));                                   \
			goto fail;                                                                \
		}                                                                                 \
	} while (0)

namespace cuda_be {

// What the CUDA kernels cannot run of program p, into err: -EINVAL, or 0.
int cuda_supports(const struct program *p, const struct model_config *c, char *err)
{
	const struct attn_shape *a = &p->attn;
	if (a->n_heads / a->n_kv_heads > 8 || !cuda_head_dim_ok(a->head_dim))
		return ember_err(err, -EINVAL, "the CUDA backend needs a head_dim of 8, 16, 32, 64, "
					       "128 or 256 and at most 8 query heads per KV head (this "
					       "model: %d and %d)",
				 a->head_dim, a->n_heads / a->n_kv_heads);
	if (!prog_kv_per_head(p))
		return ember_err(err, -EINVAL, "%s: the CUDA backend keeps K and V per KV head; this "
					       "model's KV layout is another", c->arch_name);
	for (int i = 0; i < p->n_bufs; i++)
		if (p->bufs[i].width > CUDA_NORM_MAX && p->bufs[i].gemm_in)
			for (int k = 0; k < p->n_ops; k++)
				if (p->ops[k].kind == OP_RMSNORM && p->ops[k].out == i)
					return ember_err(err, -EINVAL, "the CUDA backend's RMSNorm takes "
								       "rows of at most %d (this model: %d)",
							 CUDA_NORM_MAX, p->bufs[i].width);
	if (c->vocab > CUDA_SAMPLE_MAX_VOCAB)
		return ember_err(err, -EINVAL, "the CUDA backend samples from at most %d ids (this "
					       "model: %d)", CUDA_SAMPLE_MAX_VOCAB, c->vocab);
	for (int i = 0; i < p->n_ops; i++)
		if (!op_fits(p, &p->ops[i]))
			return ember_err(err, -EINVAL, "%s: the CUDA backend has no kernel for op %d "
						       "(%s) on its buffers' types", c->arch_name, i,
					 op_names[p->ops[i].kind]);
	for (int i = 0; i < p->n_weights; i++)
		for (int k = 0; k < p->weights[i].n_parts; k++)
			if (p->weights[i].part[k].scales)
				return ember_err(err, -EINVAL, "%s: the CUDA backend has no gemm for "
							       "block-scaled weights", c->arch_name);
	return 0;
}

// Queues the upload of every weight of the program and of the norms'
// vectors (a tied weight shares its twin's memory).
int upload_weights(struct cuda_backend *cb, struct uploader *up, char *err)
{
	const struct program *p = cb->p;
	int rc = 0;
	for (int i = 0; i < p->n_weights; i++) {
		const struct weight *W = &p->weights[i];
		struct dweight *D = &cb->w[i];
		if (W->alias >= 0) {
			*D = {cb->w[W->alias].w, cb->w[W->alias].bias, true};
			continue;
		}
		DALLOC(D->w, (size_t)W->rows * W->cols * 2);
		bool bias = false;
		for (int k = 0, r = 0; k < W->n_parts; r += W->part[k].rows, k++) {
			const struct wdesc *d = &W->part[k];
			if ((rc = upl_add(up, D->w + (size_t)r * W->cols, DT_BF16, d->dtype, d->data,
					  (size_t)d->rows * d->cols, err)) < 0)
				return rc;
			bias |= W->bias[k] != nullptr;
		}
		if (!bias)
			continue;
		DALLOC(D->bias, (size_t)W->rows * 4);
		// Zero where a part has no bias, before any upload lands (the
		// caller waits for the stream first).
		CUDA_CHECK(cudaMemsetAsync(D->bias, 0, (size_t)W->rows * 4, cb->st));
		for (int k = 0, r = 0; k < W->n_parts; r += W->part[k].rows, k++)
			if (W->bias[k] && (rc = upl_add(up, D->bias + r, DT_F32, DT_F32, W->bias[k],
							(size_t)W->part[k].rows, err)) < 0)
				return rc;
	}
	for (int i = 0; i < p->n_ops; i++) {
		const struct op *o = &p->ops[i];
		if (o->kind != OP_RMSNORM || cb->vec[o->w])
			continue;
		size_t n = (size_t)p->vec_len[o->w];
		DALLOC(cb->vec[o->w], n * 4);
		if ((rc = upl_add(up, cb->vec[o->w], DT_F32, DT_F32, p->vecs[o->w], n, err)) < 0)
			return rc;
	}
	return 0;
fail:
	return rc;
}

} // namespace cuda_be

extern "C" int cuda_backend_create(const struct model *m, const struct cuda_opts *o,
				   struct backend **out, struct cuda_load_stats *stats, char *err)
{
	*out = nullptr;
	const struct model_config *c = &m->cfg;
	const struct program *p = &m->prog;
	double t0 = now_s();
	int rc = 0;
	struct uploader up = {};
	float *rope_cos = nullptr, *rope_sin = nullptr; // (max_ctx, head_dim / 2) until uploaded
	int ndev = cuda_device_count();
	if (ndev == 0)
		return ember_err(err, -ENODEV, "no CUDA device is visible");
	if (o->device < 0 || o->device >= ndev)
		return ember_err(err, -ENODEV, "CUDA device %d: only %d visible", o->device, ndev);
	if ((rc = cuda_supports(p, c, err)) < 0)
		return rc;
	struct cuda_backend *cb = (struct cuda_backend *)calloc(1, sizeof *cb);
	if (!cb)
		return ember_err(err, -ENOMEM, "out of memory");
	be_init(&cb->base, &cuda_ops, "cuda", c->vocab, o->max_tokens, o->max_seqs, o->max_ctx,
		c->max_pos);
	cb->base.kv_block_bytes = cuda_kv_block_bytes(m);
	cb->p = p;
	cb->dev = o->device;
	cb->kv_dim = p->kv.width[0];
	cb->max_blocks = kv_blocks_for(cb->base.max_ctx);
	cb->splits = 16;
	cb->dgemm_rows = o->dgemm_rows < 0 ? 0 : o->dgemm_rows == 0 || o->dgemm_rows > CUDA_DGEMM_ROWS
							? CUDA_DGEMM_ROWS : o->dgemm_rows;
	cb->logit_cap = cb->base.max_seqs > 16 ? cb->base.max_seqs : 16;
	if (cb->logit_cap > cb->base.max_tokens)
		cb->logit_cap = cb->base.max_tokens;
	cb->seq_row = (int *)malloc((size_t)cb->base.max_seqs * sizeof *cb->seq_row);
	cb->w = (struct dweight *)calloc((size_t)p->n_weights, sizeof *cb->w);
	cb->fused = (struct fusion *)calloc((size_t)p->n_ops, sizeof *cb->fused);
	cb->vec = (float **)calloc((size_t)p->n_vecs, sizeof *cb->vec);
	cb->buf = (void **)calloc((size_t)p->n_bufs, sizeof *cb->buf);
	if (!cb->seq_row || !cb->w || !cb->fused || !cb->vec || !cb->buf) {
		rc = ember_err(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (int i = 0; i < cb->base.max_seqs; i++)
		cb->seq_row[i] = -1;
	fuse_plan(p, cb->fused);
	CUDA_CHECK_GOTO(cudaSetDevice(o->device));
	CUDA_CHECK_GOTO(cudaStreamCreateWithFlags(&cb->st, cudaStreamNonBlocking));
	if ((rc = gemm_create(&cb->gemm, cb->st, err)) < 0)
		goto fail;
	if (stats)
		stats->init_s = now_s() - t0;
	t0 = now_s();
	{
		up.dev = o->device;
		size_t V = (size_t)c->vocab;
		if ((rc = upload_weights(cb, &up, err)) < 0)
			goto fail;
		size_t half = (size_t)p->attn.head_dim / 2, ctxn = (size_t)cb->base.max_ctx;
		rope_cos = (float *)malloc(ctxn * half * 4);
		rope_sin = (float *)malloc(ctxn * half * 4);
		if (!rope_cos || !rope_sin) {
			rc = ember_err(err, -ENOMEM, "out of memory");
			goto fail;
		}
		cfg_rope_tables(c, cb->base.max_ctx, rope_cos, rope_sin);
		DALLOC(cb->cos, ctxn * half * 4);
		DALLOC(cb->sin, ctxn * half * 4);
		if ((rc = upl_add(&up, cb->cos, DT_F32, DT_F32, rope_cos, ctxn * half, err)) < 0 ||
		    (rc = upl_add(&up, cb->sin, DT_F32, DT_F32, rope_sin, ctxn * half, err)) < 0)
			goto fail;
		// The biases' zeroed rows are set before any upload lands in them.
		CUDA_CHECK_GOTO(cudaStreamSynchronize(cb->st));
		int threads = upl_run(&up, err);
		if (threads < 0) {
			rc = threads;
			goto fail;
		}
		if (stats) {
			stats->upload_s = now_s() - t0;
			stats->upload_bytes = up.bytes;
			stats->upload_threads = threads;
		}
		// the program's buffers and the step's
		size_t T = (size_t)cb->base.max_tokens;
		for (int i = 0; i < p->n_bufs; i++)
			DALLOC(cb->buf[i], T * p->bufs[i].width * (p->bufs[i].gemm_in ? 2 : 4));
		DALLOC(cb->logits, (size_t)cb->logit_cap * V * 4);
		DALLOC(cb->work, cuda_attention_work((int)T, p->attn.n_heads, p->attn.head_dim,
						     cb->splits) * 4);
		int dg_t = (int)T < cb->dgemm_rows ? (int)T : cb->dgemm_rows;
		for (int i = 0; i < p->n_weights; i++)
			for (int e = DGEMM_PLAIN; e <= DGEMM_SWIGLU; e++) {
				size_t need = cuda_dgemm_work(p->weights[i].rows, p->weights[i].cols,
							      dg_t, e);
				cb->dg_work_n = need > cb->dg_work_n ? need : cb->dg_work_n;
			}
		if (cb->dg_work_n)
			DALLOC(cb->dg_work, cb->dg_work_n * 4);
		// the tables of the step's sequences, and one for padding
		cb->step_bytes = T * (sizeof(struct be_entry) + 5 * 4) +
				 ((size_t)cb->base.max_seqs + 1) * cb->max_blocks * 4;
		DALLOC(cb->d_step, cb->step_bytes);
		size_t S = (size_t)cb->base.max_seqs;
		// Penalty lists: a row's is at most a context; all of a step's
		// usually fit (else the step samples in groups, cuda_sample_step).
		cb->seen_cap = S * (size_t)cb->base.max_ctx;
		if (cb->seen_cap > ((size_t)1 << 21))
			cb->seen_cap = (size_t)cb->base.max_ctx > ((size_t)1 << 21) ? (size_t)cb->base.max_ctx
										 : (size_t)1 << 21;
		size_t samp_bytes = S * sizeof(struct cuda_sample_row) + cb->seen_cap * 8;
		DALLOC(cb->d_samp, samp_bytes);
		DALLOC(cb->d_out, S * sizeof(struct sampler_result));
		DALLOC(cb->samp_work, cuda_sample_work((int)S, c->vocab) * 4);
		CUDA_CHECK_GOTO(cudaHostAlloc(&cb->h_step, cb->step_bytes, cudaHostAllocDefault));
		CUDA_CHECK_GOTO(cudaHostAlloc((void **)&cb->h_logits, (size_t)cb->logit_cap * V * 4,
					      cudaHostAllocDefault));
		CUDA_CHECK_GOTO(cudaHostAlloc(&cb->h_samp, samp_bytes, cudaHostAllocDefault));
		CUDA_CHECK_GOTO(cudaHostAlloc((void **)&cb->h_out, S * sizeof(struct sampler_result),
					      cudaHostAllocDefault));
		// the KV cache: each sequence's own blocks (kv_blocks 0), the
		// blocks asked for, or a fraction of what is free
		size_t block = cuda_kv_block_bytes(m), free_b = 0, total_b = 0;
		CUDA_CHECK_GOTO(cudaMemGetInfo(&free_b, &total_b));
		long long blocks = o->kv_blocks;
		if (blocks < 0) {
			double f = o->gpu_memory_fraction > 0 ? o->gpu_memory_fraction : 0.9;
			blocks = (long long)((double)free_b * f / (double)block);
			long long most = (long long)cb->base.max_seqs * cb->max_blocks;
			if (blocks > most)
				blocks = most; // no sequence can use more
			if (blocks < cb->max_blocks) {
				rc = ember_err(err, -ENOMEM,
					       "GPU memory: %zu MB free after the model; the KV cache of one "
					       "sequence of %d positions needs %zu MB",
					       free_b >> 20, cb->base.max_ctx,
					       ((size_t)cb->max_blocks * block) >> 20);
				goto fail;
			}
		}
		if ((rc = kv_tables_init(&cb->kv, cb->base.max_seqs, cb->base.max_ctx, (int)blocks,
					 err)) < 0)
			goto fail;
		// and one block more, of no sequence's, for padded entries
		blocks = cb->kv.n_blocks;
		cb->base.kv_blocks = (int)blocks;
		cb->pad_block = (int)blocks;
		size_t half_cache = (size_t)(blocks + 1) * block / 2;
		DALLOC(cb->kc, half_cache);
		DALLOC(cb->vc, half_cache);
		if (stats) {
			CUDA_CHECK_GOTO(cudaMemGetInfo(&free_b, &total_b));
			stats->free_bytes = free_b;
			stats->total_bytes = total_b;
		}
	}
	t0 = now_s();
	if (!o->eager) {
		int most = cb->base.max_seqs < cb->logit_cap ? cb->base.max_seqs : cb->logit_cap;
		char why[EMBER_ERR_LEN] = "";
		if ((rc = capture_graphs(cb, most, why, err)) < 0)
			goto fail;
		if (stats)
			snprintf(stats->graph_error, sizeof stats->graph_error, "%s", why);
	}
	if (stats) {
		stats->graph_s = now_s() - t0;
		stats->graphs = cb->n_graphs;
	}
	free(rope_cos);
	free(rope_sin);
	upl_free(&up);
	*out = &cb->base;
	return 0;
fail:
	if (cb->st)
		(void)cudaStreamSynchronize(cb->st); // nothing queued still reads what is freed
	free(rope_cos);
	free(rope_sin);
	upl_free(&up);
	cuda_destroy(&cb->base);
	return rc;
}

namespace cuda_be {

int cuda_device_create(const struct model *m, const struct device_opts *o, struct backend **out,
		       char *err)
{
	struct cuda_opts co = {};
	co.device = o->gpu;
	co.max_tokens = o->max_tokens;
	co.max_seqs = o->max_seqs;
	co.max_ctx = o->max_ctx;
	co.kv_blocks = o->kv_blocks;
	co.gpu_memory_fraction = o->gpu_memory_fraction;
	struct cuda_load_stats st = {};
	int rc = cuda_backend_create(m, &co, out, &st, err);
	if (struct device_stats *d = o->stats) {
		d->init_s = st.init_s;
		d->upload_s = st.upload_s;
		d->upload_bytes = st.upload_bytes;
		d->graph_s = st.graph_s;
		d->graphs = st.graphs;
		snprintf(d->graph_error, sizeof d->graph_error, "%s", st.graph_error);
	}
	return rc;
}

} // namespace cuda_be

// The engine's registry names it (engine/device.c); device.h declares it
// extern "C".
const struct device cuda_device = {"cuda", cuda_device_count, cuda_kv_block_bytes,
				   cuda_device_create};
