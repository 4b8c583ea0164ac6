/* The CPU forward pass, written to be read beside transformers' modeling_llama
 * and modeling_qwen2: embedding, then per layer RMSNorm, q/k/v projections,
 * rotary embedding (rotate_half), grouped-query attention over the KV cache,
 * output projection and residual, RMSNorm, SwiGLU MLP and residual; then the
 * final norm and the LM head for the entries that want logits. Every buffer
 * is allocated at creation: forward allocates nothing. */
#include "cpu.h"

#include "matmul.h"
#include "threads.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

struct cpu_backend {
	struct backend base;
	const struct model *m;
	const struct model_config *c;
	struct tpool *tp;
	int q_dim, kv_dim;
	float *x;        /* (max_tokens, hidden) residual stream */
	float *xn;       /* (max_tokens, hidden) normed input / projection output */
	float *q;        /* (max_tokens, q_dim) */
	float *k, *v;    /* (max_tokens, kv_dim) */
	float *att;      /* (max_tokens, q_dim) attention output */
	float *gate;     /* (max_tokens, intermediate) */
	float *up;       /* (max_tokens, intermediate) */
	float *scores;   /* (threads, max_ctx) attention weights */
	float *rope_cos; /* (max_ctx, head_dim / 2) */
	float *rope_sin; /* (max_ctx, head_dim / 2) */
	float *kcache;   /* (kv_blocks, n_layers, KV_BLOCK, kv_dim) */
	float *vcache;   /* (kv_blocks, n_layers, KV_BLOCK, kv_dim) */
	const int32_t **table; /* (max_seqs) bound block tables, or NULL */
	int *table_len;  /* (max_seqs) blocks in each bound table */
	bool fixed;      /* each sequence has max_ctx / KV_BLOCK blocks of its own */
	int *lm_src;     /* (max_tokens) entry index of each logits row */
	float *logits;   /* (max_seqs, vocab) a sampled step's logits */
	struct sampler_scratch **scratch; /* (threads) for sampling the rows */
	int threads;
};

/* ---- the operations, each on one token's vector ------------------------- */

/* out = x / sqrt(mean(x^2) + eps) * w, as transformers' RMSNorm in float32. */
void cpu_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
	double ss = 0;
	for (int i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	float r = 1.0f / sqrtf((float)(ss / n) + eps);
	for (int i = 0; i < n; i++)
		out[i] = w[i] * (x[i] * r);
}

void cpu_embed(float *out, const struct tview *e, int token)
{
	size_t base = (size_t)token * (size_t)e->cols;
	for (int i = 0; i < e->cols; i++)
		out[i] = dtype_load_f32(e->dtype, e->data, base + (size_t)i);
}

/* Rotates each head of x (n_heads, head_dim) by its position: the first and
 * second halves of a head are the pair (rotate_half), not adjacent elements. */
void cpu_rope(float *x, int n_heads, int head_dim, const float *cos, const float *sin)
{
	int half = head_dim / 2;
	for (int h = 0; h < n_heads; h++) {
		float *v = x + (size_t)h * head_dim;
		for (int i = 0; i < half; i++) {
			float a = v[i], b = v[i + half];
			v[i] = a * cos[i] - b * sin[i];
			v[i + half] = b * cos[i] + a * sin[i];
		}
	}
}

void cpu_swiglu(float *gate, const float *up, int n)
{
	for (int i = 0; i < n; i++) {
		float g = gate[i];
		gate[i] = g / (1.0f + expf(-g)) * up[i];
	}
}

/* ---- the step ----------------------------------------------------------- */

struct attn_task {
	struct cpu_backend *cb;
	const struct be_entry *e;
	int n;
	int layer;
};

static int blocks_per_seq(const struct cpu_backend *cb)
{
	return (cb->base.max_ctx + KV_BLOCK - 1) / KV_BLOCK;
}

/* Where position pos of sequence seq keeps its key or value for layer. */
static float *cache_at(struct cpu_backend *cb, float *cache, int seq, int layer, int pos)
{
	int32_t block = cb->table[seq] ? cb->table[seq][pos / KV_BLOCK]
				       : seq * blocks_per_seq(cb) + pos / KV_BLOCK;
	size_t i = ((size_t)block * cb->c->n_layers + layer) * KV_BLOCK + pos % KV_BLOCK;
	return cache + i * cb->kv_dim;
}

