/* The recipes' common half: finding a family's recipe by architecture name,
 * and the helpers that bind tensors and append to a model's program, then
 * check what was built. */
#include "recipe.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct recipe *recipe_find(const char *architecture)
{
	for (int i = 0; arch_recipes[i]; i++)
		for (const char *const *a = arch_recipes[i]->architectures; *a; a++)
			if (strcmp(*a, architecture) == 0)
				return arch_recipes[i];
	return NULL;
}

void recipe_names(char *buf, size_t n)
{
	size_t at = 0;
	buf[0] = '\0';
	for (int i = 0; arch_recipes[i]; i++)
		for (const char *const *a = arch_recipes[i]->architectures; *a; a++) {
			int k = snprintf(buf + at, n - at, "%s%s", at ? ", " : "", *a);
			if (k < 0 || (size_t)k >= n - at)
				return;
			at += (size_t)k;
		}
}

/* Room for one more element in the array *p of *cap (elements of size
 * bytes), *len in use. Returns false when out of memory. */
static bool grow(void *p, int *cap, int len, size_t size)
{
	if (len < *cap)
		return true;
	int c = *cap ? 2 * *cap : 32;
	void *q = realloc(*(void **)p, (size_t)c * size);
	if (!q)
		return false;
	*(void **)p = q;
	*cap = c;
	return true;
}

/* The tensor called name, which must exist and have a dtype we compute
 * with; NULL with err set otherwise. */
static const struct st_tensor *find(const struct model *m, const char *name, char *err)
{
	const struct st_tensor *t = wts_find(m->weights, name);
	if (!t) {
		ember_err(err, -EINVAL, "%s: tensor '%s' is missing", mf_origin(m->files), name);
		return NULL;
	}
	if (!dtype_computable(t->dtype)) {
		ember_err(err, -EINVAL, "%s: tensor '%s' has dtype %s (BF16, F16, F32 are supported)",
			  mf_origin(m->files), name, dtype_name(t->dtype));
		return NULL;
	}
	return t;
}

int rb_vector(struct model *m, const char *name, int n, char *err)
{
	struct program *p = &m->prog;
	const struct st_tensor *t = find(m, name, err);
	if (!t)
		return -EINVAL;
	if (t->n_dims != 1 || t->shape[0] != (uint64_t)n)
		return ember_err(err, -EINVAL, "%s: tensor '%s' should have shape [%d]",
				 mf_origin(m->files), name, n);
	int cap = m->cap_vecs, cap_len = m->cap_vecs; /* two arrays of one length */
	if (!grow(&p->vecs, &cap, p->n_vecs, sizeof *p->vecs) ||
	    !grow(&p->vec_len, &cap_len, p->n_vecs, sizeof *p->vec_len))
		return ember_err(err, -ENOMEM, "out of memory");
	m->cap_vecs = cap;
	float *v = malloc((size_t)n * sizeof *v);
	if (!v)
		return ember_err(err, -ENOMEM, "out of memory");
	for (int i = 0; i < n; i++)
		v[i] = dtype_load_f32(t->dtype, t->data, (size_t)i);
	p->vecs[p->n_vecs] = v;
	p->vec_len[p->n_vecs] = n;
	return p->n_vecs++;
}

int rb_weight(struct model *m, int cols, char *err)
{
	struct program *p = &m->prog;
	if (!grow(&p->weights, &m->cap_weights, p->n_weights, sizeof *p->weights))
		return ember_err(err, -ENOMEM, "out of memory");
	p->weights[p->n_weights] = (struct weight){.cols = cols, .alias = -1};
	return p->n_weights++;
}

int rb_part(struct model *m, int w, const char *name, int rows, const char *bias_name, char *err)
{
	struct weight *W = &m->prog.weights[w];
	if (W->n_parts == PROG_MAX_PARTS)
		return ember_err(err, -EINVAL, "%s: more than %d parts", name, PROG_MAX_PARTS);
	const struct st_tensor *t = find(m, name, err);
	if (!t)
		return -EINVAL;
	if (t->n_dims != 2 || t->shape[0] != (uint64_t)rows || t->shape[1] != (uint64_t)W->cols)
		return ember_err(err, -EINVAL, "%s: tensor '%s' should have shape [%d, %d]",
				 mf_origin(m->files), name, rows, W->cols);
	const float *bias = NULL;
	if (bias_name) {
		int v = rb_vector(m, bias_name, rows, err);
		if (v < 0)
			return v;
		bias = m->prog.vecs[v];
	}
	W = &m->prog.weights[w];
	W->part[W->n_parts] = (struct wdesc){t->dtype, t->data, rows, W->cols, NULL, DT_F32, 0, 0};
	W->bias[W->n_parts] = bias;
	W->n_parts++;
	W->rows += rows;
	return 0;
}

int rb_alias(struct model *m, int other, char *err)
{
	int w = rb_weight(m, m->prog.weights[other].cols, err);
	if (w >= 0) {
		m->prog.weights[w] = m->prog.weights[other];
		m->prog.weights[w].alias = other;
	}
	return w;
}

int rb_buffer(struct model *m, int width, char *err)
{
	struct program *p = &m->prog;
	if (!grow(&p->bufs, &m->cap_bufs, p->n_bufs, sizeof *p->bufs))
		return ember_err(err, -ENOMEM, "out of memory");
	p->bufs[p->n_bufs] = (struct buffer){.width = width};
	return p->n_bufs++;
}

