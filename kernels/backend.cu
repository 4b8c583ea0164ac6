// The CUDA backend (cuda.h): cpu_forward's step on the GPU. Per layer:
// RMSNorm (with the residual add of the layer before), one matrix product
// for q, k and v (their rows side by side, biases in cublasLt's epilogue),
// rotary embedding with the write into the paged cache, attention, the
// output projection, RMSNorm with its residual add, one product for gate
// and up, SwiGLU, the down projection; then the final norm and the LM head
// for the rows that want logits, which alone cross to the host.
#include "cuda.h"
#include "ops.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
#define STAGE_BYTES ((size_t)32 << 20)
#define STAGES 4

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
};

int cuda_fail(char *err, cudaError_t e, const char *what)
{
	return ember_err(err, e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO, "%s: %s", what,
			 cudaGetErrorString(e));
}

// ---- weights up --------------------------------------------------------------

// Copies host data to the device through a ring of pinned buffers,
// converting to BF16 on the way when the model stores something else.
struct uploader {
	void *stage[STAGES];
	cudaEvent_t done[STAGES];
	int next;
	size_t bytes;
	cudaStream_t st;
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

// dst[0..n) = elements [0, n) of src (of dtype from) as dtype to, which
// is from itself or BF16 (converted on the way).
int up(struct uploader *u, void *dst, enum dtype to, enum dtype from, const void *src, size_t n,
       char *err)
{
	size_t esz = dtype_size(to), per = STAGE_BYTES / esz;
	for (size_t done = 0; done < n; done += per) {
		size_t k = n - done < per ? n - done : per;
		int i = u->next++ % STAGES;
		cudaError_t e = cudaEventSynchronize(u->done[i]);
		if (e != cudaSuccess)
			return cuda_fail(err, e, "uploading the weights");
		if (to == from)
			memcpy(u->stage[i], (const char *)src + done * esz, k * esz);
		else
			bf16_from(from, src, done, k, (uint16_t *)u->stage[i]);
		e = cudaMemcpyAsync((char *)dst + done * esz, u->stage[i], k * esz,
				    cudaMemcpyHostToDevice, u->st);
		if (e == cudaSuccess)
			e = cudaEventRecord(u->done[i], u->st);
		if (e != cudaSuccess)
			return cuda_fail(err, e, "uploading the weights");
		u->bytes += k * esz;
	}
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

int cuda_forward(struct backend *b, const struct be_entry *e, int n, float *logits, char *err)
{
	struct cuda_backend *cb = (struct cuda_backend *)b;
	const struct model_config *c = cb->c;
	int rows = be_check(b, e, n, err);
	if (rows < 0)
		return rows;
	cudaError_t ce = cudaSetDevice(cb->dev); // the engine thread is not the creator
	if (ce != cudaSuccess)
		return cuda_fail(err, ce, "cudaSetDevice");
	// The step's upload: entries, each entry's table row, the logits rows'
	// entries, then the tables of the sequences in the step.
	struct be_entry *he = (struct be_entry *)cb->h_step;
	int32_t *htab = (int32_t *)(he + b->max_tokens);
	int32_t *hrows = htab + b->max_tokens;
	int32_t *htables = hrows + b->max_tokens;
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
		he[t] = e[t];
		htab[t] = cb->seq_row[seq];
		if (e[t].logits_row >= 0)
			hrows[e[t].logits_row] = t;
		if (e[t].pos > max_pos)
			max_pos = e[t].pos;
	}
	for (int t = 0; t < n; t++) { // each sequence's table, once
		int seq = e[t].seq, r = cb->seq_row[seq];
		if (r < 0)
			continue;
		int32_t *dst = htables + (size_t)r * cb->max_blocks;
		if (cb->table[seq])
			memcpy(dst, cb->table[seq], (size_t)cb->table_len[seq] * sizeof *dst);
		else
			for (int i = 0; i < cb->max_blocks; i++)
				dst[i] = seq * blocks_per_seq(cb) + i;
		cb->seq_row[seq] = -1;
	}
	size_t bytes = (size_t)((char *)(htables + (size_t)n_tab * cb->max_blocks) - (char *)cb->h_step);
	ce = cudaMemcpyAsync(cb->d_step, cb->h_step, bytes, cudaMemcpyHostToDevice, cb->st);
	if (ce != cudaSuccess)
		return cuda_fail(err, ce, "uploading the step");
	struct be_entry *de = (struct be_entry *)cb->d_step;
	int32_t *dtab = (int32_t *)(de + b->max_tokens);
	int32_t *drows = dtab + b->max_tokens;
	int32_t *dtables = drows + b->max_tokens;

	int H = c->hidden, I = c->intermediate;
	cuda_embed(cb->x, cb->embed, H, de, n, cb->st);
	size_t layer_cache = (size_t)b->kv_blocks * KV_BLOCK * cb->kv_dim;
	for (int l = 0; l < c->n_layers; l++) {
		const struct layer *L = &cb->L[l];
		struct cuda_kv kv = {cb->kc + l * layer_cache, cb->vc + l * layer_cache, dtables, dtab,
				     cb->max_blocks};
		cuda_add_rmsnorm(cb->x, l ? cb->proj : nullptr, cb->xn, L->attn_norm, H, c->rms_eps,
				 nullptr, n, cb->st);
		if (gemm(cb, cb->qkv, cb->xn, L->wqkv, L->bqkv, cb->qkv_dim, H, n, err) < 0)
			return -EIO;
		cuda_rope_kv(cb->qkv, c->n_heads, c->n_kv_heads, c->head_dim, cb->cos, cb->sin, de, n,
			     &kv, cb->st);
		if (cuda_attention(cb->att, cb->qkv, c->n_heads, c->n_kv_heads, c->head_dim, de, n,
				   max_pos, &kv, cb->work, cb->splits, cb->st) < 0)
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
	// The final norm (after the last residual add) and the LM head, for the
	// rows that want logits, logit_cap rows at a time.
	for (int r0 = 0; r0 < rows; r0 += cb->logit_cap) {
		int k = rows - r0 < cb->logit_cap ? rows - r0 : cb->logit_cap;
		cuda_add_rmsnorm(cb->x, cb->proj, cb->xn, cb->final_norm, H, c->rms_eps, drows + r0, k,
				 cb->st);
		if (gemm(cb, cb->logits, cb->xn, cb->lm_head, nullptr, c->vocab, H, k, err) < 0)
			return -EIO;
		size_t lb = (size_t)k * c->vocab * sizeof(float);
		ce = cudaMemcpyAsync(cb->h_logits, cb->logits, lb, cudaMemcpyDeviceToHost, cb->st);
		if (ce == cudaSuccess)
			ce = cudaStreamSynchronize(cb->st);
		if (ce != cudaSuccess)
			return cuda_fail(err, ce, "the step");
		memcpy(logits + (size_t)r0 * c->vocab, cb->h_logits, lb);
	}
	ce = cudaStreamSynchronize(cb->st);
	if (ce == cudaSuccess)
		ce = cudaGetLastError();
	if (ce != cudaSuccess)
		return cuda_fail(err, ce, "the step");
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
	void *d[] = {cb->embed, cb->final_norm, cb->cos, cb->sin, cb->kc, cb->vc, cb->x, cb->proj,
		     cb->qkv, cb->gu, cb->logits, cb->work, cb->xn, cb->att, cb->act, cb->d_step, cb->ws};
	for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
		cudaFree(d[i]);
	cudaFreeHost(cb->h_step);
	cudaFreeHost(cb->h_logits);
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

const struct backend_ops cuda_ops = {cuda_forward, cuda_bind, cuda_destroy};

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
	int ndev = cuda_device_count();
	if (ndev == 0)
		return ember_err(err, -ENODEV, "no CUDA device is visible");
	if (o->device < 0 || o->device >= ndev)
		return ember_err(err, -ENODEV, "CUDA device %d: only %d visible", o->device, ndev);
	if (c->n_heads / c->n_kv_heads > 8 || c->head_dim > 256 || c->head_dim % 2)
		return ember_err(err, -EINVAL, "the CUDA backend needs head_dim <= 256 and at most 8 "
					       "query heads per KV head (this model: %d and %d)",
				 c->head_dim, c->n_heads / c->n_kv_heads);
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
		up.st = cb->st;
		for (int i = 0; i < STAGES; i++) {
			cudaError_t e = cudaHostAlloc(&up.stage[i], STAGE_BYTES, cudaHostAllocDefault);
			if (e == cudaSuccess)
				e = cudaEventCreateWithFlags(&up.done[i], cudaEventDisableTiming);
			if (e != cudaSuccess) {
				rc = cuda_fail(err, e, "pinned staging memory");
				goto fail;
			}
		}
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
		float *hc = (float *)malloc(ctxn * half * 4), *hs = (float *)malloc(ctxn * half * 4);
		if (!hc || !hs) {
			free(hc);
			free(hs);
			rc = ember_err(err, -ENOMEM, "out of memory");
			goto fail;
		}
		cfg_rope_tables(c, cb->base.max_ctx, hc, hs);
		DALLOC(cb->cos, ctxn * half * 4);
		DALLOC(cb->sin, ctxn * half * 4);
		rc = up_f32(&up, cb->cos, hc, ctxn * half, err);
		if (rc == 0)
			rc = up_f32(&up, cb->sin, hs, ctxn * half, err);
		cudaError_t e = cudaStreamSynchronize(cb->st); // the staging buffers are read
		free(hc);
		free(hs);
		if (rc < 0)
			goto fail;
		if (e != cudaSuccess) {
			rc = cuda_fail(err, e, "uploading the weights");
			goto fail;
		}
		if (stats) {
			stats->upload_s = now_s() - t0;
			stats->upload_bytes = up.bytes;
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
		cb->step_bytes = T * (sizeof(struct be_entry) + 8) +
				 (size_t)cb->base.max_seqs * cb->max_blocks * 4;
		DALLOC(cb->d_step, cb->step_bytes);
		e = cudaHostAlloc(&cb->h_step, cb->step_bytes, cudaHostAllocDefault);
		if (e == cudaSuccess)
			e = cudaHostAlloc((void **)&cb->h_logits, (size_t)cb->logit_cap * V * 4,
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
		cb->base.kv_blocks = (int)blocks;
		size_t half_cache = (size_t)blocks * block / 2;
		DALLOC(cb->kc, half_cache);
		DALLOC(cb->vc, half_cache);
		if (stats) {
			cudaMemGetInfo(&free_b, &total_b);
			stats->free_bytes = free_b;
			stats->total_bytes = total_b;
		}
	}
	for (int i = 0; i < STAGES; i++) {
		cudaFreeHost(up.stage[i]);
		cudaEventDestroy(up.done[i]);
	}
	*out = &cb->base;
	return 0;
fail:
	if (cb->st)
		cudaStreamSynchronize(cb->st);
	for (int i = 0; i < STAGES; i++) {
		if (up.stage[i])
			cudaFreeHost(up.stage[i]);
		if (up.done[i])
			cudaEventDestroy(up.done[i]);
	}
	cuda_destroy(&cb->base);
	return rc;
}
