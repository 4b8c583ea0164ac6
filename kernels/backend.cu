// The CUDA backend (cuda.h): cpu_forward's step on the GPU. Per layer:
// RMSNorm (with the residual add of the layer before), one matrix product
// for q, k and v (their rows side by side, biases in cublasLt's epilogue),
// rotary embedding with the write into the paged cache, attention, the
// output projection, RMSNorm with its residual add, one product for gate
// and up, SwiGLU, the down projection; then the final norm and the LM head
// for the rows that want logits, and the sampling kernel (sample.cu) when
// the step is sampled: then only the chosen ids cross to the host. Decode
// steps replay CUDA graphs captured at creation, one per batch bucket.
#include "cuda.h"
#include "ops.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef uint16_t bf16_t;

namespace {

double now_s()
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct layer {
	bf16_t *wqkv, *wo, *wgu, *wdown;     // (rows, cols) as the model's
	float *bqkv, *bo, *bgu, *bdown;      // or NULL
	float *attn_norm, *mlp_norm;
};

// A cached cublasLt plan for Y(T, N) = X(T, K) W(N, K)^T (+ bias).
struct plan {
	int n, k, t, bias;
	bool used;
	cublasLtMatrixLayout_t a, b, c;
	cublasLtMatmulAlgo_t algo;
};

#define PLANS 4096
#define STAGE_BYTES ((size_t)16 << 20)
#define STAGES 2         // per upload thread
#define UPLOAD_THREADS 4 // at most; 128 MB of pinned staging in all
#define MAX_GRAPHS 16

// A decode step captured for batches of up to `size` entries.
struct graph {
	int size;
	cudaGraphExec_t exec;
};

struct cuda_backend {
	struct backend base;
	const struct model *m;
	const struct model_config *c;
	int q_dim, kv_dim, qkv_dim, max_blocks;
	int dev;        // the CUDA device, made current in the thread that steps
	cudaStream_t st;
	cublasLtHandle_t lt;
	cublasLtMatmulDesc_t desc, desc_bias;
	void *ws;
	size_t ws_bytes;
	struct plan *plans;
	// weights
	struct layer *L;
	bf16_t *embed, *lm_head;
	float *final_norm, *cos, *sin;
	// the cache: (n_layers, kv_blocks, KV_BLOCK, kv_dim) each
	bf16_t *kc, *vc;
	// activations
	float *x, *proj, *qkv, *gu, *logits, *work;
	bf16_t *xn, *att, *act;
	int splits;
	// a step's entries and block tables: built in pinned memory, one upload
	void *h_step, *d_step;
	size_t step_bytes;
	float *h_logits;
	int logit_cap;
	const int32_t **table;
	int *table_len;
	int *seq_row; // (max_seqs) a sequence's row in this step's tables, or -1
	bool fixed;
	int pad_block; // a block of no sequence's: padded entries write there
	int n_dec, n_tiles; // this step's attention plan (step_upload)
	// sampling: (max_seqs) rows, then their penalty lists (seen_cap each
	// of tokens and counts), one upload; results (max_seqs) back
	void *h_samp, *d_samp;
	size_t seen_cap;
	struct sampler_result *h_out, *d_out;
	float *samp_work;  // (max_seqs, 2 * vocab)
	struct graph graphs[MAX_GRAPHS];
	int n_graphs;
};

int cuda_fail(char *err, cudaError_t e, const char *what)
{
	return ember_err(err, e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO, "%s: %s", what,
			 cudaGetErrorString(e));
}

// ---- weights up --------------------------------------------------------------

// The weights go up as a list of jobs, each a host array to a device one,
// run once everything is allocated: several host threads, each with its
// own pinned buffers and stream, take STAGE_BYTES chunks of the jobs in
// turn, so that copying into pinned memory (and converting to BF16) runs
// beside the transfers and on several cores.
struct up_job {
	void *dst;
	enum dtype to, from; // from itself or BF16 (converted on the way)
	const void *src;
	size_t n;            // elements
	size_t first_chunk;  // chunks of the jobs before this one
};

struct uploader {
	struct up_job *jobs;
	size_t n_jobs, cap_jobs, chunks, bytes;
	int dev;
	// while running
	size_t next;         // the next chunk to take (under mu)
	pthread_mutex_t mu;
	cudaError_t error;   // the first failure
	const char *what;
	cudaError_t setup_error; // a thread that could not get its buffers
};

void bf16_from(enum dtype dt, const void *src, size_t first, size_t n, uint16_t *dst)
{
	for (size_t i = 0; i < n; i++) {
		float f = dtype_load_f32(dt, (const uint8_t *)src, first + i);
		uint32_t u;
		memcpy(&u, &f, 4);
		u += 0x7fff + ((u >> 16) & 1); // round to nearest even
		dst[i] = (uint16_t)(u >> 16);
	}
}

size_t job_per_chunk(const struct up_job *j)
{
	return STAGE_BYTES / dtype_size(j->to);
}

// dst[0..n) = elements [0, n) of src (of dtype from) as dtype to, later.
int up(struct uploader *u, void *dst, enum dtype to, enum dtype from, const void *src, size_t n,
       char *err)
{
	if (u->n_jobs == u->cap_jobs) {
		size_t cap = u->cap_jobs ? 2 * u->cap_jobs : 64;
		struct up_job *j = (struct up_job *)realloc(u->jobs, cap * sizeof *j);
		if (!j)
			return ember_err(err, -ENOMEM, "out of memory");
		u->jobs = j;
		u->cap_jobs = cap;
	}
	struct up_job *j = &u->jobs[u->n_jobs++];
	*j = (struct up_job){dst, to, from, src, n, u->chunks};
	u->chunks += (n + job_per_chunk(j) - 1) / job_per_chunk(j);
	u->bytes += n * dtype_size(to);
	return 0;
}

int up_bf16(struct uploader *u, bf16_t *dst, enum dtype dt, const void *src, size_t n, char *err)
{
	return up(u, dst, DT_BF16, dt, src, n, err);
}

int up_f32(struct uploader *u, float *dst, const float *src, size_t n, char *err)
{
	return up(u, dst, DT_F32, DT_F32, src, n, err);
}

void up_fail(struct uploader *u, cudaError_t e, const char *what)
{
	pthread_mutex_lock(&u->mu);
	if (u->error == cudaSuccess) {
		u->error = e;
		u->what = what;
	}
	pthread_mutex_unlock(&u->mu);
}

void *up_thread(void *arg)
{
	struct uploader *u = (struct uploader *)arg;
	void *stage[STAGES] = {};
	cudaEvent_t done[STAGES] = {};
	cudaStream_t st = nullptr;
	cudaError_t e = cudaSetDevice(u->dev);
	if (e == cudaSuccess)
		e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
	for (int i = 0; i < STAGES && e == cudaSuccess; i++) {
		e = cudaHostAlloc(&stage[i], STAGE_BYTES, cudaHostAllocDefault);
		if (e == cudaSuccess)
			e = cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming);
	}
	bool ready = e == cudaSuccess;
	if (!ready) { // the other threads go on without this one
		pthread_mutex_lock(&u->mu);
		u->setup_error = e;
		pthread_mutex_unlock(&u->mu);
	}
	size_t j = 0;
	for (int turn = 0; e == cudaSuccess; turn++) {
		pthread_mutex_lock(&u->mu);
		size_t c = u->next++;
		bool stop = c >= u->chunks || u->error != cudaSuccess;
		pthread_mutex_unlock(&u->mu);
		if (stop)
			break;
		while (j + 1 < u->n_jobs && u->jobs[j + 1].first_chunk <= c) // chunks rise
			j++;
		const struct up_job *job = &u->jobs[j];
		size_t per = job_per_chunk(job), esz = dtype_size(job->to);
		size_t at = (c - job->first_chunk) * per, k = job->n - at < per ? job->n - at : per;
		int i = turn % STAGES;
		if ((e = cudaEventSynchronize(done[i])) != cudaSuccess)
			break;
		if (job->to == job->from)
			memcpy(stage[i], (const char *)job->src + at * esz, k * esz);
		else
			bf16_from(job->from, job->src, at, k, (uint16_t *)stage[i]);
		e = cudaMemcpyAsync((char *)job->dst + at * esz, stage[i], k * esz,
				    cudaMemcpyHostToDevice, st);
		if (e == cudaSuccess)
			e = cudaEventRecord(done[i], st);
	}
	if (e != cudaSuccess && ready)
		up_fail(u, e, "uploading the weights");
	if (st)
		cudaStreamSynchronize(st); // the staging buffers are read
	for (int i = 0; i < STAGES; i++) {
		if (stage[i])
			cudaFreeHost(stage[i]);
		if (done[i])
			cudaEventDestroy(done[i]);
	}
	if (st)
		cudaStreamDestroy(st);
	return nullptr;
}

