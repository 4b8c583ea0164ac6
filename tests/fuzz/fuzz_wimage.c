/* Fuzz target: a weight image's header and table (wimg_check), as a worker
 * would read them from a memfd it was handed. An accepted table must hold
 * what modelfiles.c relies on: plain names, files inside the image. */
#include "../../engine/wimage.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Images are page-aligned mappings: give the table its alignment. The
	 * fuzzer's bytes become the image's start; the rest stays zero, up to
	 * a size the header names (at most 8 MiB here). */
	if (size < 24)
		return 0;
	uint64_t want;
	memcpy(&want, data + 16, sizeof want);
	size_t n = want >= size && want <= (8u << 20) ? (size_t)want : size;
	uint8_t *img = aligned_alloc(4096, (n + 4095) / 4096 * 4096);
	if (!img)
		return 0;
	memset(img, 0, n);
	memcpy(img, data, size);
	const struct wimg_file *files;
	size_t k;
	char err[EMBER_ERR_LEN];
	if (wimg_check(img, n, &files, &k, err) == 0) {
		for (size_t i = 0; i < k; i++) {
			if (files[i].offset > n || files[i].length > n - files[i].offset ||
			    strnlen(files[i].name, WIMG_NAME_LEN) == WIMG_NAME_LEN)
				abort();
			volatile uint8_t last = files[i].length ? img[files[i].offset + files[i].length - 1] : 0;
			(void)last;
		}
	}
	free(img);
	return 0;
}
