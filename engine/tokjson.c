/* tokenizer.json's vocab and merges without a JSON tree (tokjson.h): a
 * scanner of the JSON grammar that validates what it passes over as
 * jansson does (strings, escapes, UTF-8, numbers, the nesting) and gives
 * up on whatever it is not sure to read the same way. */
#include "tokjson.h"

#include <string.h>

#define TJ_STR_MAX 4096 /* a vocabulary entry or merge; longer: jansson's path */
#define TJ_DEPTH 512    /* nesting; deeper: jansson's path */

struct scan {
	const char *p, *end;
};

static void ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

/* Takes c, after whitespace. */
static bool take(struct scan *s, char c)
{
	ws(s);
	if (s->p < s->end && *s->p == c) {
		s->p++;
		return true;
	}
	return false;
}

/* Four hex digits after "\u", or -1. */
static long hex4(struct scan *s)
{
	if (s->end - s->p < 4)
		return -1;
	long v = 0;
	for (int i = 0; i < 4; i++) {
		char c = s->p[i];
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
						 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	s->p += 4;
	return v;
}

/* A string, after whitespace, decoded into out (room for cap bytes and the
 * NUL; NULL only checks it). Returns its length, or -1: not a string, an
 * escape jansson would refuse (\u0000, a lone surrogate) or that is not
 * JSON, a control character, invalid UTF-8, longer than cap. */
static long string(struct scan *s, char *out, size_t cap)
{
	if (!take(s, '"'))
		return -1;
	size_t n = 0;
	while (s->p < s->end) {
		unsigned char c = (unsigned char)*s->p;
		char u[4];
		size_t k;
		const char *from;
		if (c == '"') {
			s->p++;
			if (out)
				out[n] = 0;
			return (long)n;
		}
		if (c < 0x20)
			return -1;
		if (c == '\\') {
			if (s->end - s->p < 2)
				return -1;
			char e = s->p[1];
			s->p += 2;
			long cp;
			switch (e) {
			case '"': case '\\': case '/': cp = e; break;
			case 'b': cp = '\b'; break;
			case 'f': cp = '\f'; break;
			case 'n': cp = '\n'; break;
			case 'r': cp = '\r'; break;
			case 't': cp = '\t'; break;
			case 'u':
				cp = hex4(s);
				if (cp >= 0xd800 && cp <= 0xdbff) { /* a pair */
					if (s->end - s->p < 2 || s->p[0] != '\\' || s->p[1] != 'u')
						return -1;
					s->p += 2;
					long lo = hex4(s);
					if (lo < 0xdc00 || lo > 0xdfff)
						return -1;
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				} else if (cp >= 0xdc00 && cp <= 0xdfff) {
					return -1;
				}
				if (cp <= 0)
					return -1;
				break;
			default:
				return -1;
			}
			k = utf8_put((uint32_t)cp, u);
			from = u;
		} else {
			k = utf8_seq_len((const uint8_t *)s->p, (size_t)(s->end - s->p));
			if (k == 0)
				return -1;
			from = s->p;
			s->p += k;
		}
		if (out) {
			if (n + k >= cap)
				return -1;
			memcpy(out + n, from, k);
		}
		n += k;
	}
	return -1;
}

/* A plain integer (JSON's grammar, no fraction or exponent, at most 18
 * digits), after whitespace; -1 when it is anything else. */
static int integer(struct scan *s, long *v)
{
	ws(s);
	bool neg = s->p < s->end && *s->p == '-';
	if (neg)
		s->p++;
	const char *d = s->p;
	long x = 0;
	while (s->p < s->end && *s->p >= '0' && *s->p <= '9' && s->p - d < 18)
		x = x * 10 + (*s->p++ - '0');
	size_t n = (size_t)(s->p - d);
	if (n == 0 || (n > 1 && d[0] == '0'))
		return -1;
	if (s->p < s->end && ((*s->p >= '0' && *s->p <= '9') || *s->p == '.' || *s->p == 'e' ||
			      *s->p == 'E'))
		return -1;
	*v = neg ? -x : x;
	return 0;
}

/* A number of JSON's grammar, skipped. */
static int number(struct scan *s)
{
	const char *p = s->p, *e = s->end;
	if (p < e && *p == '-')
		p++;
	if (p < e && *p == '0')
		p++;
	else if (p < e && *p >= '1' && *p <= '9')
		while (p < e && *p >= '0' && *p <= '9')
			p++;
	else
		return -1;
	if (p < e && *p == '.') {
		const char *f = ++p;
		while (p < e && *p >= '0' && *p <= '9')
			p++;
		if (p == f)
			return -1;
	}
	if (p < e && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < e && (*p == '+' || *p == '-'))
			p++;
		const char *x = p;
		while (p < e && *p >= '0' && *p <= '9')
			p++;
		if (p == x)
			return -1;
	}
	s->p = p;
	return 0;
}

static int word(struct scan *s, const char *w)
{
	size_t n = strlen(w);
	if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0)
		return -1;
	s->p += n;
	return 0;
}

