/* Fuzz target: encoding arbitrary bytes with a real tokenizer (the tiny
 * Qwen2 model's, or the directory in EMBER_FUZZ_MODEL) and decoding the ids
 * back as a stream. Invalid UTF-8 must be refused; valid text must come back
 * as valid UTF-8 in every chunk. */
#include "../../engine/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tokenizer *tok;
static struct tok_ctx *ctx;

static void setup(void)
{
	const char *dir = getenv("EMBER_FUZZ_MODEL");
	char err[EMBER_ERR_LEN];
	struct mfiles *mf;
	if (mf_open_dir(dir ? dir : "build/models/tiny-qwen2", &mf, err) < 0 ||
	    tok_load(mf, &tok, err) < 0) {
		fprintf(stderr, "fuzz_tokenizer_encode: %s (run from the repository root after make models)\n", err);
		abort();
	}
	mf_close(mf);
	ctx = tok_ctx_create(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!tok)
		setup();
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	char err[EMBER_ERR_LEN];
	int rc = tok_encode(tok, ctx, (const char *)data, size, true, &ids, &n, &cap, err);
	bool valid = utf8_valid_prefix(data, size) == size;
	if ((rc == -EILSEQ) == valid)
		abort(); /* refused valid text, or accepted invalid text */
	struct tok_stream st = {0};
	char out[4096];
	for (size_t i = 0; i < n; i++) {
		size_t plen;
		if (!tok_piece(tok, ids[i], &plen) || TOK_STREAM_ROOM(plen) > sizeof out)
			continue;
		long r = tok_stream_push(tok, &st, ids[i], out, sizeof out);
		if (r < 0 || utf8_valid_prefix((const uint8_t *)out, (size_t)r) != (size_t)r)
			abort();
	}
	free(ids);
	return 0;
}