// Runs every job; returns the number of threads used, or a negative errno.
int up_run(struct uploader *u, char *err)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int n = cpus < 1 ? 1 : cpus < UPLOAD_THREADS ? (int)cpus : UPLOAD_THREADS;
	if ((size_t)n > u->chunks)
		n = u->chunks > 0 ? (int)u->chunks : 1;
	pthread_t th[UPLOAD_THREADS];
	pthread_mutex_init(&u->mu, nullptr);
	u->next = 0;
	u->error = u->setup_error = cudaSuccess;
	int started = 0;
	for (; started < n; started++)
		if (pthread_create(&th[started], nullptr, up_thread, u) != 0)
			break;
	if (started == 0)
		up_thread(u); // no thread could start: this one does it all
	for (int i = 0; i < started; i++)
		pthread_join(th[i], nullptr);
	pthread_mutex_destroy(&u->mu);
	if (u->error != cudaSuccess)
		return cuda_fail(err, u->error, u->what);
	if (u->next < u->chunks) // no thread got its buffers
		return cuda_fail(err, u->setup_error, "pinned staging memory");
	return started > 0 ? started : 1;
}

size_t tview_elems(const struct tview *t)
{
	return (size_t)t->rows * (size_t)t->cols;
}

// ---- matrix products ---------------------------------------------------------

