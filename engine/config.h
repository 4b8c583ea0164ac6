/* config.json of a Hugging Face model: the fields every architecture uses,
 * checked and bounded, and through its recipe (engine/arch/) the fields of
 * its family. Does not look at weights. Runs in the worker and the
 * supervisor. */
#ifndef EMBER_CONFIG_H
#define EMBER_CONFIG_H

#include "arch/params.h"
#include "common.h"

#define CFG_MAX_EOS 8

struct recipe;
struct json_t;

enum rope_kind { ROPE_DEFAULT, ROPE_LINEAR, ROPE_LLAMA3 };

struct model_config {
	const struct recipe *recipe; /* the family's, chosen by architectures[0] */
	char arch_name[64];
	int hidden;             /* hidden_size */
	int n_layers;           /* num_hidden_layers */
	int n_heads;            /* num_attention_heads */
	int n_kv_heads;         /* num_key_value_heads (default n_heads) */
	int head_dim;           /* head_dim, else hidden / n_heads */
	int intermediate;       /* intermediate_size */
	int vocab;              /* vocab_size */
	int max_pos;            /* max_position_embeddings */
	float rms_eps;          /* rms_norm_eps */
	double rope_theta;
	enum rope_kind rope;
	double rope_factor;     /* linear and llama3 */
	double rope_low_freq_factor, rope_high_freq_factor; /* llama3 */
	int rope_orig_max_pos;  /* llama3: original_max_position_embeddings */
	bool tie_embeddings;    /* tie_word_embeddings */
	union arch_params p;    /* the family's own fields (its recipe reads them) */
	enum dtype dtype;       /* torch_dtype / dtype, informational */
	int bos_id;             /* -1 when absent */
	int eos_ids[CFG_MAX_EOS];
	int n_eos;
};

/* What generation_config.json says, where it says it. */
struct gen_defaults {
	bool have_sampling;     /* do_sample given */
	bool do_sample;
	float temperature;      /* < 0: not given */
	float top_p;            /* < 0: not given */
	int top_k;              /* < 0: not given */
	float repetition_penalty; /* < 0: not given */
	int eos_ids[CFG_MAX_EOS];
	int n_eos;
};

/* Parses generation_config.json held in buf[0..len). Returns 0 or -EINVAL
 * with err naming the field; *g is fully written only on success. */
int gen_parse(const uint8_t *buf, size_t len, struct gen_defaults *g, char *err);

/* Parses config.json held in buf[0..len). Unsupported architectures, rope
 * scaling types and features are errors that name them. Returns 0 or -EINVAL
 * with err set; *c is fully written only on success. */
int cfg_parse(const uint8_t *buf, size_t len, struct model_config *c, char *err);

/* The readers of config.json's fields, for the recipes' configure: each
 * takes an optional field of object o (cfg_need_int: a required one),
 * checks its type and range [lo, hi], and returns 1 when present (0 when
 * absent or null, the output then untouched), or -EINVAL with err naming
 * the field. cfg_need_int returns 0 when present. */
int cfg_get_int(struct json_t *o, const char *key, long long lo, long long hi, int *out,
		char *err);
int cfg_need_int(struct json_t *o, const char *key, long long lo, long long hi, int *out,
		 char *err);
int cfg_get_num(struct json_t *o, const char *key, double lo, double hi, double *out, char *err);
int cfg_get_bool(struct json_t *o, const char *key, bool *out, char *err);

/* The rotary tables of every backend: cos and sin of position p times each
 * inv_freq, (max_ctx, head_dim / 2) each, with inv_freq as transformers
 * computes it in float32 and the config's rope_scaling applied. */
void cfg_rope_tables(const struct model_config *c, int max_ctx, float *cosv, float *sinv);

#endif
