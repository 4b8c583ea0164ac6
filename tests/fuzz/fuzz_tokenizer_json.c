/* Fuzz target: tokenizer.json loading. Arbitrary bytes either load into a
 * tokenizer, which then encodes a fixed text without fault, or fail cleanly. */
#include "../../engine/tokenizer.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tokenizer *t;
	char err[EMBER_ERR_LEN];
	if (tok_load_json(data, size, NULL, 0, &t, err) == 0) {
		struct tok_ctx *c = tok_ctx_create(t);
		int32_t *ids = NULL;
		size_t n = 0, cap = 0;
		static const char text[] = "Hello, world! 123 <|im_start|> caf\xc3\xa9 \xe4\xb8\xad";
		if (c && tok_encode(t, c, text, sizeof text - 1, true, &ids, &n, &cap, err) == 0) {
			struct tok_stream st = {0};
			char out[4096];
			for (size_t i = 0; i < n; i++) {
				size_t plen;
				if (tok_piece(t, ids[i], &plen) && TOK_STREAM_ROOM(plen) <= sizeof out &&
				    tok_stream_push(t, &st, ids[i], out, sizeof out) < 0)
					abort(); /* the room the header promises was not enough */
			}
		}
		free(ids);
		tok_ctx_destroy(c);
		tok_free(t);
	}
	return 0;
}