/* Attention for (token, head) pairs split over the pool: softmax(q.K^T /
 * sqrt(d)) V over positions 0..pos of the token's own sequence. */
static void attn_worker(void *arg, int tid, int nt)
{
	struct attn_task *at = arg;
	struct cpu_backend *cb = at->cb;
	const struct model_config *c = cb->c;
	int hd = c->head_dim, group = c->n_heads / c->n_kv_heads;
	float scale = 1.0f / sqrtf((float)hd);
	float *s = cb->scores + (size_t)tid * cb->base.max_ctx;
	int tasks = at->n * c->n_heads;
	for (int task = tid; task < tasks; task += nt) {
		int t = task / c->n_heads, h = task % c->n_heads, kvh = h / group;
		const struct be_entry *e = &at->e[t];
		const float *q = cb->q + (size_t)t * cb->q_dim + (size_t)h * hd;
		float *out = cb->att + (size_t)t * cb->q_dim + (size_t)h * hd;
		size_t off = (size_t)kvh * hd;
		float mx = -INFINITY;
		for (int p = 0; p <= e->pos; p++) {
			s[p] = cpu_dot(q, cache_at(cb, cb->kcache, e->seq, at->layer, p) + off, hd) * scale;
			if (s[p] > mx)
				mx = s[p];
		}
		double sum = 0;
		for (int p = 0; p <= e->pos; p++) {
			s[p] = expf(s[p] - mx);
			sum += s[p];
		}
		memset(out, 0, (size_t)hd * sizeof *out);
		for (int p = 0; p <= e->pos; p++)
			cpu_axpy(out, s[p], cache_at(cb, cb->vcache, e->seq, at->layer, p) + off, hd);
		float inv = (float)(1.0 / sum);
		for (int i = 0; i < hd; i++)
			out[i] *= inv;
	}
}

static void residual_add(float *x, const float *y, size_t n)
{
	for (size_t i = 0; i < n; i++)
		x[i] += y[i];
}

static int cpu_forward(struct backend *b, const struct be_entry *e, int n, float *logits,
		       char *err)
{
	struct cpu_backend *cb = (struct cpu_backend *)b;
	const struct model *m = cb->m;
	const struct model_config *c = cb->c;
	int rows = be_check(b, e, n, err);
	if (rows < 0)
		return rows;
	for (int t = 0; t < n; t++) {
		int seq = e[t].seq;
		if (cb->table[seq] ? e[t].pos >= cb->table_len[seq] * KV_BLOCK : !cb->fixed)
			return ember_err(err, -EINVAL, "entry %d: sequence %d has no block for position %d",
					 t, seq, e[t].pos);
	}
	int H = c->hidden, half = c->head_dim / 2;

	for (int t = 0; t < n; t++)
		cpu_embed(cb->x + (size_t)t * H, &m->embed, e[t].token);

	for (int l = 0; l < c->n_layers; l++) {
		const struct layer_weights *L = &m->layers[l];
		for (int t = 0; t < n; t++)
			cpu_rmsnorm(cb->xn + (size_t)t * H, cb->x + (size_t)t * H, L->attn_norm, H,
				    c->rms_eps);
		struct mm_job qkv[3] = {
			{&L->wq, L->bq, cb->q}, {&L->wk, L->bk, cb->k}, {&L->wv, L->bv, cb->v}};
		cpu_matmul(cb->tp, cb->xn, n, qkv, 3);
		for (int t = 0; t < n; t++) {
			const float *cs = cb->rope_cos + (size_t)e[t].pos * half;
			const float *sn = cb->rope_sin + (size_t)e[t].pos * half;
			float *kt = cb->k + (size_t)t * cb->kv_dim;
			cpu_rope(cb->q + (size_t)t * cb->q_dim, c->n_heads, c->head_dim, cs, sn);
			cpu_rope(kt, c->n_kv_heads, c->head_dim, cs, sn);
			memcpy(cache_at(cb, cb->kcache, e[t].seq, l, e[t].pos), kt,
			       (size_t)cb->kv_dim * sizeof(float));
			memcpy(cache_at(cb, cb->vcache, e[t].seq, l, e[t].pos),
			       cb->v + (size_t)t * cb->kv_dim, (size_t)cb->kv_dim * sizeof(float));
		}
		struct attn_task at = {cb, e, n, l};
		tp_run(cb->tp, attn_worker, &at);
		struct mm_job o = {&L->wo, L->bo, cb->xn};
		cpu_matmul(cb->tp, cb->att, n, &o, 1);
		residual_add(cb->x, cb->xn, (size_t)n * H);

		for (int t = 0; t < n; t++)
			cpu_rmsnorm(cb->xn + (size_t)t * H, cb->x + (size_t)t * H, L->mlp_norm, H,
				    c->rms_eps);
		struct mm_job gu[2] = {{&L->wgate, L->bgate, cb->gate}, {&L->wup, L->bup, cb->up}};
		cpu_matmul(cb->tp, cb->xn, n, gu, 2);
		cpu_swiglu(cb->gate, cb->up, n * c->intermediate);
		struct mm_job d = {&L->wdown, L->bdown, cb->xn};
		cpu_matmul(cb->tp, cb->gate, n, &d, 1);
		residual_add(cb->x, cb->xn, (size_t)n * H);
	}

	if (rows == 0)
		return 0;
	for (int t = 0; t < n; t++)
		if (e[t].logits_row >= 0)
			cb->lm_src[e[t].logits_row] = t;
	for (int r = 0; r < rows; r++)
		cpu_rmsnorm(cb->xn + (size_t)r * H, cb->x + (size_t)cb->lm_src[r] * H, m->final_norm,
			    H, c->rms_eps);
	struct mm_job lm = {&m->lm_head, NULL, logits};
	cpu_matmul(cb->tp, cb->xn, rows, &lm, 1);
	return 0;
}

