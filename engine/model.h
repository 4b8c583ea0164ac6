/* A loaded model: its config and a view of every weight, checked for name,
 * dtype and shape. Owns the model files and the tensor table; computes
 * nothing (backends do). Runs in the worker. */
#ifndef EMBER_MODEL_H
#define EMBER_MODEL_H

#include "config.h"
#include "modelfiles.h"
#include "sampler.h"
#include "weights.h"

/* A 2-D weight stored row-major as (rows, cols) of dtype, in the model file. */
struct tview {
	enum dtype dtype;
	const void *data;
	int rows, cols;
};

struct layer_weights {
	const float *attn_norm;    /* (hidden) f32 */
	struct tview wq;           /* (n_heads * head_dim, hidden) */
	struct tview wk, wv;       /* (n_kv_heads * head_dim, hidden) */
	struct tview wo;           /* (hidden, n_heads * head_dim) */
	const float *bq, *bk, *bv; /* (q_dim), (kv_dim), (kv_dim) f32, or NULL */
	const float *bo;           /* (hidden) f32 or NULL */
	const float *mlp_norm;     /* (hidden) f32 */
	struct tview wgate, wup;   /* (intermediate, hidden) */
	struct tview wdown;        /* (hidden, intermediate) */
	const float *bgate, *bup, *bdown; /* or NULL */
};

struct model {
	struct model_config cfg;
	struct gen_defaults gen;   /* generation_config.json; all "not given" without one */
	struct mfiles *files;
	struct weights *weights;
	struct tview embed;        /* (vocab, hidden) */
	struct tview lm_head;      /* (vocab, hidden); the embedding when tied */
	const float *final_norm;   /* (hidden) f32 */
	struct layer_weights *layers; /* (n_layers) */
	float *small;              /* norms and biases converted to f32, one block */
	size_t weight_bytes;       /* bytes of the matrices read per token */
	int32_t stop_ids[2 * CFG_MAX_EOS]; /* end-of-sequence ids of config.json and
	                                    * generation_config.json, each once */
	int n_stop_ids;
};

/* Opens the model directory dir: config.json and its safetensors. Returns 0
 * and a model (free with model_close) or a negative errno with err naming
 * the file, tensor or field at fault; nothing is left open on failure. */
int model_open_dir(const char *dir, struct model **out, char *err);

/* The same from already opened files; takes ownership of mf in all cases. */
int model_open(struct mfiles *mf, struct model **out, char *err);

void model_close(struct model *m);

/* Fills p with the defaults a request gets from the model's
 * generation_config.json: greedy unless it says do_sample, then its
 * temperature, top_p, top_k and repetition_penalty; OpenAI's defaults for
 * the rest. */
void model_sampling_defaults(const struct model *m, struct sampler_params *p);

#endif