// Y(t, n) f32 = X(t, k) bf16 . W(n, k)^T bf16 (+ bias(n) f32). cublasLt is
// column-major: Y^T (n, t) = W^T^T ... that is A = W as (k, n) transposed,
// B = X as (k, t), C = Y^T as (n, t).
int gemm(struct cuda_backend *cb, float *y, const bf16_t *x, const bf16_t *w, const float *bias,
	 int n, int k, int t, char *err)
{
	unsigned h = ((unsigned)n * 2654435761u) ^ ((unsigned)k * 40503u) ^ ((unsigned)t * 97u) ^
		     (bias ? 0x5bd1e995u : 0);
	struct plan *p = nullptr;
	for (unsigned probe = 0; probe < PLANS; probe++) {
		struct plan *q = &cb->plans[(h + probe) % PLANS];
		if (!q->used || (q->n == n && q->k == k && q->t == t && q->bias == (bias != nullptr))) {
			p = q;
			break;
		}
	}
	if (!p)
		return ember_err(err, -ENOMEM, "cublasLt: too many matrix shapes");
	cublasLtMatmulDesc_t desc = bias ? cb->desc_bias : cb->desc;
	if (!p->used) {
		cublasStatus_t s = cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, k, n, k);
		if (s == CUBLAS_STATUS_SUCCESS)
			s = cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, k, t, k);
		if (s == CUBLAS_STATUS_SUCCESS)
			s = cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, n, t, n);
		cublasLtMatmulPreference_t pref;
		if (s == CUBLAS_STATUS_SUCCESS)
			s = cublasLtMatmulPreferenceCreate(&pref);
		if (s != CUBLAS_STATUS_SUCCESS)
			return ember_err(err, -EIO, "cublasLt layouts: status %d", (int)s);
		cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
						     &cb->ws_bytes, sizeof cb->ws_bytes);
		cublasLtMatmulHeuristicResult_t r;
		int found = 0;
		s = cublasLtMatmulAlgoGetHeuristic(cb->lt, desc, p->a, p->b, p->c, p->c, pref, 1, &r,
						   &found);
		cublasLtMatmulPreferenceDestroy(pref);
		if (s != CUBLAS_STATUS_SUCCESS || found == 0)
			return ember_err(err, -EIO, "cublasLt has no algorithm for (%d x %d) . (%d x %d)^T",
					 t, k, n, k);
		p->algo = r.algo;
		p->n = n;
		p->k = k;
		p->t = t;
		p->bias = bias != nullptr;
		p->used = true;
	}
	if (bias)
		cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
	const float one = 1.0f, zero = 0.0f;
	cublasStatus_t s = cublasLtMatmul(cb->lt, desc, &one, w, p->a, x, p->b, &zero, y, p->c, y, p->c,
					  &p->algo, cb->ws, cb->ws_bytes, cb->st);
	if (s != CUBLAS_STATUS_SUCCESS)
		return ember_err(err, -EIO, "cublasLtMatmul (%d x %d) . (%d x %d)^T: status %d", t, k, n, k,
				 (int)s);
	return 0;
}

// ---- the step ----------------------------------------------------------------

int blocks_per_seq(const struct cuda_backend *cb)
{
	return (cb->base.max_ctx + KV_BLOCK - 1) / KV_BLOCK;
}

// The step's device arrays, in d_step as step_upload lays them out.
struct step_dev {
	struct be_entry *e;   // (max_tokens)
	int32_t *tab, *rows;  // (max_tokens) each entry's table row; each logits row's entry
	int32_t *dec, *tiles; // (max_tokens), (max_tokens, 2): cuda_attention_plan's
	int32_t *tables;      // (max_seqs + 1, max_blocks), the last for padding
};

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

// The graph for a step of n entries, or NULL: a decode step (each entry
// a sequence's next token, with logits row t for entry t) that fits one.
const struct graph *graph_for(const struct cuda_backend *cb, const struct be_entry *e, int n)
{
	if (cb->n_graphs == 0 || n > cb->graphs[cb->n_graphs - 1].size)
		return nullptr;
	for (int t = 0; t < n; t++)
		if (e[t].logits_row != t)
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
	for (int t = 0; t < n; t++) {
		int seq = e[t].seq;
		if (cb->table[seq] ? e[t].pos >= cb->table_len[seq] * KV_BLOCK : !cb->fixed)
			return ember_err(err, -EINVAL, "entry %d: sequence %d has no block for position %d",
					 t, seq, e[t].pos);
	}
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
		int32_t *dst = h.tables + (size_t)r * cb->max_blocks;
		if (cb->table[seq])
			memcpy(dst, cb->table[seq], (size_t)cb->table_len[seq] * sizeof *dst);
		else
			for (int i = 0; i < cb->max_blocks; i++)
				dst[i] = seq * blocks_per_seq(cb) + i;
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
	int total = pad > n ? pad : n;
	cb->n_tiles = cuda_attention_plan(h.e, total, !graph, h.dec, &cb->n_dec, h.tiles);
	size_t bytes = (size_t)((char *)(h.tables + (size_t)n_tab * cb->max_blocks) - (char *)cb->h_step);
	cudaError_t ce = cudaMemcpyAsync(cb->d_step, cb->h_step, bytes, cudaMemcpyHostToDevice, cb->st);
	if (ce != cudaSuccess)
		return cuda_fail(err, ce, "uploading the step");
	return max_pos;
}

