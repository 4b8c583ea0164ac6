/* The weight image's layout and its checks. Runs in the supervisor and the
 * worker. */
#include "wimage.h"
#include "sha256.h"

#include <errno.h>
#include <stdio.h>

_Static_assert(sizeof(struct wimg_header) <= WIMG_TABLE_OFFSET, "header fits before the table");
_Static_assert(sizeof(struct wimg_file) == WIMG_NAME_LEN + 16 + 32, "no padding in the table");

size_t wimg_table_bytes(size_t n)
{
	return n * sizeof(struct wimg_file);
}

static size_t align_up(size_t x)
{
	return (x + WIMG_ALIGN - 1) & ~(WIMG_ALIGN - 1);
}

size_t wimg_data_offset(size_t n)
{
	return align_up(WIMG_TABLE_OFFSET + wimg_table_bytes(n));
}

size_t wimg_layout(const uint64_t *lengths, size_t n, uint64_t *offsets)
{
	if (n > WIMG_MAX_FILES)
		return 0;
	size_t at = wimg_data_offset(n);
	for (size_t i = 0; i < n; i++) {
		if (lengths[i] > SIZE_MAX / 2 || at > SIZE_MAX / 2 - lengths[i] - WIMG_ALIGN)
			return 0;
		offsets[i] = at;
		at += align_up(lengths[i] ? (size_t)lengths[i] : 1);
	}
	return at;
}

static void table_digest(const struct wimg_file *files, size_t n, uint8_t out[32])
{
	struct sha256 s;
	sha256_init(&s);
	sha256_update(&s, files, wimg_table_bytes(n));
	sha256_final(&s, out);
}

void wimg_write_table(uint8_t *image, size_t size, const struct wimg_file *files, size_t n)
{
	(void)size;
	struct wimg_header h = {.version = WIMG_VERSION, .n_files = (uint32_t)n, .size = size};
	memcpy(h.magic, WIMG_MAGIC, 8);
	table_digest(files, n, h.digest);
	memset(image, 0, WIMG_TABLE_OFFSET);
	memcpy(image, &h, sizeof h);
	memcpy(image + WIMG_TABLE_OFFSET, files, wimg_table_bytes(n));
}

int wimg_check(const uint8_t *image, size_t size, const struct wimg_file **files, size_t *n,
	       char *err)
{
	struct wimg_header h;
	if (size < WIMG_TABLE_OFFSET)
		return ember_err(err, -EINVAL, "weight image: %zu bytes, too short for a header", size);
	memcpy(&h, image, sizeof h);
	if (memcmp(h.magic, WIMG_MAGIC, 8) != 0)
		return ember_err(err, -EINVAL, "weight image: wrong magic");
	if (h.version != WIMG_VERSION)
		return ember_err(err, -EINVAL, "weight image: version %u, not %d", h.version,
				 WIMG_VERSION);
	if (h.size != size)
		return ember_err(err, -EINVAL, "weight image: says %llu bytes, has %zu",
				 (unsigned long long)h.size, size);
	if (h.n_files > WIMG_MAX_FILES || wimg_data_offset(h.n_files) > size)
		return ember_err(err, -EINVAL, "weight image: a table of %u files does not fit",
				 h.n_files);
	const struct wimg_file *t = (const struct wimg_file *)(image + WIMG_TABLE_OFFSET);
	uint8_t digest[32];
	table_digest(t, h.n_files, digest);
	if (memcmp(digest, h.digest, 32) != 0)
		return ember_err(err, -EINVAL, "weight image: the table does not match its digest");
	uint64_t end_prev = wimg_data_offset(h.n_files);
	for (uint32_t i = 0; i < h.n_files; i++) {
		const struct wimg_file *f = &t[i];
		size_t len = strnlen(f->name, WIMG_NAME_LEN);
		if (len == 0 || len == WIMG_NAME_LEN || memchr(f->name, '/', len) ||
		    strcmp(f->name, ".") == 0 || strcmp(f->name, "..") == 0)
			return ember_err(err, -EINVAL, "weight image: file %u has no plain name", i);
		for (uint32_t k = 0; k < i; k++)
			if (strcmp(t[k].name, f->name) == 0)
				return ember_err(err, -EINVAL, "weight image: %s appears twice", f->name);
		/* In order, aligned, each inside the image and after the last. */
		if (f->offset % WIMG_ALIGN || f->offset < end_prev || f->offset > size ||
		    f->length > size - f->offset)
			return ember_err(err, -EINVAL, "weight image: %s lies outside its room",
					 f->name);
		end_prev = f->offset + f->length;
	}
	*files = t;
	*n = h.n_files;
	return 0;
}
