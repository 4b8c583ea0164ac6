/* The CPU backend: the reference forward pass of Llama / Qwen2 models, with
 * F32 activations and KV cache over BF16, F16 or F32 weights. Runs in the
 * worker's engine thread and its thread pool. */
#ifndef EMBER_CPU_H
#define EMBER_CPU_H

#include "backend.h"
#include "model.h"

struct cpu_opts {
	int threads;    /* 0: one per processor */
	int max_tokens; /* entries per step; 0: 512 */
	int max_seqs;   /* 0: 1 */
	int max_ctx;    /* 0: min(max_position_embeddings, 4096) */
	int kv_blocks;  /* 0: max_seqs fixed runs of max_ctx positions, each
	                 * sequence using its own until a table is bound;
	                 * otherwise this many blocks for tables alone */
};

/* Bytes of one KV cache block for model m on the CPU backend. */
size_t cpu_kv_block_bytes(const struct model *m);

/* Creates a CPU backend over m (which must outlive it), allocating every
 * buffer the forward pass needs. Returns 0 or a negative errno with err set. */
int cpu_backend_create(const struct model *m, const struct cpu_opts *o, struct backend **out,
		       char *err);

#endif
