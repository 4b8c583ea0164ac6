/* Fuzz target: a safetensors file (header and data) and, read as text, a
 * model.safetensors.index.json. Every tensor the parser accepts is touched
 * at both ends, so a range it failed to check shows up under ASan. */
#include "../../engine/safetensors.h"
#include "../../engine/weights.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct st_file f;
	char err[EMBER_ERR_LEN];
	volatile uint8_t sink = 0;
	if (st_parse(data, size, &f, err) == 0) {
		for (size_t i = 0; i < f.n_tensors; i++) {
			const struct st_tensor *t = &f.tensors[i];
			if (t->nbytes) {
				sink ^= t->data[0];
				sink ^= t->data[t->nbytes - 1];
			}
			if (st_find(&f, t->name) != t)
				abort();
		}
		st_free(&f);
	}
	char **names;
	size_t n;
	if (wts_parse_index(data, size, &names, &n, NULL, err) == 0) {
		for (size_t i = 0; i < n; i++)
			free(names[i]);
		free(names);
	}
	(void)sink;
	return 0;
}
