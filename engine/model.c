/* Binding the tensors of a Llama / Qwen2 checkpoint to the model's layers. */
#include "model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

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

static int get_matrix(const struct model *m, const char *name, int rows, int cols,
		      struct tview *out, char *err)
{
	const struct st_tensor *t = find(m, name, err);
	if (!t)
		return -EINVAL;
	if (t->n_dims != 2 || t->shape[0] != (uint64_t)rows || t->shape[1] != (uint64_t)cols)
		return ember_err(err, -EINVAL, "%s: tensor '%s' should have shape [%d, %d]",
				 mf_origin(m->files), name, rows, cols);
	out->dtype = t->dtype;
	out->data = t->data;
	out->rows = rows;
	out->cols = cols;
	return 0;
}

/* Converts the vector tensor name of n elements into dst. */
static int get_vector(const struct model *m, const char *name, int n, float *dst, char *err)
{
	const struct st_tensor *t = find(m, name, err);
	if (!t)
		return -EINVAL;
	if (t->n_dims != 1 || t->shape[0] != (uint64_t)n)
		return ember_err(err, -EINVAL, "%s: tensor '%s' should have shape [%d]",
				 mf_origin(m->files), name, n);
	for (int i = 0; i < n; i++)
		dst[i] = dtype_load_f32(t->dtype, t->data, (size_t)i);
	return 0;
}

static size_t tview_bytes(const struct tview *t)
{
	return (size_t)t->rows * (size_t)t->cols * dtype_size(t->dtype);
}

static int bind_layer(struct model *m, int l, float **small, char *err)
{
	const struct model_config *c = &m->cfg;
	struct layer_weights *L = &m->layers[l];
	int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
	char n[128];
	int rc;
#define NAME(suffix) (snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix), n)
#define VEC(field, suffix, len)                                                \
	do {                                                                   \
		if ((rc = get_vector(m, NAME(suffix), len, *small, err)) < 0)  \
			return rc;                                             \
		L->field = *small;                                             \
		*small += (len);                                               \
	} while (0)
#define MAT(field, suffix, r, cdim)                                            \
	do {                                                                   \
		if ((rc = get_matrix(m, NAME(suffix), r, cdim, &L->field, err)) < 0) \
			return rc;                                             \
		m->weight_bytes += tview_bytes(&L->field);                     \
	} while (0)
	VEC(attn_norm, "input_layernorm.weight", c->hidden);
	VEC(mlp_norm, "post_attention_layernorm.weight", c->hidden);
	MAT(wq, "self_attn.q_proj.weight", q_dim, c->hidden);
	MAT(wk, "self_attn.k_proj.weight", kv_dim, c->hidden);
	MAT(wv, "self_attn.v_proj.weight", kv_dim, c->hidden);
	MAT(wo, "self_attn.o_proj.weight", c->hidden, q_dim);
	MAT(wgate, "mlp.gate_proj.weight", c->intermediate, c->hidden);
	MAT(wup, "mlp.up_proj.weight", c->intermediate, c->hidden);
	MAT(wdown, "mlp.down_proj.weight", c->hidden, c->intermediate);
	if (c->attn_bias) {
		VEC(bq, "self_attn.q_proj.bias", q_dim);
		VEC(bk, "self_attn.k_proj.bias", kv_dim);
		VEC(bv, "self_attn.v_proj.bias", kv_dim);
	}
	if (c->attn_out_bias)
		VEC(bo, "self_attn.o_proj.bias", c->hidden);
	if (c->mlp_bias) {
		VEC(bgate, "mlp.gate_proj.bias", c->intermediate);
		VEC(bup, "mlp.up_proj.bias", c->intermediate);
		VEC(bdown, "mlp.down_proj.bias", c->hidden);
	}
#undef MAT
#undef VEC
#undef NAME
	return 0;
}

