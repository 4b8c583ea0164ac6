/* Tensor lookup over one or more safetensors shards. */
#include "weights.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
#define MAX_SHARDS 4096

struct weights {
	struct st_file *shards;
	size_t n_shards;
};

static void free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

int wts_parse_index(const uint8_t *buf, size_t len, char ***files, size_t *n_files,
		    void **map, char *err)
{
	*files = NULL;
	*n_files = 0;
	if (map)
		*map = NULL;
	json_error_t je;
	json_t *root = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return ember_err(err, -EINVAL, INDEX_NAME ": %s (line %d)", je.text, je.line);
	int rc = -EINVAL;
	char **names = NULL;
	size_t n = 0;
	json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
	if (!json_is_object(wm)) {
		ember_err(err, rc, INDEX_NAME ": no weight_map object");
		goto fail;
	}
	const char *key;
	json_t *v;
	json_object_foreach(wm, key, v) {
		if (!json_is_string(v)) {
			ember_err(err, rc, INDEX_NAME ": weight_map[\"%.64s\"] is not a string", key);
			goto fail;
		}
		const char *fname = json_string_value(v);
		size_t fl = strlen(fname);
		if (fl == 0 || fl > MF_MAX_NAME || strchr(fname, '/') || fl != json_string_length(v)) {
			ember_err(err, rc, INDEX_NAME ": shard name '%.64s' is not a plain file name",
				  fname);
			goto fail;
		}
		size_t i;
		for (i = 0; i < n; i++)
			if (strcmp(names[i], fname) == 0)
				break;
		if (i < n)
			continue;
		if (n == MAX_SHARDS) {
			ember_err(err, rc, INDEX_NAME ": more than %d shards", MAX_SHARDS);
			goto fail;
		}
		char **nn = realloc(names, (n + 1) * sizeof *nn);
		if (!nn || !(nn[n] = strdup(fname))) {
			if (nn)
				names = nn;
			rc = ember_err(err, -ENOMEM, "out of memory");
			goto fail;
		}
		names = nn;
		n++;
	}
	if (n == 0) {
		ember_err(err, rc, INDEX_NAME ": weight_map is empty");
		goto fail;
	}
	*files = names;
	*n_files = n;
	if (map)
		*map = json_incref(wm);
	json_decref(root);
	return 0;
fail:
	free_names(names, n);
	json_decref(root);
	return rc;
}

static int open_shard(struct mfiles *mf, const char *name, struct st_file *out, char *err)
{
	const uint8_t *data;
	size_t len;
	int rc = mf_get(mf, name, &data, &len, err);
	if (rc < 0)
		return rc;
	char why[EMBER_ERR_LEN];
	rc = st_parse(data, len, out, why);
	if (rc < 0)
		return ember_err(err, rc, "%s/%s: %s", mf_origin(mf), name, why);
	return 0;
}

int wts_open(struct mfiles *mf, struct weights **out, char *err)
{
	*out = NULL;
	struct weights *w = calloc(1, sizeof *w);
	if (!w)
		return ember_err(err, -ENOMEM, "out of memory");
	const uint8_t *idx;
	size_t idx_len;
	char why[EMBER_ERR_LEN];
	char **names = NULL;
	size_t n_names = 0;
	json_t *map = NULL;
	int rc = mf_get(mf, INDEX_NAME, &idx, &idx_len, why);
	if (rc == -ENOENT) {
		w->shards = calloc(1, sizeof *w->shards);
		if (!w->shards) {
			rc = ember_err(err, -ENOMEM, "out of memory");
			goto fail;
		}
		w->n_shards = 1;
		if ((rc = open_shard(mf, SINGLE_NAME, &w->shards[0], err)) < 0)
			goto fail;
		*out = w;
		return 0;
	}
	if (rc < 0) {
		ember_err(err, rc, "%s", why);
		goto fail;
	}
	if ((rc = wts_parse_index(idx, idx_len, &names, &n_names, (void **)&map, why)) < 0) {
		ember_err(err, rc, "%s/%s", mf_origin(mf), why);
		goto fail;
	}
	w->shards = calloc(n_names, sizeof *w->shards);
	if (!w->shards) {
		rc = ember_err(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < n_names; i++) {
		if ((rc = open_shard(mf, names[i], &w->shards[i], err)) < 0)
			goto fail;
		w->n_shards = i + 1;
	}
	const char *key;
	json_t *v;
	json_object_foreach(map, key, v) {
		size_t i;
		for (i = 0; i < n_names; i++)
			if (strcmp(names[i], json_string_value(v)) == 0)
				break;
		if (!st_find(&w->shards[i], key)) {
			rc = ember_err(err, -EINVAL, "%s/%s lists tensor '%s' in %s, which lacks it",
				       mf_origin(mf), INDEX_NAME, key, names[i]);
			goto fail;
		}
	}
	json_decref(map);
	free_names(names, n_names);
	*out = w;
	return 0;
fail:
	json_decref(map);
	free_names(names, n_names);
	wts_close(w);
	return rc;
}

void wts_close(struct weights *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->n_shards; i++)
		st_free(&w->shards[i]);
	free(w->shards);
	free(w);
}

const struct st_tensor *wts_find(const struct weights *w, const char *name)
{
	for (size_t i = 0; i < w->n_shards; i++) {
		const struct st_tensor *t = st_find(&w->shards[i], name);
		if (t)
			return t;
	}
	return NULL;
}

size_t wts_bytes(const struct weights *w)
{
	size_t n = 0;
	for (size_t i = 0; i < w->n_shards; i++)
		for (size_t j = 0; j < w->shards[i].n_tensors; j++)
			n += w->shards[i].tensors[j].nbytes;
	return n;
}
