// The CUDA table of the program's operations (program.h): one function per
// kind of op, each checking its launches; which products take the next op
// into their epilogue in a small step (fuse_plan); and, for the benchmark,
// where a step's time goes op by op (cuda_step_split).
#include "backend.h"
#include "check.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

namespace cuda_be {

// ---- the program's operations ----------------------------------------------


float *f32_buf(struct cuda_backend *cb, int b)
{
	return (float *)cb->buf[b];
}

bf16_t *bf16_buf(struct cuda_backend *cb, int b)
{
	return (bf16_t *)cb->buf[b];
}

struct cuda_kv layer_kv(struct cuda_backend *cb, int layer, const struct cuda_step *s)
{
	size_t layer_cache = (size_t)(cb->pad_block + 1) * KV_BLOCK * cb->kv_dim;
	return {cb->kc + layer * layer_cache, cb->vc + layer * layer_cache, s->d.tables, s->d.tab,
		cb->max_blocks};
}

// 0, or -EIO with err naming the kernel whose launch failed.
int launched(cudaError_t ce, const char *kernel, char *err)
{
	if (ce == cudaSuccess)
		return 0;
	return ember_err(err, -EIO, "launching %s: %s", kernel, cudaGetErrorString(ce));
}

int op_embed(struct cuda_backend *cb, const struct op *o, const struct cuda_step *s, char *err)
{
	return launched(cuda_embed(f32_buf(cb, o->out), cb->w[o->w].w, cb->p->bufs[o->out].width,
				   s->d.e, s->n, cb->st),
			"cuda_embed", err);
}

// Whether gemm g does its norm (fusion.norm) in a step of n rows.
static bool norm_in_gemm(const struct cuda_backend *cb, const struct op *g, int n)
{
	const struct weight *w = &cb->p->weights[g->w];
	const struct fusion *f = &cb->fused[g - cb->p->ops];
	int epi = f->how == FUSE_RESID ? DGEMM_RESID : f->how == FUSE_SWIGLU ? DGEMM_SWIGLU : DGEMM_PLAIN;
	return cb->small && f->norm >= 0 && cuda_dgemm_norm_fits(w->rows, w->cols, n, epi);
}

int op_rmsnorm(struct cuda_backend *cb, const struct op *o, const struct cuda_step *s, char *err)
{
	if (cb->fused[o - cb->p->ops].in_next && norm_in_gemm(cb, o + 1, s->n))
		return 0; // the gemm after it normalizes its rows itself
	bool added = cb->small && cb->fused[o - cb->p->ops].how == FUSE_NO_ADD;
	return launched(cuda_add_rmsnorm(f32_buf(cb, o->x),
					 o->add == OP_NONE || added ? nullptr : f32_buf(cb, o->add),
					 bf16_buf(cb, o->out), cb->vec[o->w], cb->p->bufs[o->x].width,
					 cb->p->eps, s->rows, s->n, cb->st),
			"cuda_add_rmsnorm", err);
}

int op_gemm(struct cuda_backend *cb, const struct op *o, const struct cuda_step *s, char *err)
{
	const struct weight *w = &cb->p->weights[o->w];
	const struct fusion *f = &cb->fused[o - cb->p->ops];
	float *y = o->out == OP_LOGITS ? cb->logits : f32_buf(cb, o->out);
	const bf16_t *x = bf16_buf(cb, o->in), *wt = cb->w[o->w].w;
	const float *bias = cb->w[o->w].bias;
	if (!cb->small || !cuda_dgemm_fits(w->rows, w->cols, DGEMM_PLAIN))
		return gemm_run(&cb->gemm, y, x, wt, bias, w->rows, w->cols, s->n, err);
	cudaError_t ce;
	int epi = f->how == FUSE_RESID ? DGEMM_RESID : f->how == FUSE_SWIGLU ? DGEMM_SWIGLU : DGEMM_PLAIN;
	if (norm_in_gemm(cb, o, s->n)) {
		const struct op *nm = &cb->p->ops[f->norm];
		float *out = epi == DGEMM_RESID ? f32_buf(cb, f->buf) : epi == DGEMM_SWIGLU ? nullptr : y;
		ce = cuda_dgemm_norm(out, epi == DGEMM_SWIGLU ? bf16_buf(cb, f->buf) : nullptr,
				     f32_buf(cb, nm->x), s->rows, cb->vec[nm->w], cb->p->eps, wt, bias,
				     w->rows, w->cols, s->n, epi, cb->st);
		return launched(ce, "cuda_dgemm_norm", err);
	}
	if (f->how == FUSE_RESID)
		ce = cuda_dgemm(f32_buf(cb, f->buf), nullptr, x, wt, bias, w->rows, w->cols, s->n,
				DGEMM_RESID, cb->dg_work, cb->dg_work_n, cb->st);
	else if (f->how == FUSE_SWIGLU)
		ce = cuda_dgemm(nullptr, bf16_buf(cb, f->buf), x, wt, bias, w->rows, w->cols, s->n,
				DGEMM_SWIGLU, cb->dg_work, cb->dg_work_n, cb->st);
	else
		ce = cuda_dgemm(y, nullptr, x, wt, bias, w->rows, w->cols, s->n, DGEMM_PLAIN,
				cb->dg_work, cb->dg_work_n, cb->st);
	return launched(ce, "cuda_dgemm", err);
}

int op_rope_kv(struct cuda_backend *cb, const struct op *o, const struct cuda_step *s, char *err)
{
	const struct attn_shape *a = &cb->p->attn;
	if (cb->rope_in_attention && cb->fused[o - cb->p->ops].how == FUSE_ROPE)
		return 0; // the attention kernel rotates and writes the cache itself
	struct cuda_kv kv = layer_kv(cb, o->layer, s);
	return launched(cuda_rope_kv(f32_buf(cb, o->x), a->n_heads, a->n_kv_heads, a->head_dim,
				     cb->cos, cb->sin, s->d.e, s->n, &kv, cb->st),
			"cuda_rope_kv", err);
}

int op_attention(struct cuda_backend *cb, const struct op *o, const struct cuda_step *s, char *err)
{
	const struct attn_shape *a = &cb->p->attn;
	struct cuda_kv kv = layer_kv(cb, o->layer, s);
	bool rope = cb->rope_in_attention && cb->fused[o - cb->p->ops].how == FUSE_ROPE;
	return launched(cuda_attention(bf16_buf(cb, o->out), f32_buf(cb, o->x), a->n_heads,
				       a->n_kv_heads, a->head_dim, s->d.e, s->d.dec, cb->n_dec,
				       s->d.tiles, cb->n_tiles, s->max_pos, &kv, cb->work,
				       cb->splits, rope ? cb->cos : nullptr, rope ? cb->sin : nullptr,
				       cb->st),
			"cuda_attention", err);
}

int op_swiglu(struct cuda_backend *cb, const struct op *o, const struct cuda_step *s, char *err)
{
	if (cb->small && cb->fused[o - cb->p->ops].how == FUSE_SKIP)
		return 0; // the gemm before wrote it
	return launched(cuda_swiglu(bf16_buf(cb, o->out), f32_buf(cb, o->in),
				    cb->p->bufs[o->out].width, s->n, cb->st),
			"cuda_swiglu", err);
}

// The CUDA table of operations, by kind.
const cuda_op_fn cuda_op_table[OP_KINDS] = {op_embed,     op_rmsnorm,   op_gemm,
					     op_rope_kv,   op_attention, op_swiglu};
const char *const op_names[OP_KINDS] = {"embed", "rmsnorm", "gemm", "rope_kv", "attention",
					"swiglu"};

// Whether the kernels of op take its buffers' dtypes: BF16 where a gemm
// reads (the outputs of the norms, attention and SwiGLU), FP32 elsewhere.
bool op_fits(const struct program *p, const struct op *o)
{
	auto bf16 = [p](int b) { return b >= 0 && p->bufs[b].gemm_in; };
	switch (o->kind) {
	case OP_EMBED:
	case OP_GEMM:
		return !bf16(o->out);
	case OP_RMSNORM:
		return bf16(o->out) && !bf16(o->x) && !bf16(o->add);
	case OP_ROPE_KV:
		return !bf16(o->x);
	case OP_ATTENTION:
		return bf16(o->out) && !bf16(o->x);
	case OP_SWIGLU:
		return bf16(o->out) && !bf16(o->in);
	default:
		return false;
	}
}

// Whether op i reads buffer b.
bool op_reads(const struct op *o, int b)
{
	return b >= 0 && (o->in == b || o->add == b || o->x == b);
}

// Whether no op after i reads buffer b before one writes it again.
static bool unread_after(const struct program *p, int i, int b)
{
	for (int j = i + 1; j < p->n_ops; j++) {
		if (op_reads(&p->ops[j], b))
			return false;
		if (p->ops[j].out == b)
			break;
	}
	return true;
}

// Marks in f (n_ops) the gemms that take the next op into their epilogue
// in a small step: those whose output nothing reads but that op before it
// is written again (the head, which follows the body, included); and the
// rope_kv ops that the attention of their rows can take in (the rotated
// rows read by nothing else).
void fuse_plan(const struct program *p, struct fusion *f)
{
	for (int i = 0; i < p->n_ops; i++)
		f[i] = {FUSE_NONE, OP_NONE, false, -1};
	for (int i = 0; i + 1 < p->n_ops; i++) {
		const struct op *r = &p->ops[i], *at = &p->ops[i + 1];
		if (r->kind == OP_ROPE_KV && at->kind == OP_ATTENTION && at->x == r->x &&
		    at->layer == r->layer && unread_after(p, i + 1, r->x))
			f[i] = f[i + 1] = {FUSE_ROPE, OP_NONE, false, -1};
	}
	for (int i = 0; i + 1 < p->n_ops; i++) {
		const struct op *g = &p->ops[i], *nx = &p->ops[i + 1];
		if (g->kind != OP_GEMM || g->out < 0 || f[i + 1].how != FUSE_NONE)
			continue;
		const struct weight *w = &p->weights[g->w];
		if (!unread_after(p, i + 1, g->out)) // after the next op
			continue;
		if (nx->kind == OP_RMSNORM && nx->add == g->out && nx->x != g->in &&
		    cuda_dgemm_fits(w->rows, w->cols, DGEMM_RESID)) {
			f[i].how = FUSE_RESID, f[i].buf = nx->x;
			f[i + 1].how = FUSE_NO_ADD;
		} else if (nx->kind == OP_SWIGLU && nx->in == g->out &&
			   w->rows == 2 * p->bufs[nx->out].width &&
			   cuda_dgemm_fits(w->rows, w->cols, DGEMM_SWIGLU)) {
			f[i].how = FUSE_SWIGLU, f[i].buf = nx->out;
			f[i + 1].how = FUSE_SKIP;
		}
	}
	// Norms with nothing left to add that only the next op, a gemm, reads
	// (both in the body or both in the head: a step of one row count).
	for (int i = 0; i + 1 < p->n_ops; i++) {
		const struct op *nm = &p->ops[i], *g = &p->ops[i + 1];
		if (nm->kind == OP_RMSNORM && g->kind == OP_GEMM && g->in == nm->out &&
		    (i < p->n_body) == (i + 1 < p->n_body) &&
		    (nm->add == OP_NONE || f[i].how == FUSE_NO_ADD) && nm->x != g->out &&
		    p->weights[g->w].cols == p->bufs[nm->x].width && unread_after(p, i + 1, nm->out)) {
			f[i].in_next = true;
			f[i + 1].norm = i;
		}
	}
}

// Queues ops [from, to) of the program; each op checks its launches.
int run_ops(struct cuda_backend *cb, int from, int to, const struct cuda_step *s, char *err)
{
	for (int i = from; i < to; i++) {
		const struct op *o = &cb->p->ops[i];
		int rc = cuda_op_table[o->kind](cb, o, s, err);
		if (rc < 0) {
			char why[EMBER_ERR_LEN];
			snprintf(why, sizeof why, "%s", err);
			return ember_err(err, rc, "op %d (%s) of the program: %s", i,
					 op_names[o->kind], why);
		}
	}
	return 0;
}

// ---- where a step's time goes (for the benchmark) ---------------------------

// Holds the stream for ns nanoseconds: the launches queued behind it then
// run back to back, as from a graph, however slowly the host queues them.
__global__ void hold_kernel(long long ns)
{
	long long t0, t;
	asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
	do {
		__nanosleep(1000);
		asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
	} while (t - t0 < ns);
}

// The fewest bytes op o moves in a step of n rows (entries e): its weight,
// the buffers it reads and writes once each, the keys and values attention
// reads.
double op_bytes(const struct cuda_backend *cb, const struct op *o, const struct be_entry *e,
		int n)
{
	const struct program *p = cb->p;
	auto row = [&](int b) {
		return b < 0 ? 0.0 : (double)p->bufs[b].width * (p->bufs[b].gemm_in ? 2 : 4);
	};
	const struct fusion *f = &cb->fused[o - p->ops];
	switch (o->kind) {
	case OP_GEMM: {
		const struct weight *w = &p->weights[o->w];
		double out = o->out == OP_LOGITS ? (double)w->rows * 4 : row(o->out);
		if (cb->small && f->how == FUSE_RESID)
			out = 2 * row(f->buf);
		else if (cb->small && f->how == FUSE_SWIGLU)
			out = row(f->buf);
		double in = norm_in_gemm(cb, o, n) ? p->bufs[p->ops[f->norm].x].width * 4.0 : row(o->in);
		return (double)w->rows * w->cols * 2 + (cb->w[o->w].bias ? w->rows * 4.0 : 0) +
		       n * (in + out);
	}
	case OP_ATTENTION: {
		double kv = 0;
		for (int t = 0; t < n; t++)
			kv += (double)(e[t].pos + 1) * cb->kv_dim * 2 * 2;
		return kv + n * (row(o->x) + row(o->out));
	}
	case OP_RMSNORM:
		if (f->in_next && norm_in_gemm(cb, o + 1, n))
			return 0; // the gemm's
		return n * (row(o->x) * (o->add == OP_NONE ? 1 : 2) + row(o->out) +
			    (o->add == OP_NONE || (cb->small && f->how == FUSE_NO_ADD) ? 0 : row(o->add)));
	case OP_ROPE_KV:
		return n * (row(o->x) + 2.0 * cb->kv_dim * 2);
	case OP_SWIGLU:
		return cb->small && f->how == FUSE_SKIP ? 0 : n * (row(o->in) + row(o->out));
	default:
		return n * (row(o->in) + row(o->out));
	}
}

} // namespace cuda_be

