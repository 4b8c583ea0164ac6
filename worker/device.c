/* The choice of backend (device.h). */
#include "device.h"

#include "../engine/cpu.h"
#ifdef EMBER_CUDA
#include "../kernels/cuda.h"
#endif

#include <errno.h>
#include <stdio.h>
#include <string.h>

int device_parse(const char *s, enum device_kind *out)
{
	static const char *const names[] = {"auto", "cpu", "cuda"};
	for (int i = 0; i < 3; i++)
		if (strcmp(s, names[i]) == 0) {
			*out = (enum device_kind)i;
			return 0;
		}
	return -1;
}

enum device_kind device_resolve(enum device_kind k)
{
	if (k != DEVICE_AUTO)
		return k;
#ifdef EMBER_CUDA
	if (cuda_device_count() > 0)
		return DEVICE_CUDA;
#endif
	return DEVICE_CPU;
}

size_t device_kv_block_bytes(enum device_kind k, const struct model *m)
{
#ifdef EMBER_CUDA
	if (k == DEVICE_CUDA)
		return cuda_kv_block_bytes(m);
#endif
	(void)k;
	return cpu_kv_block_bytes(m);
}

int device_backend_create(const struct model *m, const struct device_opts *o,
			  struct backend **out, char *err)
{
	if (o->stats)
		*o->stats = (struct device_stats){0};
	enum device_kind k = device_resolve(o->kind);
	if (k == DEVICE_CUDA) {
#ifdef EMBER_CUDA
		struct cuda_opts co = {.device = o->gpu, .max_tokens = o->max_tokens,
				       .max_seqs = o->max_seqs, .max_ctx = o->max_ctx,
				       .kv_blocks = o->kv_blocks,
				       .gpu_memory_fraction = o->gpu_memory_fraction};
		struct cuda_load_stats st = {0};
		int rc = cuda_backend_create(m, &co, out, &st, err);
		if (o->stats) {
			*o->stats = (struct device_stats){.init_s = st.init_s, .upload_s = st.upload_s,
							  .upload_bytes = st.upload_bytes,
							  .graph_s = st.graph_s, .graphs = st.graphs};
			snprintf(o->stats->graph_error, sizeof o->stats->graph_error, "%s",
				 st.graph_error);
		}
		return rc;
#else
		*out = NULL;
		return ember_err(err, -ENOTSUP,
				 "this ember was built without CUDA (nvcc was not found at build "
				 "time); use --device cpu");
#endif
	}
	struct cpu_opts co = {.threads = o->threads, .max_tokens = o->max_tokens,
			      .max_seqs = o->max_seqs, .max_ctx = o->max_ctx,
			      .kv_blocks = o->kv_blocks};
	double t0 = ember_now();
	int rc = cpu_backend_create(m, &co, out, err);
	if (o->stats)
		o->stats->init_s = ember_now() - t0; /* the threads and buffers */
	return rc;
}
