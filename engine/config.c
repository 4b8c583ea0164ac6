/* config.json parsing with jansson. Every number is range-checked so that
 * later size arithmetic cannot overflow: the limits are far above any real
 * model and far below what would wrap a size_t. */
#include "config.h"

#include "recipe.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>

#define MAX_DIM (1 << 20)
#define MAX_LAYERS 1024
#define MAX_HEADS 1024
#define MAX_HEAD_DIM 1024
#define MAX_VOCAB (1 << 22)
#define MAX_POS (1 << 24)

int cfg_get_int(json_t *o, const char *key, long long lo, long long hi, int *out, char *err)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v))
		return ember_err(err, -EINVAL, "config.json: %s is not an integer", key);
	json_int_t x = json_integer_value(v);
	if (x < lo || x > hi)
		return ember_err(err, -EINVAL, "config.json: %s = %lld is outside %lld..%lld", key,
				 (long long)x, lo, hi);
	*out = (int)x;
	return 1;
}

int cfg_need_int(json_t *o, const char *key, long long lo, long long hi, int *out, char *err)
{
	int rc = cfg_get_int(o, key, lo, hi, out, err);
	if (rc == 0)
		return ember_err(err, -EINVAL, "config.json: %s is missing", key);
	return rc < 0 ? rc : 0;
}

int cfg_get_num(json_t *o, const char *key, double lo, double hi, double *out, char *err)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_number(v))
		return ember_err(err, -EINVAL, "config.json: %s is not a number", key);
	double x = json_number_value(v);
	if (!(x >= lo && x <= hi))
		return ember_err(err, -EINVAL, "config.json: %s = %g is outside %g..%g", key, x, lo,
				 hi);
	*out = x;
	return 1;
}

int cfg_get_bool(json_t *o, const char *key, bool *out, char *err)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return ember_err(err, -EINVAL, "config.json: %s is not a boolean", key);
	*out = json_is_true(v);
	return 1;
}

static int parse_rope_scaling(json_t *root, struct model_config *c, char *err)
{
	json_t *rs = json_object_get(root, "rope_scaling");
	c->rope = ROPE_DEFAULT;
	if (!rs || json_is_null(rs))
		return 0;
	if (!json_is_object(rs))
		return ember_err(err, -EINVAL, "config.json: rope_scaling is not an object");
	json_t *t = json_object_get(rs, "rope_type");
	if (!t)
		t = json_object_get(rs, "type"); /* the older spelling */
	if (!json_is_string(t))
		return ember_err(err, -EINVAL, "config.json: rope_scaling has no rope_type");
	const char *type = json_string_value(t);
	int rc;
	if (strcmp(type, "default") == 0)
		return 0;
	if (strcmp(type, "linear") == 0) {
		c->rope = ROPE_LINEAR;
	} else if (strcmp(type, "llama3") == 0) {
		c->rope = ROPE_LLAMA3;
	} else {
		return ember_err(err, -EINVAL,
				 "config.json: rope_scaling type '%s' is not supported (linear, llama3 are)",
				 type);
	}
	if ((rc = cfg_get_num(rs, "factor", 1e-3, 1e6, &c->rope_factor, err)) <= 0)
		return rc < 0 ? rc : ember_err(err, -EINVAL, "config.json: rope_scaling.factor is missing");
	if (c->rope == ROPE_LINEAR)
		return 0;
	if ((rc = cfg_get_num(rs, "low_freq_factor", 1e-6, 1e6, &c->rope_low_freq_factor, err)) <= 0 ||
	    (rc = cfg_get_num(rs, "high_freq_factor", 1e-6, 1e6, &c->rope_high_freq_factor, err)) <= 0 ||
	    (rc = cfg_get_int(rs, "original_max_position_embeddings", 1, MAX_POS,
			  &c->rope_orig_max_pos, err)) <= 0)
		return rc < 0 ? rc
			      : ember_err(err, -EINVAL,
					  "config.json: llama3 rope_scaling needs low_freq_factor, "
					  "high_freq_factor and original_max_position_embeddings");
	if (c->rope_high_freq_factor <= c->rope_low_freq_factor)
		return ember_err(err, -EINVAL,
				 "config.json: rope_scaling.high_freq_factor must exceed low_freq_factor");
	return 0;
}

static int parse_token_ids(json_t *root, struct model_config *c, char *err)
{
	c->bos_id = -1;
	c->n_eos = 0;
	int rc = cfg_get_int(root, "bos_token_id", 0, MAX_VOCAB, &c->bos_id, err);
	if (rc < 0)
		return rc;
	json_t *e = json_object_get(root, "eos_token_id");
	if (!e || json_is_null(e))
		return 0;
	if (json_is_integer(e)) {
		return cfg_get_int(root, "eos_token_id", 0, MAX_VOCAB, &c->eos_ids[c->n_eos++], err) < 0
			       ? -EINVAL
			       : 0;
	}
	if (!json_is_array(e) || json_array_size(e) > CFG_MAX_EOS)
		return ember_err(err, -EINVAL,
				 "config.json: eos_token_id is not an integer or a list of at most %d",
				 CFG_MAX_EOS);
	for (size_t i = 0; i < json_array_size(e); i++) {
		json_t *x = json_array_get(e, i);
		if (!json_is_integer(x) || json_integer_value(x) < 0 ||
		    json_integer_value(x) > MAX_VOCAB)
			return ember_err(err, -EINVAL, "config.json: eos_token_id[%zu] is not a token id", i);
		c->eos_ids[c->n_eos++] = (int)json_integer_value(x);
	}
	return 0;
}

