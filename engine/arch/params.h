/* The config.json fields of each family that the common ones (config.h)
 * do not cover, read by the family's recipe (its configure) and used by
 * its build. A new family adds its struct here. Runs in the worker and the
 * supervisor. */
#ifndef EMBER_ARCH_PARAMS_H
#define EMBER_ARCH_PARAMS_H

#include <stdbool.h>

/* Llama and Qwen2 (engine/arch/llama.c). */
struct llama_params {
	bool attn_bias;     /* q/k/v biases (Qwen2 always; Llama attention_bias) */
	bool attn_out_bias; /* o_proj bias (Llama attention_bias) */
	bool mlp_bias;      /* Llama mlp_bias */
};

union arch_params {
	struct llama_params llama;
};

#endif