// Queues the embedding and every layer for the n entries in d_step, as
// step_upload planned them.
int step_layers(struct cuda_backend *cb, int n, int max_pos, char *err)
{
	const struct model_config *c = cb->c;
	struct step_dev d = step_arrays(cb, cb->d_step);
	int H = c->hidden, I = c->intermediate;
	cuda_embed(cb->x, cb->embed, H, d.e, n, cb->st);
	size_t layer_cache = (size_t)(cb->pad_block + 1) * KV_BLOCK * cb->kv_dim;
	for (int l = 0; l < c->n_layers; l++) {
		const struct layer *L = &cb->L[l];
		struct cuda_kv kv = {cb->kc + l * layer_cache, cb->vc + l * layer_cache, d.tables, d.tab,
				     cb->max_blocks};
		cuda_add_rmsnorm(cb->x, l ? cb->proj : nullptr, cb->xn, L->attn_norm, H, c->rms_eps,
				 nullptr, n, cb->st);
		if (gemm(cb, cb->qkv, cb->xn, L->wqkv, L->bqkv, cb->qkv_dim, H, n, err) < 0)
			return -EIO;
		cuda_rope_kv(cb->qkv, c->n_heads, c->n_kv_heads, c->head_dim, cb->cos, cb->sin, d.e, n,
			     &kv, cb->st);
		if (cuda_attention(cb->att, cb->qkv, c->n_heads, c->n_kv_heads, c->head_dim, d.e, d.dec,
				   cb->n_dec, d.tiles, cb->n_tiles, max_pos, &kv, cb->work, cb->splits,
				   cb->st) < 0)
			return ember_err(err, -EINVAL, "attention: unsupported head shape");
		if (gemm(cb, cb->proj, cb->att, L->wo, L->bo, H, cb->q_dim, n, err) < 0)
			return -EIO;
		cuda_add_rmsnorm(cb->x, cb->proj, cb->xn, L->mlp_norm, H, c->rms_eps, nullptr, n, cb->st);
		if (gemm(cb, cb->gu, cb->xn, L->wgu, L->bgu, 2 * I, H, n, err) < 0)
			return -EIO;
		cuda_swiglu(cb->act, cb->gu, I, n, cb->st);
		if (gemm(cb, cb->proj, cb->act, L->wdown, L->bdown, H, I, n, err) < 0)
			return -EIO;
	}
	return 0;
}

// Queues the final norm (after the last residual add) and the LM head for
// logits rows r0 .. r0 + k (k at most logit_cap) into cb->logits.
int step_head(struct cuda_backend *cb, int r0, int k, char *err)
{
	const struct model_config *c = cb->c;
	struct step_dev d = step_arrays(cb, cb->d_step);
	cuda_add_rmsnorm(cb->x, cb->proj, cb->xn, cb->final_norm, c->hidden, c->rms_eps, d.rows + r0, k,
			 cb->st);
	return gemm(cb, cb->logits, cb->xn, cb->lm_head, nullptr, c->vocab, c->hidden, k, err) < 0
		       ? -EIO
		       : 0;
}

// Uploads the step and queues it up to the logits of its first `rows`
// rows (at most logit_cap): from a graph when one fits, else kernel by
// kernel.
int step_run(struct cuda_backend *cb, const struct be_entry *e, int n, int rows, char *err)
{
	cudaError_t ce = cudaSetDevice(cb->dev); // the engine thread is not the creator
	if (ce != cudaSuccess)
		return cuda_fail(err, ce, "cudaSetDevice");
	const struct graph *g = graph_for(cb, e, n);
	int max_pos = step_upload(cb, e, n, g ? g->size : n, g != nullptr, err);
	if (max_pos < 0)
		return max_pos;
	if (g) {
		ce = cudaGraphLaunch(g->exec, cb->st);
		return ce == cudaSuccess ? 0 : cuda_fail(err, ce, "cudaGraphLaunch");
	}
	int rc = step_layers(cb, n, max_pos, err);
	if (rc == 0 && rows > 0)
		rc = step_head(cb, 0, rows < cb->logit_cap ? rows : cb->logit_cap, err);
	return rc;
}

int step_finish(struct cuda_backend *cb, char *err)
{
	cudaError_t ce = cudaStreamSynchronize(cb->st);
	if (ce == cudaSuccess)
		ce = cudaGetLastError();
	return ce == cudaSuccess ? 0 : cuda_fail(err, ce, "the step");
}

