/* Fuzz target: a request's FastCGI parameters. The input is name-value
 * pairs in FastCGI's encoding (lengths of 1 byte, or 4 with the high bit
 * set), decoded here as libfcgi decodes them, then routed, read for the
 * request id and body length and checked against API keys, with and
 * without a prefix; and the same bytes as an FCGI_GET_VALUES record. */
#include "../../worker/http.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads a FastCGI length at *p; returns false when the input ends. */
static bool read_len(const uint8_t **p, const uint8_t *end, size_t *out)
{
	if (*p >= end)
		return false;
	if (**p < 0x80) {
		*out = *(*p)++;
		return true;
	}
	if (end - *p < 4)
		return false;
	*out = ((size_t)((*p)[0] & 0x7f) << 24) | ((size_t)(*p)[1] << 16) | ((size_t)(*p)[2] << 8) |
	       (*p)[3];
	*p += 4;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum { MAX_PARAMS = 64 };
	char *envp[MAX_PARAMS + 1] = {0};
	int n = 0;
	const uint8_t *p = data, *end = data + size;
	while (n < MAX_PARAMS) {
		size_t nl, vl;
		if (!read_len(&p, end, &nl) || !read_len(&p, end, &vl) || nl > (size_t)(end - p) ||
		    vl > (size_t)(end - p) - nl)
			break;
		char *s = malloc(nl + vl + 2);
		if (!s)
			break;
		memcpy(s, p, nl);
		s[nl] = '=';
		memcpy(s + nl + 1, p + nl, vl);
		s[nl + 1 + vl] = 0;
		envp[n++] = s;
		p += nl + vl;
	}
	struct http_req h;
	static const char *const prefixes[] = {NULL, "/llm", "/a/b/"};
	for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
		http_parse(envp, prefixes[i], &h);
		if (h.route < ROUTE_NONE || h.route >= ROUTE_COUNT || !h.allow ||
		    strlen(h.request_id) >= HTTP_ID_LEN || strlen(h.model_id) >= HTTP_MODEL_ID_LEN ||
		    (h.content_length < -1) || (h.route != ROUTE_MODEL && h.model_id[0]))
			abort();
	}
	struct http_keys k = {.n = 2, .key = {"sk-one", "another-key"}, .len = {6, 11}};
	if (http_auth_ok(&k, h.authorization) && h.authorization &&
	    !strstr(h.authorization, "sk-one") && !strstr(h.authorization, "another-key"))
		abort();
	/* The same bytes as the body of an FCGI_GET_VALUES record. */
	char out[HTTP_VALUES_MAX];
	long m = http_get_values(data, size < 65535 ? size : 65535, 9, out, sizeof out);
	if (m > (long)sizeof out)
		abort();
	for (int i = 0; i < n; i++)
		free(envp[i]);
	return 0;
}
