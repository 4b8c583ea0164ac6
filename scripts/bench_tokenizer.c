/* bench-tokenizer: encoding throughput of ember's tokenizer, one thread, on
 * a text file (by default the test corpus, repeated to 4 MB); `make bench`
 * runs it for the Qwen and DeepSeek-V3 tokenizers.
 *
 *   bench-tokenizer --model DIR [--text FILE.jsonl] [--mb N]
 *
 * FILE.jsonl holds one JSON string per line; each is encoded on its own.
 * The load's time is printed beside that of jansson's parse of the same
 * tokenizer.json (a tree the load no longer builds for the vocabulary and
 * merges).
 * scripts/bench_tokenizer_hf.py measures Hugging Face tokenizers on the
 * same strings. */
#include "../engine/modelfiles.h"
#include "../engine/tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
	const char *dir = NULL, *path = "tests/tokenizer/corpus.jsonl";
	double mb = 4;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--model") == 0)
			dir = argv[i + 1];
		else if (strcmp(argv[i], "--text") == 0)
			path = argv[i + 1];
		else if (strcmp(argv[i], "--mb") == 0)
			mb = atof(argv[i + 1]);
	}
	if (!dir || mb <= 0 || mb > 1024) {
		fprintf(stderr, "usage: bench-tokenizer --model DIR [--text FILE.jsonl] [--mb N]\n");
		return 2;
	}
	char err[EMBER_ERR_LEN];
	struct mfiles *mf;
	struct tokenizer *t;
	double t0 = ember_now();
	if (mf_open_dir(dir, &mf, err) < 0 || tok_load(mf, &t, err) < 0) {
		fprintf(stderr, "bench-tokenizer: %s\n", err);
		return 1;
	}
	double load = ember_now() - t0;
	/* Beside it: jansson's tree of the same file alone, which loading
	 * built before it read the vocabulary and merges itself. */
	const uint8_t *tj;
	size_t tjl;
	if (mf_get(mf, "tokenizer.json", &tj, &tjl, err) < 0) {
		fprintf(stderr, "bench-tokenizer: %s\n", err);
		return 1;
	}
	t0 = ember_now();
	json_t *tree = json_loadb((const char *)tj, tjl, 0, NULL);
	json_decref(tree);
	double tree_s = ember_now() - t0;
	FILE *f = fopen(path, "r");
	if (!f) {
		perror(path);
		return 1;
	}
	char **s = NULL, *line = NULL;
	size_t *len = NULL, n = 0, cap = 0, bytes = 0;
	while (getline(&line, &cap, f) > 0) {
		json_t *j = json_loads(line, JSON_DECODE_ANY, NULL);
		if (!json_is_string(j))
			continue;
		s = realloc(s, (n + 1) * sizeof *s);
		len = realloc(len, (n + 1) * sizeof *len);
		len[n] = json_string_length(j);
		s[n] = malloc(len[n] + 1);
		memcpy(s[n], json_string_value(j), len[n] + 1);
		bytes += len[n++];
		json_decref(j);
	}
	fclose(f);
	struct tok_ctx *c = tok_ctx_create(t);
	int32_t *ids = NULL;
	size_t idcap = 0, total = 0, tokens = 0, target = (size_t)(mb * 1e6);
	t0 = ember_now();
	while (total < target) {
		for (size_t i = 0; i < n; i++) {
			size_t k = 0;
			if (tok_encode(t, c, s[i], len[i], false, &ids, &k, &idcap, err) < 0) {
				fprintf(stderr, "bench-tokenizer: %s\n", err);
				return 1;
			}
			tokens += k;
		}
		total += bytes;
	}
	double dt = ember_now() - t0;
	printf("%-44s %10s\n", dir, "value");
	printf("%-44s %10.3f\n", "tokenizer load, s", load);
	printf("%-44s %10.3f\n", "jansson's tree of tokenizer.json alone, s", tree_s);
	printf("%-44s %10.1f\n", "encode, MB/s (one thread)", total / dt / 1e6);
	printf("%-44s %10.2f\n", "encode, million tokens/s", tokens / dt / 1e6);
	printf("(%zu strings, %.1f MB encoded, %.2f bytes per token)\n", n, total / 1e6,
	       (double)total / (double)tokens);
	return 0;
}