/* Any value, after whitespace, checked and skipped. */
static int skip(struct scan *s, int depth)
{
	ws(s);
	if (s->p >= s->end || depth > TJ_DEPTH)
		return -1;
	switch (*s->p) {
	case '"':
		return string(s, NULL, 0) < 0 ? -1 : 0;
	case '{':
		s->p++;
		if (take(s, '}'))
			return 0;
		do {
			if (string(s, NULL, 0) < 0 || !take(s, ':') || skip(s, depth + 1) < 0)
				return -1;
		} while (take(s, ','));
		return take(s, '}') ? 0 : -1;
	case '[':
		s->p++;
		if (take(s, ']'))
			return 0;
		do {
			if (skip(s, depth + 1) < 0)
				return -1;
		} while (take(s, ','));
		return take(s, ']') ? 0 : -1;
	case 't':
		return word(s, "true");
	case 'f':
		return word(s, "false");
	case 'n':
		return word(s, "null");
	default:
		return number(s);
	}
}

/* The value at s (after whitespace) as the range [*at, *end) of json,
 * skipped, and the number of its members; it must start with open ('{' or
 * '['). -1 when given before (*end set). */
static int section(struct scan *s, const char *json, char open, size_t *at, size_t *end,
		   size_t *count)
{
	ws(s);
	if (*end || s->p >= s->end || *s->p != open)
		return -1;
	*at = (size_t)(s->p - json);
	s->p++;
	*count = 0;
	if (!take(s, open == '{' ? '}' : ']')) {
		do {
			if (open == '{' && (string(s, NULL, 0) < 0 || !take(s, ':')))
				return -1;
			if (skip(s, 3) < 0)
				return -1;
			++*count;
		} while (take(s, ','));
		if (!take(s, open == '{' ? '}' : ']'))
			return -1;
	}
	*end = (size_t)(s->p - json);
	return 0;
}

int tj_find(const char *json, size_t len, struct tj_sections *out)
{
	struct scan s = {json, json + len};
	char key[TJ_STR_MAX];
	bool model = false;
	*out = (struct tj_sections){0};
	if (!take(&s, '{') || take(&s, '}'))
		return -1;
	do {
		long k = string(&s, key, sizeof key);
		if (k < 0 || !take(&s, ':'))
			return -1;
		if (strcmp(key, "model") != 0) {
			if (skip(&s, 1) < 0)
				return -1;
			continue;
		}
		if (model || !take(&s, '{') || take(&s, '}'))
			return -1; /* twice (jansson keeps the last), or not an object with keys */
		model = true;
		do {
			if (string(&s, key, sizeof key) < 0 || !take(&s, ':'))
				return -1;
			int rc = strcmp(key, "vocab") == 0
					 ? section(&s, json, '{', &out->vocab_at, &out->vocab_end,
						   &out->n_vocab)
				 : strcmp(key, "merges") == 0
					 ? section(&s, json, '[', &out->merges_at, &out->merges_end,
						   &out->n_merges)
					 : skip(&s, 2);
			if (rc < 0)
				return -1;
		} while (take(&s, ','));
		if (!take(&s, '}'))
			return -1;
	} while (take(&s, ','));
	if (!take(&s, '}'))
		return -1;
	ws(&s);
	return s.p == s.end && model && out->vocab_end && out->merges_end ? 0 : -1;
}

int tj_vocab(const char *json, size_t at, size_t end,
	     int (*fn)(void *arg, const char *text, size_t len, long id), void *arg)
{
	struct scan s = {json + at, json + end};
	char text[TJ_STR_MAX];
	if (!take(&s, '{'))
		return -1;
	if (!take(&s, '}')) {
		do {
			long n = string(&s, text, sizeof text);
			long id;
			if (n < 0 || !take(&s, ':') || integer(&s, &id) < 0)
				return -1;
			int rc = fn(arg, text, (size_t)n, id);
			if (rc)
				return rc;
		} while (take(&s, ','));
		if (!take(&s, '}'))
			return -1;
	}
	ws(&s);
	return s.p == s.end ? 0 : -1;
}

int tj_merges(const char *json, size_t at, size_t end,
	      int (*fn)(void *arg, const char *a, size_t la, const char *b, size_t lb), void *arg)
{
	struct scan s = {json + at, json + end};
	char a[TJ_STR_MAX], b[TJ_STR_MAX];
	if (!take(&s, '['))
		return -1;
	if (!take(&s, ']')) {
		do {
			long la, lb;
			ws(&s);
			if (s.p < s.end && *s.p == '[') {
				s.p++;
				la = string(&s, a, sizeof a);
				if (la < 0 || !take(&s, ','))
					return -1;
				lb = string(&s, b, sizeof b);
				if (lb < 0 || !take(&s, ']'))
					return -1;
			} else {
				long n = string(&s, a, sizeof a);
				if (n < 0)
					return -1;
				char *sp = memchr(a, ' ', (size_t)n);
				if (!sp || memchr(sp + 1, ' ', (size_t)(a + n - sp - 1)))
					return -1;
				*sp = 0;
				la = sp - a;
				lb = n - la - 1;
				memcpy(b, sp + 1, (size_t)lb + 1);
			}
			int rc = fn(arg, a, (size_t)la, b, (size_t)lb);
			if (rc)
				return rc;
		} while (take(&s, ','));
		if (!take(&s, ']'))
			return -1;
	}
	ws(&s);
	return s.p == s.end ? 0 : -1;
}