static int rb_op(struct model *m, struct op op, char *err)
{
	struct program *p = &m->prog;
	if (!grow(&p->ops, &m->cap_ops, p->n_ops, sizeof *p->ops))
		return ember_err(err, -ENOMEM, "out of memory");
	p->ops[p->n_ops] = op;
	return p->n_ops++;
}

int rb_embed(struct model *m, int w, int out, char *err)
{
	return rb_op(m, (struct op){OP_EMBED, out, OP_NONE, OP_NONE, OP_NONE, w, 0}, err);
}

int rb_rmsnorm(struct model *m, int x, int add, int vec, int out, char *err)
{
	return rb_op(m, (struct op){OP_RMSNORM, out, OP_NONE, add, x, vec, 0}, err);
}

int rb_gemm(struct model *m, int in, int w, int out, char *err)
{
	return rb_op(m, (struct op){OP_GEMM, out, in, OP_NONE, OP_NONE, w, 0}, err);
}

int rb_rope_kv(struct model *m, int qkv, int layer, char *err)
{
	return rb_op(m, (struct op){OP_ROPE_KV, OP_NONE, OP_NONE, OP_NONE, qkv, OP_NONE, layer}, err);
}

int rb_attention(struct model *m, int qkv, int layer, int out, char *err)
{
	return rb_op(m, (struct op){OP_ATTENTION, out, OP_NONE, OP_NONE, qkv, OP_NONE, layer}, err);
}

int rb_swiglu(struct model *m, int in, int out, char *err)
{
	return rb_op(m, (struct op){OP_SWIGLU, out, in, OP_NONE, OP_NONE, OP_NONE, 0}, err);
}

void rb_head(struct model *m)
{
	m->prog.n_body = m->prog.n_ops;
}

/* ---- checking ------------------------------------------------------------ */

/* The width of buffer b, or -1 when b is not one (OP_NONE). */
static int width(const struct program *p, int b)
{
	return b >= 0 && b < p->n_bufs ? p->bufs[b].width : -1;
}

static int check_op(const struct model *m, int i, char *err)
{
	const struct program *p = &m->prog;
	const struct op *o = &p->ops[i];
	const struct attn_shape *a = &p->attn;
	int qkv = (a->n_heads + 2 * a->n_kv_heads) * a->head_dim;
	bool head = i >= p->n_body;
	int out = o->out == OP_LOGITS && head ? m->cfg.vocab : width(p, o->out);
	bool ok;
	switch (o->kind) {
	case OP_EMBED:
		ok = !head && o->w >= 0 && o->w < p->n_weights && p->weights[o->w].n_parts == 1 &&
		     out == p->weights[o->w].cols;
		break;
	case OP_RMSNORM:
		ok = o->w >= 0 && o->w < p->n_vecs && width(p, o->x) == p->vec_len[o->w] &&
		     out == p->vec_len[o->w] && (o->add == OP_NONE || width(p, o->add) == out);
		break;
	case OP_GEMM:
		ok = o->w >= 0 && o->w < p->n_weights && p->weights[o->w].n_parts > 0 &&
		     width(p, o->in) == p->weights[o->w].cols && out == p->weights[o->w].rows;
		break;
	case OP_ROPE_KV:
		ok = !head && width(p, o->x) == qkv && o->layer >= 0 && o->layer < p->kv.n_layers;
		break;
	case OP_ATTENTION:
		ok = !head && width(p, o->x) == qkv && out == a->n_heads * a->head_dim &&
		     o->layer >= 0 && o->layer < p->kv.n_layers;
		break;
	case OP_SWIGLU:
		ok = out > 0 && width(p, o->in) == 2 * out;
		break;
	default:
		ok = false;
	}
	if (!ok)
		return ember_err(err, -EINVAL, "%s: the program's op %d (kind %d) does not fit its "
					       "buffers or weights", m->cfg.arch_name, i, (int)o->kind);
	return 0;
}

int rb_finish(struct model *m, char *err)
{
	struct program *p = &m->prog;
	if (p->n_body <= 0 || p->n_body >= p->n_ops || p->ops[p->n_body].kind != OP_RMSNORM ||
	    p->ops[p->n_ops - 1].out != OP_LOGITS)
		return ember_err(err, -EINVAL, "%s: the program has no body or no head ending in the "
					       "logits", m->cfg.arch_name);
	for (int i = 0; i < p->n_ops; i++) {
		int rc = check_op(m, i, err);
		if (rc < 0)
			return rc;
		const struct op *o = &p->ops[i];
		if (o->out == OP_LOGITS && i != p->n_ops - 1)
			return ember_err(err, -EINVAL, "%s: op %d writes the logits before the end",
					 m->cfg.arch_name, i);
		/* One embedding row is read per token; a gemm's matrix whole. */
		if (o->kind == OP_EMBED)
			m->weight_bytes += (size_t)p->weights[o->w].cols *
					   dtype_size(p->weights[o->w].part[0].dtype);
		if (o->kind == OP_GEMM) {
			p->bufs[o->in].gemm_in = true;
			for (int k = 0; k < p->weights[o->w].n_parts; k++)
				m->weight_bytes += wdesc_bytes(&p->weights[o->w].part[k]);
		}
	}
	return 0;
}
