/* A loaded model: its config, and its program as its recipe built it: a
 * view of every weight (checked for name, dtype and shape) and the layers
 * as operations. Owns the model files and the tensor table; computes
 * nothing (backends do). Runs in the worker. */
#ifndef EMBER_MODEL_H
#define EMBER_MODEL_H

#include "config.h"
#include "modelfiles.h"
#include "program.h"
#include "sampler.h"
#include "weights.h"

struct model {
	struct model_config cfg;
	struct gen_defaults gen;   /* generation_config.json; all "not given" without one */
	struct mfiles *files;
	struct weights *weights;
	struct program prog;       /* the recipe's: weights, buffers, operations
	                            * (its vectors malloc'd, each converted to f32) */
	int cap_ops, cap_bufs, cap_weights, cap_vecs; /* prog's arrays, while building */
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
