/* Opening a model: its config, its generation defaults, its tensors, and
 * the program its recipe builds from them. */
#include "model.h"

#include "recipe.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

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
	if ((rc = m->cfg.recipe->build(m, err)) < 0 || (rc = rb_finish(m, err)) < 0)
		goto fail;
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
	struct program *p = &m->prog;
	for (int i = 0; i < p->n_vecs; i++)
		free((void *)p->vecs[i]);
	free(p->vecs);
	free(p->vec_len);
	free(p->weights);
	free(p->bufs);
	free(p->ops);
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
