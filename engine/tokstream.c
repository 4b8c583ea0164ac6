/* Streaming decoding (tokenizer.h): a token's bytes out as soon as they
 * complete UTF-8, invalid sequences as U+FFFD. */
#include "tokenizer.h"

#include <string.h>

/* Length of the UTF-8 sequence a lead byte starts, or 0 for a byte that
 * cannot start one. */
static size_t utf8_need(uint8_t b)
{
	return b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
}

static const char REPLACEMENT[] = "\xef\xbf\xbd";

long tok_stream_push(const struct tokenizer *t, struct tok_stream *s, int32_t id, char *out,
		     size_t cap)
{
	size_t plen;
	const char *p = tok_piece(t, id, &plen);
	if (!p)
		plen = 0;
	if (cap < TOK_STREAM_ROOM(plen))
		return -1;
	size_t w = 0;
	/* Each byte is appended to the held bytes; complete, valid sequences go
	 * out, a sequence that turns out invalid goes out as U+FFFD. */
	for (size_t i = 0; i < plen; i++) {
		uint8_t b = (uint8_t)p[i];
		if (s->n_held > 0 && (b & 0xc0) != 0x80) {
			if (w + 3 > cap)
				return -1;
			memcpy(out + w, REPLACEMENT, 3);
			w += 3;
			s->n_held = 0;
		}
		s->held[s->n_held++] = b;
		size_t need = utf8_need(s->held[0]);
		if (need == 0) {
			if (w + 3 > cap)
				return -1;
			memcpy(out + w, REPLACEMENT, 3);
			w += 3;
			s->n_held = 0;
			continue;
		}
		if (s->n_held < need)
			continue;
		if (utf8_valid_prefix(s->held, need) == need) {
			if (w + need > cap)
				return -1;
			memcpy(out + w, s->held, need);
			w += need;
		} else {
			if (w + 3 > cap)
				return -1;
			memcpy(out + w, REPLACEMENT, 3);
			w += 3;
		}
		s->n_held = 0;
	}
	return (long)w;
}

long tok_stream_flush(struct tok_stream *s, char *out, size_t cap)
{
	if (s->n_held == 0)
		return 0;
	if (cap < 3)
		return -1;
	memcpy(out, REPLACEMENT, 3);
	s->n_held = 0;
	return 3;
}
