/* Which backend computes: the CPU (engine/cpu.h) or, in a build with CUDA,
 * a GPU (kernels/cuda.h). The worker, the tests and the benchmarks choose
 * here. Runs in the thread that creates the backend. */
#ifndef EMBER_DEVICE_H
#define EMBER_DEVICE_H

#include "../engine/backend.h"
#include "../engine/model.h"

enum device_kind {
	DEVICE_AUTO, /* CUDA when built with it and a GPU is visible, else the CPU */
	DEVICE_CPU,
	DEVICE_CUDA,
};

/* Where a backend's creation spent its time, for the cold-start log. */
struct device_stats {
	double init_s;       /* the device itself: CUDA's context and cuBLAS; the CPU's threads */
	double upload_s;     /* the weights to the GPU (0 on the CPU, which maps them) */
	size_t upload_bytes;
	double graph_s;      /* capturing the CUDA graphs */
	int graphs;          /* batch buckets captured */
	char graph_error[EMBER_ERR_LEN]; /* why capturing stopped early, or "" */
};

struct device_opts {
	enum device_kind kind;
	int threads;        /* CPU threads (0: one per processor) */
	int gpu;            /* CUDA device index (CUDA_VISIBLE_DEVICES picks which) */
	int max_tokens, max_seqs, max_ctx;
	/* > 0: a pool of this many KV blocks for bound tables; 0: each
	 * sequence its own max_ctx; < 0: a pool sized by the device (on the
	 * CPU: max_seqs * max_ctx positions; on a GPU: gpu_memory_fraction of
	 * the memory free once the model is in). */
	int kv_blocks;
	double gpu_memory_fraction;
	struct device_stats *stats; /* filled when not NULL */
};

/* Parses "auto", "cpu" or "cuda"; -1 for anything else. */
int device_parse(const char *s, enum device_kind *out);

/* The kind that o->kind (perhaps DEVICE_AUTO) comes to on this machine. */
enum device_kind device_resolve(enum device_kind k);

/* Bytes of one KV block on kind k (resolved) for model m. */
size_t device_kv_block_bytes(enum device_kind k, const struct model *m);

/* Creates the backend over m. Returns 0 or a negative errno with err set:
 * CUDA asked for in a build without it, or no GPU visible, is an error
 * that says so (nothing falls back silently). */
int device_backend_create(const struct model *m, const struct device_opts *o,
			  struct backend **out, char *err);

#endif