using namespace cuda_be;

extern "C" int cuda_step_split(struct backend *b, const struct be_entry *e, int n,
			       struct cuda_split *out, char *err)
{
	struct cuda_backend *cb = (struct cuda_backend *)b;
	int n_rows = be_check_sample(b, e, n, err);
	if (n_rows < 0)
		return n_rows;
	const struct program *p = cb->p;
	memset(out, 0, sizeof *out);
	CUDA_CHECK(cudaSetDevice(cb->dev));
	int max_pos = step_upload(cb, e, n, n, false, err);
	if (max_pos < 0)
		return max_pos;
	cb->small = n <= cb->dgemm_rows;
	struct sampler_row *greedy = (struct sampler_row *)calloc((size_t)n_rows, sizeof *greedy);
	cudaEvent_t *ev = (cudaEvent_t *)calloc((size_t)p->n_ops + 2, sizeof *ev);
	int made = 0, rc = greedy && ev ? 0 : ember_err(err, -ENOMEM, "out of memory");
	for (; rc == 0 && made < p->n_ops + 2; made++)
		if (cudaEventCreate(&ev[made]) != cudaSuccess)
			rc = ember_err(err, -EIO, "cudaEventCreate failed");
	for (int r = 0; r < n_rows; r++)
		sampler_params_default(&greedy[r].p), greedy[r].p.temperature = 0;
	if (rc == 0)
		rc = sample_upload(cb, greedy, 0, n_rows, err);
	struct cuda_step body = {n, max_pos, nullptr, step_arrays(cb, cb->d_step)}, head = body;
	head.n = n_rows;
	head.rows = head.d.rows;
	if (rc == 0) {
		hold_kernel<<<1, 1, 0, cb->st>>>(20 * 1000 * 1000);
		cudaEventRecord(ev[0], cb->st);
	}
	for (int i = 0; rc == 0 && i < p->n_ops; i++) {
		rc = run_ops(cb, i, i + 1, i < p->n_body ? &body : &head, err);
		cudaEventRecord(ev[i + 1], cb->st);
	}
	if (rc == 0) {
		struct cuda_sample_row *dr = (struct cuda_sample_row *)cb->d_samp;
		int32_t *seen = (int32_t *)(dr + cb->base.max_seqs);
		rc = launched(cuda_sample(cb->d_out, cb->logits, cb->samp_work, cb->base.vocab, dr,
					  seen, (const uint32_t *)(seen + cb->seen_cap), n_rows, cb->st),
			      "cuda_sample", err);
		cudaEventRecord(ev[p->n_ops + 1], cb->st);
	}
	if (rc == 0)
		rc = step_finish(cb, err);
	for (int i = 0; rc == 0 && i <= p->n_ops; i++) {
		float ms = 0;
		cudaEventElapsedTime(&ms, ev[i], ev[i + 1]);
		int c = i == p->n_ops ? CUDA_SPLIT_REST
			: p->ops[i].kind == OP_GEMM ? CUDA_SPLIT_PRODUCTS
			: p->ops[i].kind == OP_ATTENTION ? CUDA_SPLIT_ATTENTION : CUDA_SPLIT_REST;
		double bytes = i == p->n_ops ? (double)n_rows * cb->base.vocab * 4
				: op_bytes(cb, &p->ops[i], e, i < p->n_body ? n : n_rows);
		out->s[c] += ms * 1e-3;
		out->bytes[c] += bytes;
		char what[sizeof out->part[0].what];
		if (i == p->n_ops)
			snprintf(what, sizeof what, "sample");
		else if (p->ops[i].kind == OP_GEMM)
			snprintf(what, sizeof what, "gemm %dx%d", p->weights[p->ops[i].w].rows,
				 p->weights[p->ops[i].w].cols);
		else
			snprintf(what, sizeof what, "%s", op_names[p->ops[i].kind]);
		int k = 0;
		while (k < out->n_parts && strcmp(out->part[k].what, what) != 0)
			k++;
		if (k == out->n_parts && k < CUDA_SPLIT_PARTS)
			snprintf(out->part[out->n_parts++].what, sizeof what, "%s", what);
		if (k < out->n_parts) {
			out->part[k].count++;
			out->part[k].s += ms * 1e-3;
			out->part[k].bytes += bytes;
		}
	}
	for (int i = 0; i < made; i++)
		cudaEventDestroy(ev[i]);
	free(ev);
	free(greedy);
	return rc;
}
