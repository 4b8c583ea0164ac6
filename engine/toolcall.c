/* Tool calls parsed back (toolcall.h). The start markers do not overlap
 * themselves (their '<' is only at their start), so a mismatch restarts at
 * the byte that broke it. */
#include "toolcall.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define DS_BEGIN "<｜tool▁calls▁begin｜>"
#define DS_END "<｜tool▁calls▁end｜>"
#define DS_CALL "<｜tool▁call▁begin｜>"
#define DS_CALL_END "<｜tool▁call▁end｜>"
#define DS_SEP "<｜tool▁sep｜>"
#define QW_BEGIN "<tool_call>"
#define QW_END "</tool_call>"

static const char *start_marker(const struct tool_split *t)
{
	return t->syntax == TOOL_DEEPSEEK ? DS_BEGIN : QW_BEGIN;
}

void tool_split_init(struct tool_split *t, enum tool_syntax syntax)
{
	memset(t, 0, sizeof *t);
	t->syntax = syntax;
}

void tool_split_free(struct tool_split *t)
{
	sbuf_free(&t->held);
	sbuf_free(&t->gap);
}

static bool space(char c)
{
	return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

/* The bytes at the end of p[0..n) that begin a character not complete
 * there (a marker's near miss can stop inside one). */
static size_t open_tail(const char *p, size_t n)
{
	for (size_t k = 1; k <= 3 && k <= n; k++) {
		unsigned char c = (unsigned char)p[n - k];
		if ((c & 0xc0) == 0x80)
			continue; /* a continuation byte: look further back */
		size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
		return need > k ? k : 0;
	}
	return 0;
}

static size_t seq_len(unsigned char c)
{
	return c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
}

/* Text out in whole characters: a character cut at the end of p waits in
 * carry for the rest (and goes as it is with final). */
static void text_out(struct tool_split *t, const struct tool_out *o, const char *p, size_t n,
		     bool final)
{
	if (t->n_carry > 0) {
		size_t need = seq_len((unsigned char)t->carry[0]) - t->n_carry;
		while (need > 0 && n > 0 && ((unsigned char)*p & 0xc0) == 0x80)
			t->carry[t->n_carry++] = *p++, n--, need--;
		if (need > 0 && n == 0 && !final)
			return; /* still cut */
		if (o->text)
			o->text(o->arg, t->carry, t->n_carry);
		t->n_carry = 0;
	}
	if (n == 0)
		return;
	size_t keep = final ? 0 : open_tail(p, n);
	if (n > keep && o->text)
		o->text(o->arg, p, n - keep);
	memcpy(t->carry, p + n - keep, keep);
	t->n_carry = keep;
}

#define text(o, p, n) text_out(t, o, p, n, false)

/* p[0..n) less the whitespace around it. */
static void trim(const char **p, size_t *n)
{
	while (*n && space(**p))
		(*p)++, (*n)--;
	while (*n && space((*p)[*n - 1]))
		(*n)--;
}

static const char *find(const char *p, size_t n, const char *s)
{
	size_t k = strlen(s);
	for (size_t i = 0; i + k <= n; i++)
		if (p[i] == s[0] && memcmp(p + i, s, k) == 0)
			return p + i;
	return NULL;
}

/* A name as a function's: 1 to 64 characters, none of them space or control. */
static bool good_name(const char *p, size_t n)
{
	if (n == 0 || n > 64)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] <= ' ' || p[i] == '"')
			return false;
	return true;
}

/* Hands out call (name, args) when both are well formed: args the JSON
 * text of an object. */
static bool emit_call(struct tool_split *t, const struct tool_out *o, const char *name, size_t nn,
		      const char *args, size_t na)
{
	trim(&name, &nn);
	trim(&args, &na);
	if (!good_name(name, nn))
		return false;
	json_error_t je;
	json_t *v = json_loadb(args, na, 0, &je);
	bool ok = json_is_object(v);
	json_decref(v);
	if (!ok)
		return false;
	char *n0 = strndup(name, nn), *a0 = strndup(args, na);
	if (n0 && a0 && o->call)
		o->call(o->arg, t->n_calls, n0, a0);
	if (n0 && a0)
		t->n_calls++;
	free(n0), free(a0);
	return n0 && a0;
}

/* Qwen: the body of one <tool_call>: {"name": ..., "arguments": {...}}. */
static bool qwen_call(struct tool_split *t, const struct tool_out *o, const char *p, size_t n)
{
	json_error_t je;
	json_t *v = json_loadb(p, n, 0, &je), *name = json_object_get(v, "name"),
	       *args = json_object_get(v, "arguments");
	bool ok = false;
	if (json_is_string(name)) {
		const char *nm = json_string_value(name);
		if (json_is_object(args)) {
			char *a = json_dumps(args, JSON_COMPACT | JSON_PRESERVE_ORDER);
			ok = a && emit_call(t, o, nm, strlen(nm), a, strlen(a));
			free(a);
		} else if (json_is_string(args)) {
			ok = emit_call(t, o, nm, strlen(nm), json_string_value(args),
				       json_string_length(args));
		}
	}
	json_decref(v);
	return ok;
}

/* DeepSeek: one call, from <｜tool▁call▁begin｜> to its end (excluded):
 * NAME<｜tool▁sep｜>ARGS, or R1's function<｜tool▁sep｜>NAME\n```json\nARGS\n```. */
