/* safetensors: parsing the untrusted header of one file held in memory.
 * Does not map files or look tensors up across shards (weights.c does).
 * Runs wherever the engine's model-file code runs (worker, supervisor). */
#ifndef EMBER_SAFETENSORS_H
#define EMBER_SAFETENSORS_H

#include "common.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u << 20) /* the reference implementation's cap */

struct st_tensor {
	const char *name;       /* NUL-terminated, owned by the st_file */
	enum dtype dtype;
	int n_dims;
	uint64_t shape[ST_MAX_DIMS];
	size_t n_elems;
	const uint8_t *data;    /* points into the caller's buffer */
	size_t nbytes;
};

struct st_file {
	struct st_tensor *tensors; /* sorted by name */
	size_t n_tensors;
	char *names;               /* one allocation for every name */
};

/* Parses a whole safetensors file held in buf[0..len). On success fills *out
 * (free it with st_free) and returns 0; its tensors point into buf, which must
 * outlive it. Every offset, size, shape and dtype is checked against len; on
 * failure returns -EINVAL with the reason in err and *out is left empty. */
int st_parse(const uint8_t *buf, size_t len, struct st_file *out, char *err);

void st_free(struct st_file *f);

/* Binary search by name; NULL when absent. */
const struct st_tensor *st_find(const struct st_file *f, const char *name);

#endif
