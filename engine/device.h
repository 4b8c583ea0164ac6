/* The engine's devices: each backend registers one (a name, how many of
 * it are visible, its KV block size and how to create it) and the worker,
 * the tests and the benchmarks choose among them by name, knowing nothing
 * of any one backend. The CPU's is in engine/cpu.c; the CUDA one, in a
 * build with CUDA, in kernels/backend.cu. Runs in the thread that creates
 * the backend. */
#ifndef EMBER_DEVICE_H
#define EMBER_DEVICE_H

#include "backend.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

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
	int threads;        /* CPU threads (0: one per processor) */
	int gpu;            /* GPU index (CUDA_VISIBLE_DEVICES picks which) */
	int max_tokens, max_seqs, max_ctx;
	/* > 0: a pool of this many KV blocks for bound tables; 0: each
	 * sequence its own max_ctx; < 0: a pool sized by the device (on the
	 * CPU: max_seqs * max_ctx positions; on a GPU: gpu_memory_fraction of
	 * the memory free once the model is in). */
	int kv_blocks;
	double gpu_memory_fraction;
	struct device_stats *stats; /* filled when not NULL */
};

struct device {
	const char *name;   /* what --device calls it: "cpu", "cuda" */
	/* Devices of this kind visible now (0 without a driver: not an error). */
	int (*count)(void);
	/* Bytes of one KV cache block for model m. */
	size_t (*kv_block_bytes)(const struct model *m);
	/* Creates the backend over m (which must outlive it). Returns 0 or a
	 * negative errno with err set, -ENODEV when none is visible. */
	int (*create)(const struct model *m, const struct device_opts *o, struct backend **out,
		      char *err);
};

extern const struct device cpu_device;
extern const struct device cuda_device; /* only in a build with CUDA (EMBER_CUDA) */

/* The device that --device s names, into *out: NULL for "auto". Returns 0,
 * or -1 with err saying which names there are, or that this build has no
 * such backend. */
int device_parse(const char *s, const struct device **out, char *err);

/* The device that d (NULL: auto) comes to on this machine: auto is the
 * first registered device with one visible, the CPU last. */
const struct device *device_resolve(const struct device *d);

/* Creates the backend on d (NULL: auto). Returns 0 or a negative errno
 * with err set: a device asked for and not visible is an error that says
 * so (nothing falls back silently). */
int device_backend_create(const struct device *d, const struct model *m,
			  const struct device_opts *o, struct backend **out, char *err);

#ifdef __cplusplus
}
#endif

#endif