struct sample_task {
	struct cpu_backend *cb;
	const struct sampler_row *rows;
	struct sampler_result *out;
	int n;
};

static void sample_worker(void *arg, int tid, int nt)
{
	struct sample_task *st = arg;
	size_t V = (size_t)st->cb->base.vocab;
	for (int r = tid; r < st->n; r += nt)
		sampler_sample_row(&st->rows[r], st->cb->scratch[tid], st->cb->logits + (size_t)r * V,
				   &st->out[r]);
}

/* The rows sampled side by side on the pool, each with its thread's scratch. */
static int cpu_sample(struct backend *b, const struct be_entry *e, int n,
		      const struct sampler_row *rows, struct sampler_result *out, char *err)
{
	struct cpu_backend *cb = (struct cpu_backend *)b;
	int n_rows = be_check_sample(b, e, n, err);
	if (n_rows < 0)
		return n_rows;
	int rc = cpu_forward(b, e, n, cb->logits, err);
	if (rc < 0)
		return rc;
	struct sample_task st = {cb, rows, out, n_rows};
	if (n_rows > 1)
		tp_run(cb->tp, sample_worker, &st);
	else
		sample_worker(&st, 0, 1); /* one row (or none): no need to wake the pool */
	return 0;
}

static int cpu_bind(struct backend *b, int seq, const int32_t *blocks, int n, char *err)
{
	struct cpu_backend *cb = (struct cpu_backend *)b;
	int rc = be_check_bind(b, seq, blocks, n, err);
	if (rc < 0)
		return rc;
	cb->table[seq] = blocks;
	cb->table_len[seq] = blocks ? n : 0;
	return 0;
}

static void cpu_destroy(struct backend *b)
{
	struct cpu_backend *cb = (struct cpu_backend *)b;
	if (!cb)
		return;
	tp_destroy(cb->tp);
	free(cb->x);
	free(cb->xn);
	free(cb->q);
	free(cb->k);
	free(cb->v);
	free(cb->att);
	free(cb->gate);
	free(cb->up);
	free(cb->scores);
	free(cb->rope_cos);
	free(cb->rope_sin);
	free(cb->kcache);
	free(cb->vcache);
	free(cb->table);
	free(cb->table_len);
	free(cb->lm_src);
	free(cb->logits);
	for (int i = 0; cb->scratch && i < cb->threads; i++)
		sampler_scratch_destroy(cb->scratch[i]);
	free(cb->scratch);
	free(cb);
}

static const struct backend_ops cpu_ops = {
	.forward = cpu_forward,
	.sample = cpu_sample,
	.bind = cpu_bind,
	.destroy = cpu_destroy,
};

/* calloc of a*b*c floats with overflow checks. */
static float *fbuf(size_t a, size_t b, size_t c)
{
	size_t n;
	if (!size_mul(a, b, &n) || !size_mul(n, c, &n))
		return NULL;
	return calloc(n ? n : 1, sizeof(float));
}