static int parse_root(json_t *root, struct model_config *c, char *err)
{
	if (!json_is_object(root))
		return ember_err(err, -EINVAL, "config.json: not a JSON object");
	json_t *archs = json_object_get(root, "architectures");
	json_t *a0 = json_is_array(archs) ? json_array_get(archs, 0) : NULL;
	if (!json_is_string(a0))
		return ember_err(err, -EINVAL, "config.json: architectures[0] is missing");
	snprintf(c->arch_name, sizeof c->arch_name, "%s", json_string_value(a0));
	c->recipe = recipe_find(c->arch_name);
	if (!c->recipe) {
		char names[256];
		recipe_names(names, sizeof names);
		return ember_err(err, -EINVAL, "config.json: architecture '%s' is not supported (%s are)",
				 c->arch_name, names);
	}

	int rc;
	if ((rc = cfg_need_int(root, "hidden_size", 1, MAX_DIM, &c->hidden, err)) < 0 ||
	    (rc = cfg_need_int(root, "num_hidden_layers", 1, MAX_LAYERS, &c->n_layers, err)) < 0 ||
	    (rc = cfg_need_int(root, "num_attention_heads", 1, MAX_HEADS, &c->n_heads, err)) < 0 ||
	    (rc = cfg_need_int(root, "intermediate_size", 1, MAX_DIM, &c->intermediate, err)) < 0 ||
	    (rc = cfg_need_int(root, "vocab_size", 1, MAX_VOCAB, &c->vocab, err)) < 0)
		return rc;
	c->n_kv_heads = c->n_heads;
	if ((rc = cfg_get_int(root, "num_key_value_heads", 1, MAX_HEADS, &c->n_kv_heads, err)) < 0)
		return rc;
	if (c->n_heads % c->n_kv_heads)
		return ember_err(err, -EINVAL,
				 "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d",
				 c->n_heads, c->n_kv_heads);
	c->head_dim = 0;
	if ((rc = cfg_get_int(root, "head_dim", 2, MAX_HEAD_DIM, &c->head_dim, err)) < 0)
		return rc;
	if (rc == 0) {
		if (c->hidden % c->n_heads)
			return ember_err(err, -EINVAL,
					 "config.json: hidden_size %d is not a multiple of num_attention_heads %d",
					 c->hidden, c->n_heads);
		c->head_dim = c->hidden / c->n_heads;
	}
	if (c->head_dim % 2 || c->head_dim > MAX_HEAD_DIM)
		return ember_err(err, -EINVAL, "config.json: head dimension %d must be even and at most %d",
				 c->head_dim, MAX_HEAD_DIM);
	c->max_pos = 2048;
	if ((rc = cfg_get_int(root, "max_position_embeddings", 1, MAX_POS, &c->max_pos, err)) < 0)
		return rc;
	double eps = 1e-6;
	if ((rc = cfg_get_num(root, "rms_norm_eps", 0, 1, &eps, err)) < 0)
		return rc;
	c->rms_eps = (float)eps;
	c->rope_theta = 10000.0;
	if ((rc = cfg_get_num(root, "rope_theta", 1, 1e12, &c->rope_theta, err)) < 0)
		return rc;
	if ((rc = parse_rope_scaling(root, c, err)) < 0)
		return rc;
	c->tie_embeddings = false;
	if ((rc = cfg_get_bool(root, "tie_word_embeddings", &c->tie_embeddings, err)) < 0)
		return rc;
	if ((rc = c->recipe->configure(root, c, err)) < 0)
		return rc;
	json_t *act = json_object_get(root, "hidden_act");
	if (act && !(json_is_string(act) && strcmp(json_string_value(act), "silu") == 0))
		return ember_err(err, -EINVAL, "config.json: hidden_act must be \"silu\"");
	json_t *dt = json_object_get(root, "torch_dtype");
	if (!dt)
		dt = json_object_get(root, "dtype");
	c->dtype = DT_BF16;
	if (dt && !json_is_null(dt)) {
		const char *s = json_is_string(dt) ? json_string_value(dt) : "";
		if (strcmp(s, "bfloat16") == 0)
			c->dtype = DT_BF16;
		else if (strcmp(s, "float16") == 0)
			c->dtype = DT_F16;
		else if (strcmp(s, "float32") == 0)
			c->dtype = DT_F32;
		else
			return ember_err(err, -EINVAL,
					 "config.json: torch_dtype '%s' is not supported "
					 "(bfloat16, float16, float32 are)",
					 s);
	}
	return parse_token_ids(root, c, err);
}