int cuda_forward(struct backend *b, const struct be_entry *e, int n, float *logits, char *err)
{
	struct cuda_backend *cb = (struct cuda_backend *)b;
	int rows = be_check(b, e, n, err);
	if (rows < 0)
		return rows;
	int rc = step_run(cb, e, n, rows, err);
	// The logits, logit_cap rows at a time (the first chunk is made).
	size_t V = (size_t)cb->c->vocab;
	for (int r0 = 0; rc == 0 && r0 < rows; r0 += cb->logit_cap) {
		int k = rows - r0 < cb->logit_cap ? rows - r0 : cb->logit_cap;
		if (r0 > 0 && (rc = step_head(cb, r0, k, err)) < 0)
			break;
		size_t lb = (size_t)k * V * sizeof(float);
		cudaError_t ce = cudaMemcpyAsync(cb->h_logits, cb->logits, lb, cudaMemcpyDeviceToHost,
						 cb->st);
		if (ce != cudaSuccess)
			return cuda_fail(err, ce, "the step");
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
	cudaError_t ce = cudaMemcpyAsync(cb->d_samp, h, (size_t)(r1 - r0) * sizeof *h,
					 cudaMemcpyHostToDevice, cb->st);
	size_t off = (size_t)((char *)seen - (char *)h);
	if (ce == cudaSuccess && used > 0)
		ce = cudaMemcpyAsync((char *)cb->d_samp + off, seen, used * sizeof *seen,
				     cudaMemcpyHostToDevice, cb->st);
	off = (size_t)((char *)gen - (char *)h);
	if (ce == cudaSuccess && used > 0)
		ce = cudaMemcpyAsync((char *)cb->d_samp + off, gen, used * sizeof *gen,
				     cudaMemcpyHostToDevice, cb->st);
	return ce == cudaSuccess ? 0 : cuda_fail(err, ce, "uploading the sampling rows");
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
	size_t V = (size_t)cb->c->vocab;
	for (int r0 = 0, r1; rc == 0 && r0 < n_rows; r0 = r1) {
		size_t used = 0;
		for (r1 = r0; r1 < n_rows && used + (size_t)rows[r1].n_seen <= cb->seen_cap; r1++)
			used += (size_t)rows[r1].n_seen;
		if (r0 > 0)
			rc = step_finish(cb, err); // the pinned rows of the group before are read
		if (rc == 0)
			rc = sample_upload(cb, rows, r0, r1, err);
		if (rc == 0)
			cuda_sample(cb->d_out + r0, cb->logits + r0 * V, cb->samp_work + r0 * 2 * V,
				    (int)V, dr, seen, (const uint32_t *)(seen + cb->seen_cap), r1 - r0,
				    cb->st);
	}
	if (rc == 0 && n_rows > 0) {
		cudaError_t ce = cudaMemcpyAsync(cb->h_out, cb->d_out, (size_t)n_rows * sizeof *out,
						 cudaMemcpyDeviceToHost, cb->st);
		if (ce != cudaSuccess)
			return cuda_fail(err, ce, "the sampled tokens");
	}
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
		if (g)
			cudaGraphDestroy(g);
		if (rc < 0 || ce != cudaSuccess) {
			if (rc >= 0)
				cuda_fail(why, ce, "capturing the decode step's graph");
			cudaGetLastError(); // the stream is out of capture: eager steps go on
			return 0;
		}
		cb->graphs[cb->n_graphs++].size = size;
	}
	return 0;
}

int cuda_bind(struct backend *b, int seq, const int32_t *blocks, int n, char *err)
{
	struct cuda_backend *cb = (struct cuda_backend *)b;
	int rc = be_check_bind(b, seq, blocks, n, err);
	if (rc < 0)
		return rc;
	cb->table[seq] = blocks;
	cb->table_len[seq] = blocks ? n : 0;
	return 0;
}

void cuda_destroy(struct backend *b)
{
	struct cuda_backend *cb = (struct cuda_backend *)b;
	if (!cb)
		return;
	cudaSetDevice(cb->dev);
	if (cb->st)
		cudaStreamSynchronize(cb->st);
	for (int l = 0; cb->L && l < cb->c->n_layers; l++) {
		struct layer *L = &cb->L[l];
		void *p[] = {L->wqkv, L->wo, L->wgu, L->wdown, L->bqkv, L->bo, L->bgu, L->bdown,
			     L->attn_norm, L->mlp_norm};
		for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
			cudaFree(p[i]);
	}
	free(cb->L);
	if (cb->lm_head != cb->embed)
		cudaFree(cb->lm_head);
	for (int i = 0; i < cb->n_graphs; i++)
		cudaGraphExecDestroy(cb->graphs[i].exec);
	void *d[] = {cb->embed, cb->final_norm, cb->cos, cb->sin, cb->kc, cb->vc, cb->x, cb->proj,
		     cb->qkv, cb->gu, cb->logits, cb->work, cb->xn, cb->att, cb->act, cb->d_step, cb->ws,
		     cb->d_samp, cb->d_out, cb->samp_work};
	for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
		cudaFree(d[i]);
	cudaFreeHost(cb->h_step);
	cudaFreeHost(cb->h_logits);
	cudaFreeHost(cb->h_samp);
	cudaFreeHost(cb->h_out);
	if (cb->plans) {
		for (int i = 0; i < PLANS; i++)
			if (cb->plans[i].used) {
				cublasLtMatrixLayoutDestroy(cb->plans[i].a);
				cublasLtMatrixLayoutDestroy(cb->plans[i].b);
				cublasLtMatrixLayoutDestroy(cb->plans[i].c);
			}
		free(cb->plans);
	}
	if (cb->desc)
		cublasLtMatmulDescDestroy(cb->desc);
	if (cb->desc_bias)
		cublasLtMatmulDescDestroy(cb->desc_bias);
	if (cb->lt)
		cublasLtDestroy(cb->lt);
	if (cb->st)
		cudaStreamDestroy(cb->st);
	free(cb->table);
	free(cb->table_len);
	free(cb->seq_row);
	free(cb);
}

