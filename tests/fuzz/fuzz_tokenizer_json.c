/* Fuzz target: tokenizer.json loading. Arbitrary bytes either load into a
 * tokenizer, which then encodes a fixed text without fault, or fail cleanly.
 * Bytes that the fast reader of the vocabulary and merges takes
 * (engine/tokjson.h) are loaded a second time with a key it refuses in
 * front, so by jansson's tree whole: both loads must agree. */
#include "../../engine/tokenizer.h"
#include "../../engine/tokjson.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char text[] = "Hello, world! 123 <|im_start|> caf\xc3\xa9 \xe4\xb8\xad";

/* The ids of text (n of them, into *ids), or -1. */
static long encode(const struct tokenizer *t, int32_t **ids)
{
	char err[EMBER_ERR_LEN];
	struct tok_ctx *c = tok_ctx_create(t);
	size_t n = 0, cap = 0;
	long rc = -1;
	if (c && tok_encode(t, c, text, sizeof text - 1, true, ids, &n, &cap, err) == 0) {
		struct tok_stream st = {0};
		char out[4096];
		for (size_t i = 0; i < n; i++) {
			size_t plen;
			if (tok_piece(t, (*ids)[i], &plen) && TOK_STREAM_ROOM(plen) <= sizeof out &&
			    tok_stream_push(t, &st, (*ids)[i], out, sizeof out) < 0)
				abort(); /* the room the header promises was not enough */
		}
		rc = (long)n;
	}
	tok_ctx_destroy(c);
	return rc;
}

/* The same bytes with a top-level key of 5000 bytes first (which the fast
 * reader refuses), or NULL. */
static uint8_t *whole_variant(const uint8_t *data, size_t size, size_t *n)
{
	const uint8_t *brace = memchr(data, '{', size);
	if (!brace)
		return NULL;
	size_t pre = (size_t)(brace - data) + 1, key = 5000;
	uint8_t *v = malloc(size + key + 8);
	if (!v)
		return NULL;
	memcpy(v, data, pre);
	v[pre] = '"';
	memset(v + pre + 1, 'x', key);
	memcpy(v + pre + 1 + key, "\":0,", 4);
	memcpy(v + pre + 5 + key, data + pre, size - pre);
	*n = size + key + 5;
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tokenizer *t, *w;
	char err[EMBER_ERR_LEN];
	int rc = tok_load_json(data, size, NULL, 0, &t, err);
	int32_t *ids = NULL, *wids = NULL;
	long n = rc == 0 ? encode(t, &ids) : -1;
	struct tj_sections sec;
	size_t vn;
	uint8_t *v = tj_find((const char *)data, size, &sec) == 0 ? whole_variant(data, size, &vn) : NULL;
	if (v) {
		int wrc = tok_load_json(v, vn, NULL, 0, &w, err);
		if ((rc == 0) != (wrc == 0))
			abort(); /* one reading loads what the other refuses */
		if (wrc == 0) {
			if (tok_n_ids(t) != tok_n_ids(w))
				abort();
			for (int32_t id = 0; id < tok_n_ids(t); id++) {
				size_t la = 0, lb = 0;
				const char *a = tok_piece(t, id, &la), *b = tok_piece(w, id, &lb);
				if ((a == NULL) != (b == NULL) || la != lb || (a && memcmp(a, b, la) != 0))
					abort();
			}
			long wn = encode(w, &wids);
			if (wn != n || (n > 0 && memcmp(ids, wids, (size_t)n * sizeof *ids) != 0))
				abort();
			tok_free(w);
		}
		free(v);
	}
	free(ids);
	free(wids);
	if (rc == 0)
		tok_free(t);
	return 0;
}