int model_open(struct mfiles *mf, struct model **out, char *err)
{
	*out = NULL;
	struct model *m = calloc(1, sizeof *m);
	if (!m) {
		mf_close(mf);
		return ember_err(err, -ENOMEM, "out of memory");
	}
	m->files = mf;
	const uint8_t *buf;
	size_t len;
	char why[EMBER_ERR_LEN];
	int rc = mf_get(mf, "config.json", &buf, &len, err);
	if (rc < 0)
		goto fail;
	if ((rc = cfg_parse(buf, len, &m->cfg, why)) < 0) {
		ember_err(err, rc, "%s/%s", mf_origin(mf), why);
		goto fail;
	}
	m->gen = (struct gen_defaults){.temperature = -1, .top_p = -1, .top_k = -1,
				       .repetition_penalty = -1};
	rc = mf_get(mf, "generation_config.json", &buf, &len, why);
	if (rc == 0 && (rc = gen_parse(buf, len, &m->gen, why)) < 0) {
		ember_err(err, rc, "%s/%s", mf_origin(mf), why);
		goto fail;
	}
	if (rc < 0 && rc != -ENOENT) {
		ember_err(err, rc, "%s", why);
		goto fail;
	}
	for (int i = 0; i < m->cfg.n_eos + m->gen.n_eos; i++) {
		int32_t id = i < m->cfg.n_eos ? m->cfg.eos_ids[i] : m->gen.eos_ids[i - m->cfg.n_eos];
		bool seen = false;
		for (int k = 0; k < m->n_stop_ids; k++)
			seen |= m->stop_ids[k] == id;
		if (!seen)
			m->stop_ids[m->n_stop_ids++] = id;
	}
	if ((rc = wts_open(mf, &m->weights, err)) < 0)
		goto fail;
	const struct model_config *c = &m->cfg;
	int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
	/* Norms, and biases when the architecture has them, per layer. */
	size_t per_layer = 2 * (size_t)c->hidden + (size_t)q_dim + 2 * (size_t)kv_dim +
			   (size_t)c->hidden + 2 * (size_t)c->intermediate + (size_t)c->hidden;
	m->small = malloc(((size_t)c->n_layers * per_layer + (size_t)c->hidden) * sizeof(float));
	m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
	if (!m->small || !m->layers) {
		rc = ember_err(err, -ENOMEM, "out of memory");
		goto fail;
	}
	float *small = m->small;
	if ((rc = get_matrix(m, "model.embed_tokens.weight", c->vocab, c->hidden, &m->embed, err)) < 0)
		goto fail;
	if ((rc = get_vector(m, "model.norm.weight", c->hidden, small, err)) < 0)
		goto fail;
	m->final_norm = small;
	small += c->hidden;
	for (int l = 0; l < c->n_layers; l++)
		if ((rc = bind_layer(m, l, &small, err)) < 0)
			goto fail;
	if (c->tie_embeddings)
		m->lm_head = m->embed;
	else if ((rc = get_matrix(m, "lm_head.weight", c->vocab, c->hidden, &m->lm_head, err)) < 0)
		goto fail;
	/* One embedding row is read per token; the LM head is read whole. */
	m->weight_bytes += tview_bytes(&m->lm_head) +
			   (size_t)c->hidden * dtype_size(m->embed.dtype);
	*out = m;
	return 0;
fail:
	model_close(m);
	return rc;
}

int model_open_dir(const char *dir, struct model **out, char *err)
{
	struct mfiles *mf;
	int rc = mf_open_dir(dir, &mf, err);
	if (rc < 0) {
		*out = NULL;
		return rc;
	}
	return model_open(mf, out, err);
}

void model_close(struct model *m)
{
	if (!m)
		return;
	wts_close(m->weights);
	mf_close(m->files);
	free(m->layers);
	free(m->small);
	free(m);
}

void model_sampling_defaults(const struct model *m, struct sampler_params *p)
{
	const struct gen_defaults *g = &m->gen;
	sampler_params_default(p);
	p->temperature = 0;
	if (g->have_sampling && g->do_sample)
		p->temperature = g->temperature >= 0 ? g->temperature : 1.0f;
	if (g->top_p > 0)
		p->top_p = g->top_p;
	if (g->top_k >= 0)
		p->top_k = g->top_k;
	if (g->repetition_penalty > 0)
		p->repetition_penalty = g->repetition_penalty;
}
