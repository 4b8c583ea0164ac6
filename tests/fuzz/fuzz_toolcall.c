/* Fuzz target: the tool-call parser (engine/toolcall.h) on arbitrary model
 * text, both syntaxes, fed whole and in pieces cut where the first byte
 * says: the same text, calls and count of malformed ones either way; every
 * call a name and the JSON text of an object; valid UTF-8 in gives every
 * piece of text out valid UTF-8. */
#include "../../engine/common.h"
#include "../../engine/toolcall.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct seen {
	struct sbuf text, calls;
	bool utf8_in;
};

static void on_text(void *arg, const char *p, size_t n)
{
	struct seen *s = arg;
	if (s->utf8_in && utf8_valid_prefix((const uint8_t *)p, n) != n)
		abort();
	sbuf_put(&s->text, p, n);
}

static void on_call(void *arg, int index, const char *name, const char *args)
{
	struct seen *s = arg;
	json_error_t je;
	json_t *v = json_loads(args, 0, &je);
	if (!json_is_object(v) || !name[0] || strlen(name) > 64)
		abort();
	json_decref(v);
	sbuf_printf(&s->calls, "%d:%s(%s);", index, name, args);
}

static int split(enum tool_syntax syn, const uint8_t *text, size_t n, unsigned cut, struct seen *s)
{
	struct tool_split t;
	tool_split_init(&t, syn);
	struct tool_out o = {on_text, on_call, s};
	size_t at = 0;
	while (at < n) {
		size_t k = cut ? 1 + (at * 5 + cut) % (cut + 1) : n - at;
		if (k > n - at)
			k = n - at;
		tool_feed(&t, (const char *)text + at, k, false, &o);
		at += k;
	}
	tool_feed(&t, "", 0, true, &o);
	int bad = t.malformed;
	tool_split_free(&t);
	return bad;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum tool_syntax syn = data[0] & 1 ? TOOL_QWEN : TOOL_DEEPSEEK;
	unsigned cut = (data[0] >> 1) % 16;
	const uint8_t *text = data + 1;
	size_t n = size - 1;
	bool utf8 = utf8_valid_prefix(text, n) == n;
	struct seen whole = {.utf8_in = utf8}, bits = {.utf8_in = utf8};
	int mw = split(syn, text, n, 0, &whole), mb = split(syn, text, n, cut, &bits);
	if (mw != mb || whole.text.len != bits.text.len || whole.calls.len != bits.calls.len ||
	    (whole.text.len && memcmp(whole.text.p, bits.text.p, whole.text.len)) ||
	    (whole.calls.len && memcmp(whole.calls.p, bits.calls.p, whole.calls.len)))
		abort();
	sbuf_free(&whole.text), sbuf_free(&whole.calls), sbuf_free(&bits.text), sbuf_free(&bits.calls);
	return 0;
}
