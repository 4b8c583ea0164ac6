/* safetensors header parsing. The header is untrusted: its length is bounded,
 * it must be a JSON object, and every tensor's dtype, shape and byte range is
 * checked, in size_t with overflow checks, before anything points into it. */
#include "safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>

static int cmp_tensor(const void *a, const void *b)
{
	return strcmp(((const struct st_tensor *)a)->name,
		      ((const struct st_tensor *)b)->name);
}

static int parse_tensor(const char *name, json_t *v, const uint8_t *data,
			size_t data_len, struct st_tensor *t, char *err)
{
	if (!json_is_object(v))
		return ember_err(err, -EINVAL, "tensor '%s': entry is not an object", name);
	json_t *jd = json_object_get(v, "dtype");
	json_t *js = json_object_get(v, "shape");
	json_t *jo = json_object_get(v, "data_offsets");
	if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo))
		return ember_err(err, -EINVAL,
				 "tensor '%s': needs dtype (string), shape and data_offsets (arrays)", name);
	int dt = dtype_from_name(json_string_value(jd));
	if (dt < 0)
		return ember_err(err, -EINVAL, "tensor '%s': unknown dtype '%s'", name,
				 json_string_value(jd));
	size_t nd = json_array_size(js);
	if (nd > ST_MAX_DIMS)
		return ember_err(err, -EINVAL, "tensor '%s': %zu dimensions (at most %d)", name,
				 nd, ST_MAX_DIMS);
	size_t n = 1;
	for (size_t i = 0; i < nd; i++) {
		json_t *d = json_array_get(js, i);
		if (!json_is_integer(d) || json_integer_value(d) < 0)
			return ember_err(err, -EINVAL, "tensor '%s': shape[%zu] is not a non-negative integer",
					 name, i);
		uint64_t dim = (uint64_t)json_integer_value(d);
		if (dim > SIZE_MAX || !size_mul(n, (size_t)dim, &n))
			return ember_err(err, -EINVAL, "tensor '%s': shape overflows", name);
		t->shape[i] = dim;
	}
	size_t nbytes;
	if (!size_mul(n, dtype_size((enum dtype)dt), &nbytes))
		return ember_err(err, -EINVAL, "tensor '%s': byte size overflows", name);
	if (json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
	    !json_is_integer(json_array_get(jo, 1)))
		return ember_err(err, -EINVAL, "tensor '%s': data_offsets must be two integers", name);
	json_int_t b = json_integer_value(json_array_get(jo, 0));
	json_int_t e = json_integer_value(json_array_get(jo, 1));
	if (b < 0 || e < b || (uint64_t)e > data_len)
		return ember_err(err, -EINVAL,
				 "tensor '%s': data_offsets [%lld, %lld] outside the %zu data bytes",
				 name, (long long)b, (long long)e, data_len);
	if ((uint64_t)(e - b) != nbytes)
		return ember_err(err, -EINVAL,
				 "tensor '%s': %lld bytes for %zu elements of %s", name,
				 (long long)(e - b), n, dtype_name((enum dtype)dt));
	t->dtype = (enum dtype)dt;
	t->n_dims = (int)nd;
	t->n_elems = n;
	t->data = data + b;
	t->nbytes = nbytes;
	return 0;
}

int st_parse(const uint8_t *buf, size_t len, struct st_file *out, char *err)
{
	memset(out, 0, sizeof *out);
	if (len < 8)
		return ember_err(err, -EINVAL, "file of %zu bytes is too short for a header", len);
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = (hlen << 8) | buf[i];
	if (hlen < 2 || hlen > ST_MAX_HEADER || hlen > len - 8)
		return ember_err(err, -EINVAL, "header length %llu is outside 2..%zu",
				 (unsigned long long)hlen,
				 len - 8 < ST_MAX_HEADER ? len - 8 : (size_t)ST_MAX_HEADER);
	const uint8_t *data = buf + 8 + hlen;
	size_t data_len = len - 8 - (size_t)hlen;

	json_error_t je;
	json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return ember_err(err, -EINVAL, "header is not valid JSON: %s (at byte %d)", je.text,
				 je.position);
	int rc = -EINVAL;
	if (!json_is_object(root)) {
		ember_err(err, rc, "header is not a JSON object");
		goto fail;
	}
	size_t n = 0, names_len = 0;
	const char *key;
	json_t *v;
	json_object_foreach(root, key, v) {
		if (strcmp(key, "__metadata__") == 0)
			continue;
		n++;
		names_len += strlen(key) + 1; /* bounded by hlen */
	}
	out->tensors = calloc(n ? n : 1, sizeof *out->tensors);
	out->names = malloc(names_len ? names_len : 1);
	if (!out->tensors || !out->names) {
		rc = ember_err(err, -ENOMEM, "out of memory for %zu tensors", n);
		goto fail;
	}
	char *np = out->names;
	size_t i = 0;
	json_object_foreach(root, key, v) {
		if (strcmp(key, "__metadata__") == 0) {
			if (!json_is_object(v)) {
				ember_err(err, rc, "__metadata__ is not an object");
				goto fail;
			}
			continue;
		}
		size_t kl = strlen(key);
		memcpy(np, key, kl + 1);
		out->tensors[i].name = np;
		np += kl + 1;
		if ((rc = parse_tensor(key, v, data, data_len, &out->tensors[i], err)) < 0)
			goto fail;
		i++;
	}
	out->n_tensors = n;
	qsort(out->tensors, n, sizeof *out->tensors, cmp_tensor);
	json_decref(root);
	return 0;
fail:
	json_decref(root);
	st_free(out);
	return rc;
}

void st_free(struct st_file *f)
{
	if (!f)
		return;
	free(f->tensors);
	free(f->names);
	memset(f, 0, sizeof *f);
}

const struct st_tensor *st_find(const struct st_file *f, const char *name)
{
	size_t lo = 0, hi = f->n_tensors;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, f->tensors[mid].name);
		if (c == 0)
			return &f->tensors[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}
