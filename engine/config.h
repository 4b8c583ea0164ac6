/* config.json of a Hugging Face model: the fields the Llama and Qwen2
 * architectures use, checked and bounded. Does not look at weights. Runs in
 * the worker and the supervisor. */
#ifndef EMBER_CONFIG_H
#define EMBER_CONFIG_H

#include "common.h"

#define CFG_MAX_EOS 8

enum arch { ARCH_LLAMA, ARCH_QWEN2 };
enum rope_kind { ROPE_DEFAULT, ROPE_LINEAR, ROPE_LLAMA3 };

struct model_config {
	enum arch arch;
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
	bool attn_bias;         /* q/k/v biases (Qwen2 always; Llama attention_bias) */
	bool attn_out_bias;     /* o_proj bias (Llama attention_bias) */
	bool mlp_bias;          /* Llama mlp_bias */
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

/* The rotary tables of every backend: cos and sin of position p times each
 * inv_freq, (max_ctx, head_dim / 2) each, with inv_freq as transformers
 * computes it in float32 and the config's rope_scaling applied. */
void cfg_rope_tables(const struct model_config *c, int max_ctx, float *cosv, float *sinv);

#endif