static bool deepseek_call(struct tool_split *t, const struct tool_out *o, const char *p, size_t n)
{
	trim(&p, &n);
	size_t k = strlen(DS_CALL);
	if (n < k || memcmp(p, DS_CALL, k) != 0)
		return false;
	p += k, n -= k;
	const char *sep = find(p, n, DS_SEP);
	if (!sep)
		return false;
	const char *x = p, *y = sep + strlen(DS_SEP);
	size_t nx = (size_t)(sep - p), ny = n - (size_t)(y - p);
	const char *xt = x;
	size_t nxt = nx;
	trim(&xt, &nxt);
	if (nxt == 8 && memcmp(xt, "function", 8) == 0) { /* R1: the name on its line, then a fence */
		const char *nl = memchr(y, '\n', ny);
		if (!nl)
			return false;
		const char *name = y, *args = nl + 1;
		size_t nn = (size_t)(nl - y), na = ny - (size_t)(args - y);
		trim(&args, &na);
		if (na >= 7 && memcmp(args, "```json", 7) == 0)
			args += 7, na -= 7;
		else if (na >= 3 && memcmp(args, "```", 3) == 0)
			args += 3, na -= 3;
		trim(&args, &na);
		if (na >= 3 && memcmp(args + na - 3, "```", 3) == 0)
			na -= 3;
		return emit_call(t, o, name, nn, args, na);
	}
	return emit_call(t, o, x, nx, y, ny);
}

/* In the calls: hands out those complete in held; true when the block has
 * ended (held then keeps what came after it). */
static bool take_calls(struct tool_split *t, const struct tool_out *o)
{
	if (t->syntax == TOOL_QWEN) {
		const char *end = find(t->held.p, t->held.len, QW_END);
		if (!end)
			return false;
		size_t body = (size_t)(end - t->held.p), used = body + strlen(QW_END);
		if (!qwen_call(t, o, t->held.p, body)) {
			t->malformed++;
			text(o, QW_BEGIN, strlen(QW_BEGIN));
			text(o, t->held.p, used);
		}
		memmove(t->held.p, t->held.p + used, t->held.len - used);
		t->held.len -= used;
		return true;
	}
	for (;;) {
		const char *p = t->held.p + t->scan;
		size_t n = t->held.len - t->scan, lead = 0;
		while (lead < n && space(p[lead]))
			lead++;
		size_t ke = strlen(DS_END);
		if (n - lead >= ke && memcmp(p + lead, DS_END, ke) == 0) {
			size_t used = t->scan + lead + ke;
			memmove(t->held.p, t->held.p + used, t->held.len - used);
			t->held.len -= used;
			t->scan = 0;
			return true;
		}
		const char *end = find(p, n, DS_CALL_END);
		if (!end)
			return false;
		size_t seg = (size_t)(end - p);
		if (!deepseek_call(t, o, p, seg)) {
			t->malformed++;
			text(o, p, seg + strlen(DS_CALL_END));
		}
		t->scan += seg + strlen(DS_CALL_END);
	}
}

void tool_feed(struct tool_split *t, const char *p, size_t n, bool final, const struct tool_out *o)
{
	const char *m = start_marker(t);
	size_t km = strlen(m);
	struct sbuf rest = {0}; /* what followed a block's end, fed as text again */
	for (size_t i = 0; i < n;) {
		if (t->in_calls) {
			sbuf_put(&t->held, p + i, n - i);
			i = n;
			if (!take_calls(t, o))
				break;
			/* the block ended: what follows is text again */
			t->in_calls = false;
			sbuf_free(&rest);
			rest = t->held;
			t->held = (struct sbuf){0};
			p = rest.p ? rest.p : "", n = rest.len, i = 0;
			continue;
		}
		char c = p[i];
		if (c == m[t->held.len]) {
			sbuf_put(&t->held, &c, 1);
			i++;
			if (t->held.len == km) { /* a block opens: the whitespace before it goes */
				t->held.len = 0;
				t->gap.len = 0;
				t->in_calls = true;
				t->scan = 0;
			}
			continue;
		}
		if (t->held.len > 0) { /* a near miss: its bytes were text */
			text(o, t->gap.p, t->gap.len);
			t->gap.len = 0;
			text(o, t->held.p, t->held.len);
			t->held.len = 0;
			continue; /* c again, as a possible start */
		}
		if (t->n_calls > 0 && space(c)) { /* between calls: held, dropped before the next */
			sbuf_put(&t->gap, &c, 1);
			i++;
			continue;
		}
		text(o, t->gap.p, t->gap.len);
		t->gap.len = 0;
		size_t run = i;
		while (i < n && p[i] != m[0] && !(t->n_calls > 0 && space(p[i])))
			i++;
		text(o, p + run, i - run);
	}
	sbuf_free(&rest);
	if (!final)
		return;
	if (t->in_calls) { /* a call not ended by its marker: whole all the same, or text */
		const char *rest = t->held.p + t->scan;
		size_t nr = t->held.len - t->scan, lead = 0;
		while (lead < nr && space(rest[lead]))
			lead++;
		bool whole = lead < nr && (t->syntax == TOOL_QWEN ? qwen_call(t, o, rest, nr)
								  : deepseek_call(t, o, rest, nr));
		if (lead < nr && !whole) {
			t->malformed++;
			if (t->syntax == TOOL_QWEN || t->scan == 0)
				text(o, m, km);
			text(o, rest, nr);
		}
		t->in_calls = false;
	} else {
		text(o, t->held.p, t->held.len); /* a marker's start, then the end */
	}
	text_out(t, o, "", 0, true); /* a character left cut, as it came */
	t->held.len = 0;
	t->scan = 0;
	t->gap.len = 0; /* whitespace after the last call */
}