const struct backend_ops cuda_ops = {cuda_forward, cuda_sample_step, cuda_bind, cuda_destroy};

} // namespace

extern "C" int cuda_device_count(void)
{
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		cudaGetLastError(); // no driver or no device: not an error here
		return 0;
	}
	return n;
}

extern "C" size_t cuda_kv_block_bytes(const struct model *m)
{
	const struct model_config *c = &m->cfg;
	return 2 * (size_t)c->n_layers * KV_BLOCK * (size_t)(c->n_kv_heads * c->head_dim) * 2;
}

// cudaMalloc of n bytes into p, or rc and err saying how much was missing
// for what, then to fail.
#define DALLOC(p, n)                                                                              \
	do {                                                                                      \
		size_t n_ = (n);                                                                  \
		cudaError_t e_ = cudaMalloc((void **)&(p), n_ > 0 ? n_ : 1);                      \
		if (e_ != cudaSuccess) {                                                          \
			size_t free_ = 0, total_ = 0;                                             \
			cudaMemGetInfo(&free_, &total_);                                          \
			rc = ember_err(err, -ENOMEM,                                              \
				       "GPU memory: %zu MB more are needed for %s, %zu MB are free " \
				       "of %zu MB",                                               \
				       n_ >> 20, #p, free_ >> 20, total_ >> 20);                   \
			goto fail;                                                                \
		}                                                                                 \
	} while (0)

extern "C" int cuda_backend_create(const struct model *m, const struct cuda_opts *o,
				   struct backend **out, struct cuda_load_stats *stats, char *err)
{
	*out = nullptr;
	const struct model_config *c = &m->cfg;
	double t0 = now_s();
	int rc = 0;
	struct uploader up = {};
	float *rope_cos = nullptr, *rope_sin = nullptr; // (max_ctx, head_dim / 2) until uploaded
	int ndev = cuda_device_count();
	if (ndev == 0)
		return ember_err(err, -ENODEV, "no CUDA device is visible");
	if (o->device < 0 || o->device >= ndev)
		return ember_err(err, -ENODEV, "CUDA device %d: only %d visible", o->device, ndev);
	if (c->n_heads / c->n_kv_heads > 8 || c->head_dim > 256 || c->head_dim % 2)
		return ember_err(err, -EINVAL, "the CUDA backend needs head_dim <= 256 and at most 8 "
					       "query heads per KV head (this model: %d and %d)",
				 c->head_dim, c->n_heads / c->n_kv_heads);
	if (c->vocab > CUDA_SAMPLE_MAX_VOCAB)
		return ember_err(err, -EINVAL, "the CUDA backend samples from at most %d ids (this "
					       "model: %d)", CUDA_SAMPLE_MAX_VOCAB, c->vocab);
	struct cuda_backend *cb = (struct cuda_backend *)calloc(1, sizeof *cb);
	if (!cb)
		return ember_err(err, -ENOMEM, "out of memory");
	be_init(&cb->base, &cuda_ops, "cuda", c->vocab, o->max_tokens, o->max_seqs, o->max_ctx,
		c->max_pos);
	cb->base.kv_block_bytes = cuda_kv_block_bytes(m);
	cb->m = m;
	cb->c = c;
	cb->dev = o->device;
	cb->q_dim = c->n_heads * c->head_dim;
	cb->kv_dim = c->n_kv_heads * c->head_dim;
	cb->qkv_dim = cb->q_dim + 2 * cb->kv_dim;
	cb->max_blocks = blocks_per_seq(cb);
	cb->fixed = o->kv_blocks == 0;
	cb->splits = 16;
	cb->logit_cap = cb->base.max_seqs > 16 ? cb->base.max_seqs : 16;
	if (cb->logit_cap > cb->base.max_tokens)
		cb->logit_cap = cb->base.max_tokens;
	cb->table = (const int32_t **)calloc((size_t)cb->base.max_seqs, sizeof *cb->table);
	cb->table_len = (int *)calloc((size_t)cb->base.max_seqs, sizeof *cb->table_len);
	cb->seq_row = (int *)malloc((size_t)cb->base.max_seqs * sizeof *cb->seq_row);
	cb->plans = (struct plan *)calloc(PLANS, sizeof *cb->plans);
	if (!cb->table || !cb->table_len || !cb->seq_row || !cb->plans) {
		rc = ember_err(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (int i = 0; i < cb->base.max_seqs; i++)
		cb->seq_row[i] = -1;
	{
		cudaError_t e = cudaSetDevice(o->device);
		if (e == cudaSuccess)
			e = cudaStreamCreateWithFlags(&cb->st, cudaStreamNonBlocking);
		if (e != cudaSuccess) {
			rc = cuda_fail(err, e, "CUDA initialisation");
			goto fail;
		}
		cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
		cudaDataType_t sc = CUDA_R_32F;
		cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
		cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
		if (cublasLtCreate(&cb->lt) != CUBLAS_STATUS_SUCCESS ||
		    cublasLtMatmulDescCreate(&cb->desc, ct, sc) != CUBLAS_STATUS_SUCCESS ||
		    cublasLtMatmulDescCreate(&cb->desc_bias, ct, sc) != CUBLAS_STATUS_SUCCESS) {
			rc = ember_err(err, -EIO, "cublasLt initialisation failed");
			goto fail;
		}
		cublasLtMatmulDesc_t ds[2] = {cb->desc, cb->desc_bias};
		for (int i = 0; i < 2; i++) {
			cublasLtMatmulDescSetAttribute(ds[i], CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
			cublasLtMatmulDescSetAttribute(ds[i], CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
		}
		cublasLtMatmulDescSetAttribute(cb->desc_bias, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep);
		cb->ws_bytes = (size_t)32 << 20;
		DALLOC(cb->ws, cb->ws_bytes);
	}
	if (stats)
		stats->init_s = now_s() - t0;
	t0 = now_s();
	{
		up.dev = o->device;
		int H = c->hidden, I = c->intermediate;
		size_t V = (size_t)c->vocab;
		cb->L = (struct layer *)calloc((size_t)c->n_layers, sizeof *cb->L);
		if (!cb->L) {
			rc = ember_err(err, -ENOMEM, "out of memory");
			goto fail;
		}
		DALLOC(cb->embed, V * H * 2);
		if ((rc = up_bf16(&up, cb->embed, m->embed.dtype, m->embed.data, tview_elems(&m->embed), err)) < 0)
			goto fail;
		if (m->lm_head.data == m->embed.data) {
			cb->lm_head = cb->embed;
		} else {
			DALLOC(cb->lm_head, V * H * 2);
			if ((rc = up_bf16(&up, cb->lm_head, m->lm_head.dtype, m->lm_head.data,
					  tview_elems(&m->lm_head), err)) < 0)
				goto fail;
		}
		DALLOC(cb->final_norm, (size_t)H * 4);
		if ((rc = up_f32(&up, cb->final_norm, m->final_norm, (size_t)H, err)) < 0)
			goto fail;
		for (int l = 0; l < c->n_layers; l++) {
			const struct layer_weights *W = &m->layers[l];
			struct layer *L = &cb->L[l];
			size_t qk = (size_t)cb->q_dim * H, kk = (size_t)cb->kv_dim * H;
			DALLOC(L->wqkv, (qk + 2 * kk) * 2);
			if ((rc = up_bf16(&up, L->wqkv, W->wq.dtype, W->wq.data, qk, err)) < 0 ||
			    (rc = up_bf16(&up, L->wqkv + qk, W->wk.dtype, W->wk.data, kk, err)) < 0 ||
			    (rc = up_bf16(&up, L->wqkv + qk + kk, W->wv.dtype, W->wv.data, kk, err)) < 0)
				goto fail;
			if (W->bq || W->bk || W->bv) {
				DALLOC(L->bqkv, (size_t)cb->qkv_dim * 4);
				cudaMemsetAsync(L->bqkv, 0, (size_t)cb->qkv_dim * 4, cb->st);
				if ((W->bq && (rc = up_f32(&up, L->bqkv, W->bq, cb->q_dim, err)) < 0) ||
				    (W->bk && (rc = up_f32(&up, L->bqkv + cb->q_dim, W->bk, cb->kv_dim, err)) < 0) ||
				    (W->bv && (rc = up_f32(&up, L->bqkv + cb->q_dim + cb->kv_dim, W->bv,
							   cb->kv_dim, err)) < 0))
					goto fail;
			}
			DALLOC(L->wo, (size_t)H * cb->q_dim * 2);
			if ((rc = up_bf16(&up, L->wo, W->wo.dtype, W->wo.data, tview_elems(&W->wo), err)) < 0)
				goto fail;
			if (W->bo) {
				DALLOC(L->bo, (size_t)H * 4);
				if ((rc = up_f32(&up, L->bo, W->bo, (size_t)H, err)) < 0)
					goto fail;
			}
			size_t ik = (size_t)I * H;
			DALLOC(L->wgu, 2 * ik * 2);
			if ((rc = up_bf16(&up, L->wgu, W->wgate.dtype, W->wgate.data, ik, err)) < 0 ||
			    (rc = up_bf16(&up, L->wgu + ik, W->wup.dtype, W->wup.data, ik, err)) < 0)
				goto fail;
			if (W->bgate || W->bup) {
				DALLOC(L->bgu, 2 * (size_t)I * 4);
				cudaMemsetAsync(L->bgu, 0, 2 * (size_t)I * 4, cb->st);
				if ((W->bgate && (rc = up_f32(&up, L->bgu, W->bgate, (size_t)I, err)) < 0) ||
				    (W->bup && (rc = up_f32(&up, L->bgu + I, W->bup, (size_t)I, err)) < 0))
					goto fail;
			}
			DALLOC(L->wdown, ik * 2);
			if ((rc = up_bf16(&up, L->wdown, W->wdown.dtype, W->wdown.data, ik, err)) < 0)
				goto fail;
			if (W->bdown) {
				DALLOC(L->bdown, (size_t)H * 4);
				if ((rc = up_f32(&up, L->bdown, W->bdown, (size_t)H, err)) < 0)
					goto fail;
			}
			DALLOC(L->attn_norm, (size_t)H * 4);
			DALLOC(L->mlp_norm, (size_t)H * 4);
			if ((rc = up_f32(&up, L->attn_norm, W->attn_norm, (size_t)H, err)) < 0 ||
			    (rc = up_f32(&up, L->mlp_norm, W->mlp_norm, (size_t)H, err)) < 0)
				goto fail;
		}
		size_t half = (size_t)c->head_dim / 2, ctxn = (size_t)cb->base.max_ctx;
		rope_cos = (float *)malloc(ctxn * half * 4);
		rope_sin = (float *)malloc(ctxn * half * 4);
		if (!rope_cos || !rope_sin) {
			rc = ember_err(err, -ENOMEM, "out of memory");
			goto fail;
		}
		cfg_rope_tables(c, cb->base.max_ctx, rope_cos, rope_sin);
		DALLOC(cb->cos, ctxn * half * 4);
		DALLOC(cb->sin, ctxn * half * 4);
		if ((rc = up_f32(&up, cb->cos, rope_cos, ctxn * half, err)) < 0 ||
		    (rc = up_f32(&up, cb->sin, rope_sin, ctxn * half, err)) < 0)
			goto fail;
		// The biases' zeroed rows are set before any upload lands in them.
		cudaError_t e = cudaStreamSynchronize(cb->st);
		if (e != cudaSuccess) {
			rc = cuda_fail(err, e, "uploading the weights");
			goto fail;
		}
		int threads = up_run(&up, err);
		if (threads < 0) {
			rc = threads;
			goto fail;
		}
		if (stats) {
			stats->upload_s = now_s() - t0;
			stats->upload_bytes = up.bytes;
			stats->upload_threads = threads;
		}
		// activations and the step's buffers
		size_t T = (size_t)cb->base.max_tokens;
		DALLOC(cb->x, T * H * 4);
		DALLOC(cb->proj, T * H * 4);
		DALLOC(cb->qkv, T * cb->qkv_dim * 4);
		DALLOC(cb->gu, T * 2 * I * 4);
		DALLOC(cb->xn, T * H * 2);
		DALLOC(cb->att, T * cb->q_dim * 2);
		DALLOC(cb->act, T * I * 2);
		DALLOC(cb->logits, (size_t)cb->logit_cap * V * 4);
		DALLOC(cb->work, cuda_attention_work((int)T, c->n_heads, c->head_dim, cb->splits) * 4);
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
		e = cudaHostAlloc(&cb->h_step, cb->step_bytes, cudaHostAllocDefault);
		if (e == cudaSuccess)
			e = cudaHostAlloc((void **)&cb->h_logits, (size_t)cb->logit_cap * V * 4,
					  cudaHostAllocDefault);
		if (e == cudaSuccess)
			e = cudaHostAlloc(&cb->h_samp, samp_bytes, cudaHostAllocDefault);
		if (e == cudaSuccess)
			e = cudaHostAlloc((void **)&cb->h_out, S * sizeof(struct sampler_result),
					  cudaHostAllocDefault);
		if (e != cudaSuccess) {
			rc = cuda_fail(err, e, "pinned memory for the steps");
			goto fail;
		}
		// the KV cache: each sequence's own blocks (kv_blocks 0), the
		// blocks asked for, or a fraction of what is free
		size_t block = cuda_kv_block_bytes(m), free_b = 0, total_b = 0;
		cudaMemGetInfo(&free_b, &total_b);
		long long blocks = o->kv_blocks;
		if (blocks == 0) {
			blocks = (long long)cb->base.max_seqs * cb->max_blocks;
		} else if (blocks < 0) {
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
		// and one block more, of no sequence's, for padded entries
		cb->base.kv_blocks = (int)blocks;
		cb->pad_block = (int)blocks;
		size_t half_cache = (size_t)(blocks + 1) * block / 2;
		DALLOC(cb->kc, half_cache);
		DALLOC(cb->vc, half_cache);
		if (stats) {
			cudaMemGetInfo(&free_b, &total_b);
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
	free(up.jobs);
	*out = &cb->base;
	return 0;
fail:
	if (cb->st)
		cudaStreamSynchronize(cb->st);
	free(rope_cos);
	free(rope_sin);
	free(up.jobs);
	cuda_destroy(&cb->base);
	return rc;
}
