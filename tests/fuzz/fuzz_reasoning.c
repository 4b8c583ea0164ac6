/* Fuzz target: the reasoning split (engine/reasoning.h) on arbitrary model
 * text, fed whole and in pieces cut where the first byte says. The pieces
 * must give the same two parts as the whole, reasoning before answer; the
 * parts and the tag between them must give back the text (less a leading
 * "<think>"); valid UTF-8 in gives valid UTF-8 out. */
#include "../../engine/common.h"
#include "../../engine/reasoning.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct parts {
	char *p[2]; /* answer, reasoning */
	size_t n[2];
	bool answer_seen;
};

static void collect(void *arg, bool think, const char *p, size_t n)
{
	struct parts *c = arg;
	if (think && c->answer_seen)
		abort(); /* reasoning after the answer */
	if (!think)
		c->answer_seen = true;
	memcpy(c->p[think] + c->n[think], p, n);
	c->n[think] += n;
}

/* Returns whether the reasoning was closed. */
static bool split(const uint8_t *text, size_t n, unsigned cut, struct parts *c)
{
	struct reason_split r;
	reason_init(&r);
	size_t at = 0;
	while (at < n) {
		size_t k = cut ? 1 + (at * 7 + cut) % (cut + 1) : n - at;
		if (k > n - at)
			k = n - at;
		reason_feed(&r, (const char *)text + at, k, false, collect, c);
		at += k;
	}
	reason_feed(&r, "", 0, true, collect, c);
	return r.state == REASON_ANSWER;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned cut = data[0] % 16;
	const uint8_t *text = data + 1;
	size_t n = size - 1;
	struct parts whole = {{malloc(n + 1), malloc(n + 1)}, {0, 0}, false};
	struct parts bits = {{malloc(n + 1), malloc(n + 1)}, {0, 0}, false};
	if (!whole.p[0] || !whole.p[1] || !bits.p[0] || !bits.p[1])
		abort();
	bool closed = split(text, n, 0, &whole);
	if (split(text, n, cut, &bits) != closed)
		abort();
	for (int k = 0; k < 2; k++)
		if (whole.n[k] != bits.n[k] || memcmp(whole.p[k], bits.p[k], whole.n[k]) != 0)
			abort();
	/* reasoning + "</think>" + answer is the text, less a leading "<think>" */
	size_t skip = n >= 7 && memcmp(text, REASON_OPEN, 7) == 0 ? 7 : 0;
	size_t tag = closed ? 8 : 0;
	if (whole.n[1] + tag + whole.n[0] != n - skip ||
	    memcmp(whole.p[1], text + skip, whole.n[1]) != 0 ||
	    (tag && memcmp(text + skip + whole.n[1], REASON_CLOSE, 8) != 0) ||
	    memcmp(whole.p[0], text + skip + whole.n[1] + tag, whole.n[0]) != 0)
		abort();
	if (utf8_valid_prefix(text, n) == n)
		for (int k = 0; k < 2; k++)
			if (utf8_valid_prefix((const uint8_t *)whole.p[k], whole.n[k]) != whole.n[k])
				abort();
	for (int k = 0; k < 2; k++)
		free(whole.p[k]), free(bits.p[k]);
	return 0;
}
