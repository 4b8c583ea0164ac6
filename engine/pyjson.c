/* Python's json.dumps layout (pyjson.h). */
#include "pyjson.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void py_json_str(struct sbuf *b, const char *s, size_t n)
{
	sbuf_put(b, "\"", 1);
	size_t run = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		const char *esc = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n"
				: c == '\r' ? "\\r" : c == '\t' ? "\\t" : c == '\b' ? "\\b"
				: c == '\f' ? "\\f" : NULL;
		if (!esc && c >= 0x20)
			continue;
		sbuf_put(b, s + run, i - run);
		if (esc)
			sbuf_puts(b, esc);
		else
			sbuf_printf(b, "\\u%04x", c);
		run = i + 1;
	}
	sbuf_put(b, s + run, n - run);
	sbuf_put(b, "\"", 1);
}

/* repr(float): the shortest digits that read back the same, in fixed
 * notation for exponents from -4 to 15, else as d.ddde+XX. */
static void py_float(struct sbuf *b, double v)
{
	if (isnan(v)) {
		sbuf_puts(b, "NaN");
		return;
	}
	if (isinf(v)) {
		sbuf_puts(b, v < 0 ? "-Infinity" : "Infinity");
		return;
	}
	char e[40];
	int prec = 1;
	for (; prec <= 17; prec++) {
		snprintf(e, sizeof e, "%.*e", prec - 1, v);
		if (strtod(e, NULL) == v)
			break;
	}
	/* e is [-]d[.ddd]e[+-]XX: its digits and exponent */
	char digits[24];
	size_t nd = 0;
	const char *p = e;
	bool neg = *p == '-';
	if (neg)
		p++;
	for (; *p && *p != 'e'; p++)
		if (*p != '.')
			digits[nd++] = *p;
	int exp = atoi(p + 1);
	while (nd > 1 && digits[nd - 1] == '0')
		nd--;
	if (neg)
		sbuf_put(b, "-", 1);
	if (exp < -4 || exp >= 16) {
		sbuf_put(b, digits, 1);
		if (nd > 1) {
			sbuf_put(b, ".", 1);
			sbuf_put(b, digits + 1, nd - 1);
		}
		sbuf_printf(b, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
	} else if (exp < 0) {
		sbuf_puts(b, "0.");
		for (int i = -1; i > exp; i--)
			sbuf_put(b, "0", 1);
		sbuf_put(b, digits, nd);
	} else {
		size_t whole = (size_t)exp + 1;
		for (size_t i = 0; i < whole; i++)
			sbuf_put(b, i < nd ? &digits[i] : "0", 1);
		sbuf_put(b, ".", 1);
		if (nd > whole)
			sbuf_put(b, digits + whole, nd - whole);
		else
			sbuf_put(b, "0", 1);
	}
}

void py_json_dump(struct sbuf *b, const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		sbuf_put(b, "{", 1);
		const char *key;
		json_t *val;
		bool first = true;
		json_object_foreach((json_t *)v, key, val) {
			if (!first)
				sbuf_puts(b, ", ");
			first = false;
			py_json_str(b, key, strlen(key));
			sbuf_puts(b, ": ");
			py_json_dump(b, val);
		}
		sbuf_put(b, "}", 1);
		break;
	}
	case JSON_ARRAY: {
		sbuf_put(b, "[", 1);
		for (size_t i = 0; i < json_array_size(v); i++) {
			if (i)
				sbuf_puts(b, ", ");
			py_json_dump(b, json_array_get(v, i));
		}
		sbuf_put(b, "]", 1);
		break;
	}
	case JSON_STRING:
		py_json_str(b, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
		sbuf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		break;
	case JSON_REAL:
		py_float(b, json_real_value(v));
		break;
	case JSON_TRUE:
		sbuf_puts(b, "true");
		break;
	case JSON_FALSE:
		sbuf_puts(b, "false");
		break;
	default:
		sbuf_puts(b, "null");
		break;
	}
}

char *py_json_of_text(const char *text)
{
	struct sbuf b = {0};
	json_error_t je;
	json_t *v = json_loads(text, JSON_DECODE_ANY, &je);
	if (v)
		py_json_dump(&b, v);
	else
		py_json_str(&b, text, strlen(text));
	json_decref(v);
	sbuf_put(&b, "", 1);
	if (b.failed) {
		free(b.p);
		return NULL;
	}
	return b.p;
}