size_t cpu_kv_block_bytes(const struct model *m)
{
	const struct model_config *c = &m->cfg;
	return 2 * (size_t)c->n_layers * KV_BLOCK * (size_t)(c->n_kv_heads * c->head_dim) * sizeof(float);
}

int cpu_backend_create(const struct model *m, const struct cpu_opts *o, struct backend **out,
		       char *err)
{
	*out = NULL;
	const struct model_config *c = &m->cfg;
	struct cpu_backend *cb = calloc(1, sizeof *cb);
	if (!cb)
		return ember_err(err, -ENOMEM, "out of memory");
	be_init(&cb->base, &cpu_ops, "cpu", c->vocab, o->max_tokens, o->max_seqs, o->max_ctx,
		c->max_pos);
	cb->m = m;
	cb->c = c;
	cb->q_dim = c->n_heads * c->head_dim;
	cb->kv_dim = c->n_kv_heads * c->head_dim;
	int threads = o->threads > 0 ? o->threads : tp_cpu_count();
	int rc = tp_create(threads, &cb->tp, err);
	if (rc < 0)
		goto fail;
	size_t T = (size_t)cb->base.max_tokens, ctx_n = (size_t)cb->base.max_ctx;
	cb->fixed = o->kv_blocks <= 0;
	cb->base.kv_blocks = cb->fixed ? cb->base.max_seqs * blocks_per_seq(cb) : o->kv_blocks;
	cb->base.kv_block_bytes = cpu_kv_block_bytes(m);
	size_t cache_rows = (size_t)cb->base.kv_blocks * (size_t)c->n_layers * KV_BLOCK;
	cb->x = fbuf(T, (size_t)c->hidden, 1);
	cb->xn = fbuf(T, (size_t)c->hidden, 1);
	cb->q = fbuf(T, (size_t)cb->q_dim, 1);
	cb->k = fbuf(T, (size_t)cb->kv_dim, 1);
	cb->v = fbuf(T, (size_t)cb->kv_dim, 1);
	cb->att = fbuf(T, (size_t)cb->q_dim, 1);
	cb->gate = fbuf(T, (size_t)c->intermediate, 1);
	cb->up = fbuf(T, (size_t)c->intermediate, 1);
	cb->scores = fbuf((size_t)threads, ctx_n, 1);
	cb->rope_cos = fbuf(ctx_n, (size_t)c->head_dim / 2, 1);
	cb->rope_sin = fbuf(ctx_n, (size_t)c->head_dim / 2, 1);
	cb->kcache = fbuf(cache_rows, (size_t)cb->kv_dim, 1);
	cb->vcache = fbuf(cache_rows, (size_t)cb->kv_dim, 1);
	cb->lm_src = calloc(T, sizeof *cb->lm_src);
	cb->table = calloc((size_t)cb->base.max_seqs, sizeof *cb->table);
	cb->table_len = calloc((size_t)cb->base.max_seqs, sizeof *cb->table_len);
	cb->logits = fbuf((size_t)cb->base.max_seqs, (size_t)c->vocab, 1);
	cb->scratch = calloc((size_t)threads, sizeof *cb->scratch);
	cb->threads = threads;
	bool scratch = cb->scratch != NULL;
	for (int i = 0; scratch && i < threads; i++)
		scratch = (cb->scratch[i] = sampler_scratch_create(c->vocab)) != NULL;
	if (!scratch || !cb->logits || !cb->x || !cb->xn || !cb->q || !cb->k || !cb->v || !cb->att ||
	    !cb->gate || !cb->up || !cb->scores || !cb->rope_cos || !cb->rope_sin || !cb->kcache || !cb->vcache ||
	    !cb->lm_src || !cb->table || !cb->table_len) {
		rc = ember_err(err, -ENOMEM,
			       "out of memory for the CPU buffers (%zu tokens, %zu sequences of %zu positions)",
			       T, (size_t)cb->base.max_seqs, ctx_n);
		goto fail;
	}
	cfg_rope_tables(c, cb->base.max_ctx, cb->rope_cos, cb->rope_sin);
	(void)cpu_isa(); /* choose the kernels before any thread uses them */
	*out = &cb->base;
	return 0;
fail:
	cpu_destroy(&cb->base);
	return rc;
}
