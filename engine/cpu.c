/* The CPU backend: the reference implementation of every operation of a
 * model's program (program.h), in f32 over the weights as stored, and the
 * step that walks the program: the body for every entry, then the head
 * for the entries that want logits. Every buffer is allocated at
 * creation: forward allocates nothing. */
#include "cpu.h"
#include "device.h"

#include "matmul.h"
#include "threads.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

struct cpu_backend {
	struct backend base;
	const struct program *p;
	struct tpool *tp;
	int kv_dim;      /* the width of a K or V vector (the program's KV layout) */
	float **buf;     /* (n_bufs) the program's buffers: (max_tokens, width) f32 */
	float *scores;   /* (threads, max_ctx) attention weights */
	float *rope_cos; /* (max_ctx, head_dim / 2) */
	float *rope_sin; /* (max_ctx, head_dim / 2) */
	float *kcache;   /* (kv_blocks, n_layers, KV_BLOCK, kv_dim) */
	float *vcache;   /* (kv_blocks, n_layers, KV_BLOCK, kv_dim) */
	struct kv_tables kv; /* the sequences' block tables */
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

void cpu_embed(float *out, const struct wdesc *e, int token)
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

/* ---- the program's operations ------------------------------------------ */

/* What every operation gets: the step's entries, how many rows it runs on
 * (the entries in the body, the logits rows in the head) and, in the head,
 * each row's entry. */
struct cpu_step {
	const struct be_entry *e;
	int n;
	const int *src;    /* (n) in the head; NULL in the body */
	float *logits;     /* (rows, vocab) the head's output */
};

static float *row_of(struct cpu_backend *cb, int b, int t)
{
	return cb->buf[b] + (size_t)t * (size_t)cb->p->bufs[b].width;
}

static float *out_of(struct cpu_backend *cb, const struct op *o, const struct cpu_step *s)
{
	return o->out == OP_LOGITS ? s->logits : cb->buf[o->out];
}

static void op_embed(struct cpu_backend *cb, const struct op *o, const struct cpu_step *s)
{
	for (int t = 0; t < s->n; t++)
		cpu_embed(row_of(cb, o->out, t), &cb->p->weights[o->w].part[0], s->e[t].token);
}

static void op_rmsnorm(struct cpu_backend *cb, const struct op *o, const struct cpu_step *s)
{
	int H = cb->p->bufs[o->x].width;
	for (int t = 0; t < s->n; t++) {
		int src = s->src ? s->src[t] : t;
		float *x = row_of(cb, o->x, src);
		if (o->add != OP_NONE) {
			const float *add = row_of(cb, o->add, src);
			if (s->src) { /* the head leaves the residual stream as it is */
				float *v = row_of(cb, o->out, t);
				for (int i = 0; i < H; i++)
					v[i] = x[i] + add[i];
				cpu_rmsnorm(v, v, cb->p->vecs[o->w], H, cb->p->eps);
				continue;
			}
			for (int i = 0; i < H; i++)
				x[i] += add[i];
		}
		cpu_rmsnorm(row_of(cb, o->out, t), x, cb->p->vecs[o->w], H, cb->p->eps);
	}
}

static void op_gemm(struct cpu_backend *cb, const struct op *o, const struct cpu_step *s)
{
	const struct weight *w = &cb->p->weights[o->w];
	struct mm_job jobs[PROG_MAX_PARTS];
	float *y = out_of(cb, o, s);
	for (int k = 0, r = 0; k < w->n_parts; r += w->part[k].rows, k++)
		jobs[k] = (struct mm_job){&w->part[k], w->bias[k], y + r, w->rows};
	cpu_matmul(cb->tp, cb->buf[o->in], s->n, jobs, w->n_parts);
}

/* Where position pos of sequence seq keeps its key or value for layer. */
static float *cache_at(struct cpu_backend *cb, float *cache, int seq, int layer, int pos)
{
	int32_t block = kv_block(&cb->kv, seq, pos);
	size_t i = ((size_t)block * cb->p->kv.n_layers + layer) * KV_BLOCK + pos % KV_BLOCK;
	return cache + i * cb->kv_dim;
}

static void op_rope_kv(struct cpu_backend *cb, const struct op *o, const struct cpu_step *s)
{
	const struct attn_shape *a = &cb->p->attn;
	int half = a->head_dim / 2, q_dim = a->n_heads * a->head_dim;
	for (int t = 0; t < s->n; t++) {
		const struct be_entry *e = &s->e[t];
		const float *cs = cb->rope_cos + (size_t)e->pos * half;
		const float *sn = cb->rope_sin + (size_t)e->pos * half;
		float *q = row_of(cb, o->x, t), *k = q + q_dim, *v = k + cb->kv_dim;
		cpu_rope(q, a->n_heads, a->head_dim, cs, sn);
		cpu_rope(k, a->n_kv_heads, a->head_dim, cs, sn);
		memcpy(cache_at(cb, cb->kcache, e->seq, o->layer, e->pos), k,
		       (size_t)cb->kv_dim * sizeof(float));
		memcpy(cache_at(cb, cb->vcache, e->seq, o->layer, e->pos), v,
		       (size_t)cb->kv_dim * sizeof(float));
	}
}

struct attn_task {
	struct cpu_backend *cb;
	const struct op *o;
	const struct cpu_step *s;
};

/* Attention for (token, head) pairs split over the pool: softmax(q.K^T /
 * sqrt(d)) V over positions 0..pos of the token's own sequence. */
static void attn_worker(void *arg, int tid, int nt)
{
	struct attn_task *at = arg;
	struct cpu_backend *cb = at->cb;
	const struct attn_shape *a = &cb->p->attn;
	int hd = a->head_dim, group = a->n_heads / a->n_kv_heads, layer = at->o->layer;
	float scale = 1.0f / sqrtf((float)hd);
	float *s = cb->scores + (size_t)tid * cb->base.max_ctx;
	int tasks = at->s->n * a->n_heads;
	for (int task = tid; task < tasks; task += nt) {
		int t = task / a->n_heads, h = task % a->n_heads, kvh = h / group;
		const struct be_entry *e = &at->s->e[t];
		const float *q = row_of(cb, at->o->x, t) + (size_t)h * hd;
		float *out = row_of(cb, at->o->out, t) + (size_t)h * hd;
		size_t off = (size_t)kvh * hd;
		float mx = -INFINITY;
		for (int p = 0; p <= e->pos; p++) {
			s[p] = cpu_dot(q, cache_at(cb, cb->kcache, e->seq, layer, p) + off, hd) * scale;
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
			cpu_axpy(out, s[p], cache_at(cb, cb->vcache, e->seq, layer, p) + off, hd);
		float inv = (float)(1.0 / sum);
		for (int i = 0; i < hd; i++)
			out[i] *= inv;
	}
}

static void op_attention(struct cpu_backend *cb, const struct op *o, const struct cpu_step *s)
{
	struct attn_task at = {cb, o, s};
	tp_run(cb->tp, attn_worker, &at);
}

static void op_swiglu(struct cpu_backend *cb, const struct op *o, const struct cpu_step *s)
{
	int I = cb->p->bufs[o->out].width;
	for (int t = 0; t < s->n; t++) {
		const float *gu = row_of(cb, o->in, t);
		float *out = row_of(cb, o->out, t);
		for (int i = 0; i < I; i++) {
			float g = gu[i];
			out[i] = g / (1.0f + expf(-g)) * gu[I + i];
		}
	}
}

/* The CPU's table of operations, by kind. */
typedef void (*cpu_op_fn)(struct cpu_backend *cb, const struct op *o, const struct cpu_step *s);
static const cpu_op_fn cpu_op_table[OP_KINDS] = {
	[OP_EMBED] = op_embed,
	[OP_RMSNORM] = op_rmsnorm,
	[OP_GEMM] = op_gemm,
	[OP_ROPE_KV] = op_rope_kv,
	[OP_ATTENTION] = op_attention,
	[OP_SWIGLU] = op_swiglu,
};

/* ---- the step ----------------------------------------------------------- */

static int cpu_forward(struct backend *b, const struct be_entry *e, int n, float *logits,
		       char *err)
{
	struct cpu_backend *cb = (struct cpu_backend *)b;
	const struct program *p = cb->p;
	int rows = be_check(b, e, n, err);
	if (rows < 0)
		return rows;
	int rc = kv_check(&cb->kv, e, n, err);
	if (rc < 0)
		return rc;
	struct cpu_step body = {e, n, NULL, NULL};
	for (int i = 0; i < p->n_body; i++)
		cpu_op_table[p->ops[i].kind](cb, &p->ops[i], &body);
	if (rows == 0)
		return 0;
	for (int t = 0; t < n; t++)
		if (e[t].logits_row >= 0)
			cb->lm_src[e[t].logits_row] = t;
	struct cpu_step head = {e, rows, cb->lm_src, logits};
	for (int i = p->n_body; i < p->n_ops; i++)
		cpu_op_table[p->ops[i].kind](cb, &p->ops[i], &head);
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
	return kv_bind(&cb->kv, seq, blocks, n, err);
}

static void cpu_destroy(struct backend *b)
{
	struct cpu_backend *cb = (struct cpu_backend *)b;
	if (!cb)
		return;
	tp_destroy(cb->tp);
	for (int i = 0; cb->buf && i < cb->p->n_bufs; i++)
		free(cb->buf[i]);
	free(cb->buf);
	free(cb->scores);
	free(cb->rope_cos);
	free(cb->rope_sin);
	free(cb->kcache);
	free(cb->vcache);
	kv_tables_free(&cb->kv);
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
	return kv_block_bytes(&m->prog.kv, sizeof(float));
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
	cb->p = &m->prog;
	const struct program *p = cb->p;
	if (!prog_kv_per_head(p)) {
		free(cb);
		return ember_err(err, -EINVAL, "%s: the CPU backend keeps K and V per KV head; this "
					       "model's KV layout is another", c->arch_name);
	}
	cb->kv_dim = p->kv.width[0];
	int threads = o->threads > 0 ? o->threads : tp_cpu_count();
	int rc = tp_create(threads, &cb->tp, err);
	if (rc < 0)
		goto fail;
	size_t T = (size_t)cb->base.max_tokens, ctx_n = (size_t)cb->base.max_ctx;
	/* A pool sized by the device, on the CPU: every sequence its whole
	 * context, through tables. */
	int blocks = o->kv_blocks >= 0 ? o->kv_blocks
				       : cb->base.max_seqs * kv_blocks_for(cb->base.max_ctx);
	if ((rc = kv_tables_init(&cb->kv, cb->base.max_seqs, cb->base.max_ctx, blocks, err)) < 0)
		goto fail;
	cb->base.kv_blocks = cb->kv.n_blocks;
	cb->base.kv_block_bytes = cpu_kv_block_bytes(m);
	size_t cache_rows = (size_t)cb->base.kv_blocks * (size_t)p->kv.n_layers * KV_BLOCK;
	bool bufs = (cb->buf = calloc((size_t)p->n_bufs, sizeof *cb->buf)) != NULL;
	for (int i = 0; bufs && i < p->n_bufs; i++)
		bufs = (cb->buf[i] = fbuf(T, (size_t)p->bufs[i].width, 1)) != NULL;
	cb->scores = fbuf((size_t)threads, ctx_n, 1);
	cb->rope_cos = fbuf(ctx_n, (size_t)p->attn.head_dim / 2, 1);
	cb->rope_sin = fbuf(ctx_n, (size_t)p->attn.head_dim / 2, 1);
	cb->kcache = fbuf(cache_rows, (size_t)cb->kv_dim, 1);
	cb->vcache = fbuf(cache_rows, (size_t)cb->kv_dim, 1);
	cb->lm_src = calloc(T, sizeof *cb->lm_src);
	cb->logits = fbuf((size_t)cb->base.max_seqs, (size_t)c->vocab, 1);
	cb->scratch = calloc((size_t)threads, sizeof *cb->scratch);
	cb->threads = threads;
	bool scratch = cb->scratch != NULL;
	for (int i = 0; scratch && i < threads; i++)
		scratch = (cb->scratch[i] = sampler_scratch_create(c->vocab)) != NULL;
	if (!scratch || !bufs || !cb->logits || !cb->scores || !cb->rope_cos || !cb->rope_sin ||
	    !cb->kcache || !cb->vcache || !cb->lm_src) {
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

static int cpu_count(void)
{
	return 1;
}

static int cpu_device_create(const struct model *m, const struct device_opts *o,
			     struct backend **out, char *err)
{
	struct cpu_opts co = {.threads = o->threads, .max_tokens = o->max_tokens,
			      .max_seqs = o->max_seqs, .max_ctx = o->max_ctx,
			      .kv_blocks = o->kv_blocks};
	double t0 = ember_now();
	int rc = cpu_backend_create(m, &co, out, err);
	if (o->stats)
		o->stats->init_s = ember_now() - t0; /* the threads and buffers */
	return rc;
}

const struct device cpu_device = {"cpu", cpu_count, cpu_kv_block_bytes, cpu_device_create};