int cfg_parse(const uint8_t *buf, size_t len, struct model_config *out, char *err)
{
	json_error_t je;
	json_t *root = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return ember_err(err, -EINVAL, "config.json: %s (line %d)", je.text, je.line);
	struct model_config c;
	memset(&c, 0, sizeof c);
	int rc = parse_root(root, &c, err);
	json_decref(root);
	if (rc == 0)
		*out = c;
	return rc;
}

/* generation_config.json: a few sampling defaults and the stop ids. */
int gen_parse(const uint8_t *buf, size_t len, struct gen_defaults *out, char *err)
{
	json_error_t je;
	json_t *root = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return ember_err(err, -EINVAL, "generation_config.json: %s (line %d)", je.text, je.line);
	struct gen_defaults g = {.temperature = -1, .top_p = -1, .top_k = -1, .repetition_penalty = -1};
	int rc = -EINVAL;
	if (!json_is_object(root)) {
		ember_err(err, rc, "generation_config.json: not a JSON object");
		goto out;
	}
	json_t *v = json_object_get(root, "do_sample");
	if (v && !json_is_null(v)) {
		if (!json_is_boolean(v)) {
			ember_err(err, rc, "generation_config.json: do_sample is not a boolean");
			goto out;
		}
		g.have_sampling = true;
		g.do_sample = json_is_true(v);
	}
	static const struct {
		const char *key;
		double lo, hi;
	} nums[] = {{"temperature", 0, 100}, {"top_p", 0, 1}, {"repetition_penalty", 1e-6, 100}};
	float *dst[] = {&g.temperature, &g.top_p, &g.repetition_penalty};
	for (int i = 0; i < 3; i++) {
		v = json_object_get(root, nums[i].key);
		if (!v || json_is_null(v))
			continue;
		double x = json_is_number(v) ? json_number_value(v) : -1;
		if (!(x >= nums[i].lo && x <= nums[i].hi)) {
			ember_err(err, rc, "generation_config.json: %s must be a number in %g..%g",
				  nums[i].key, nums[i].lo, nums[i].hi);
			goto out;
		}
		*dst[i] = (float)x;
	}
	v = json_object_get(root, "top_k");
	if (v && !json_is_null(v)) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 24)) {
			ember_err(err, rc, "generation_config.json: top_k must be an integer in 0..2^24");
			goto out;
		}
		g.top_k = (int)json_integer_value(v);
	}
	v = json_object_get(root, "eos_token_id");
	if (json_is_integer(v))
		v = json_pack("[O]", v);
	else
		json_incref(v);
	if (v && !json_is_null(v)) {
		if (!json_is_array(v) || json_array_size(v) > CFG_MAX_EOS) {
			json_decref(v);
			ember_err(err, rc, "generation_config.json: eos_token_id is not an id or a list of at most %d",
				  CFG_MAX_EOS);
			goto out;
		}
		for (size_t i = 0; i < json_array_size(v); i++) {
			json_t *x = json_array_get(v, i);
			if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > MAX_VOCAB) {
				json_decref(v);
				ember_err(err, rc, "generation_config.json: eos_token_id[%zu] is not a token id", i);
				goto out;
			}
			g.eos_ids[g.n_eos++] = (int)json_integer_value(x);
		}
	}
	json_decref(v);
	*out = g;
	rc = 0;
out:
	json_decref(root);
	return rc;
}

/* inv_freq as transformers computes it in float32, with the rope_scaling of
 * the config applied (_compute_default / linear / llama3 parameters). */
void cfg_rope_tables(const struct model_config *c, int max_ctx, float *cosv, float *sinv)
{
	int half = c->head_dim / 2;
	float inv[512];
	for (int i = 0; i < half; i++) {
		float expo = (float)(2 * i) / (float)c->head_dim;
		inv[i] = 1.0f / powf((float)c->rope_theta, expo);
	}
	if (c->rope == ROPE_LINEAR) {
		for (int i = 0; i < half; i++)
			inv[i] /= (float)c->rope_factor;
	} else if (c->rope == ROPE_LLAMA3) {
		float factor = (float)c->rope_factor;
		float lo = (float)c->rope_low_freq_factor, hi = (float)c->rope_high_freq_factor;
		float old = (float)c->rope_orig_max_pos;
		float lo_wavelen = old / lo, hi_wavelen = old / hi;
		for (int i = 0; i < half; i++) {
			float wavelen = 2.0f * (float)M_PI / inv[i];
			float f = wavelen > lo_wavelen ? inv[i] / factor : inv[i];
			float smooth = (old / wavelen - lo) / (hi - lo);
			float smoothed = (1.0f - smooth) * f / factor + smooth * f;
			bool medium = !(wavelen < hi_wavelen) && !(wavelen > lo_wavelen);
			inv[i] = medium ? smoothed : f;
		}
	}
	for (int p = 0; p < max_ctx; p++) {
		for (int i = 0; i < half; i++) {
			float a = (float)p * inv[i];
			cosv[(size_t)p * half + i] = cosf(a);
			sinv[(size_t)p * half + i] = sinf(a);
		}
	}
}
