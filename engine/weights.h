/* The tensors of a model: one safetensors file or several shards named by
 * model.safetensors.index.json, looked up by name. Does not interpret the
 * tensors (model.c does). Runs in the worker and the supervisor. */
#ifndef EMBER_WEIGHTS_H
#define EMBER_WEIGHTS_H

#include "modelfiles.h"
#include "safetensors.h"

struct weights;

/* Opens the model's safetensors files from mf (which must outlive the
 * result). Every shard's header is validated; with an index, every tensor it
 * lists must be in the shard it names. Returns 0 or a negative errno. */
int wts_open(struct mfiles *mf, struct weights **out, char *err);

void wts_close(struct weights *w);

/* The tensor called name, or NULL. */
const struct st_tensor *wts_find(const struct weights *w, const char *name);

/* Total bytes of tensor data over all shards. */
size_t wts_bytes(const struct weights *w);

/* Parses the text of model.safetensors.index.json: fills *files with the
 * distinct shard names (malloc'd array of malloc'd strings, *n_files long)
 * and, when map is not NULL, leaves the weight_map object in *map (a jansson
 * json_t *, caller decrefs). Exposed for the fuzz target. */
int wts_parse_index(const uint8_t *buf, size_t len, char ***files, size_t *n_files,
		    void **map, char *err);

#endif
