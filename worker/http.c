/* FastCGI parameters to a route, a request id, a body length and an API
 * key check. Parses untrusted bytes and allocates nothing. Runs in the
 * worker's request threads. */
#include "http.h"
#include "../engine/common.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <stdlib.h>
#include <sys/random.h>

/* Longest path considered; longer ones route nowhere. */
#define PATH_MAX_LEN 2048

const char *http_route_name(enum http_route r)
{
	static const char *const names[ROUTE_COUNT] = {
		[ROUTE_NONE] = "other", [ROUTE_CHAT] = "chat_completions",
		[ROUTE_COMPLETIONS] = "completions", [ROUTE_MODELS] = "models",
		[ROUTE_MODEL] = "model", [ROUTE_HEALTH] = "health", [ROUTE_METRICS] = "metrics",
	};
	return r >= 0 && r < ROUTE_COUNT ? names[r] : "other";
}

const char *http_param(char *const *envp, const char *name)
{
	size_t n = strlen(name);
	for (; envp && *envp; envp++)
		if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=')
			return *envp + n + 1;
	return NULL;
}

/* The route of path[0..len) (no query, prefix stripped), or ROUTE_NONE. */
static enum http_route route_of(const char *p, size_t len, struct http_req *out)
{
	while (len > 1 && p[len - 1] == '/') /* "/v1/models/" is "/v1/models" */
		len--;
	static const struct {
		const char *path;
		enum http_route route;
	} table[] = {
		{"/v1/chat/completions", ROUTE_CHAT}, {"/v1/completions", ROUTE_COMPLETIONS},
		{"/v1/models", ROUTE_MODELS},         {"/health", ROUTE_HEALTH},
		{"/metrics", ROUTE_METRICS},
	};
	for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
		if (strlen(table[i].path) == len && memcmp(table[i].path, p, len) == 0)
			return table[i].route;
	static const char models[] = "/v1/models/";
	size_t m = sizeof models - 1;
	if (len > m && len - m < HTTP_MODEL_ID_LEN && memcmp(p, models, m) == 0) {
		memcpy(out->model_id, p + m, len - m);
		out->model_id[len - m] = 0;
		return ROUTE_MODEL;
	}
	return ROUTE_NONE;
}

/* Routes path (up to '?' or its end) after stripping prefix. */
static enum http_route try_path(const char *path, const char *prefix, struct http_req *out)
{
	if (!path)
		return ROUTE_NONE;
	size_t len = strcspn(path, "?#");
	if (len > PATH_MAX_LEN)
		return ROUTE_NONE;
	size_t pl = prefix ? strlen(prefix) : 0;
	while (pl > 0 && prefix[pl - 1] == '/')
		pl--;
	if (pl > 0) {
		if (len < pl || memcmp(path, prefix, pl) != 0 || (len > pl && path[pl] != '/'))
			return ROUTE_NONE;
		path += pl;
		len -= pl;
	}
	return route_of(path, len, out);
}

static bool id_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == ':' || c == '-';
}

void http_parse(char *const *envp, const char *prefix, struct http_req *out)
{
	memset(out, 0, sizeof *out);
	out->content_length = -1;

	/* The path as the client sent it first (REQUEST_URI: Caddy, Apache,
	 * nginx), then as the front end split it: a front end that strips a
	 * prefix of its own leaves the rest in SCRIPT_NAME + PATH_INFO or in
	 * PATH_INFO alone. */
	const char *script = http_param(envp, "SCRIPT_NAME");
	const char *info = http_param(envp, "PATH_INFO");
	char joined[PATH_MAX_LEN + 2];
	const char *joined_p = NULL;
	size_t sl = script ? strlen(script) : 0, il = info ? strlen(info) : 0;
	if (script && info && sl + il <= PATH_MAX_LEN) {
		memcpy(joined, script, sl);
		memcpy(joined + sl, info, il + 1);
		joined_p = joined;
	}
	const char *candidates[] = {http_param(envp, "REQUEST_URI"), joined_p, info, script,
				    http_param(envp, "DOCUMENT_URI")};
	for (size_t i = 0; i < sizeof candidates / sizeof candidates[0] && !out->route; i++)
		out->route = try_path(candidates[i], prefix, out);

	const char *method = http_param(envp, "REQUEST_METHOD");
	if (!method)
		method = "GET"; /* plain CGI run by hand */
	bool post = strcmp(method, "POST") == 0;
	bool get = strcmp(method, "GET") == 0;
	out->head = strcmp(method, "HEAD") == 0;
	switch (out->route) {
	case ROUTE_CHAT:
	case ROUTE_COMPLETIONS:
		out->method_ok = post;
		out->allow = "POST";
		break;
	case ROUTE_NONE:
		out->method_ok = true;
		out->allow = "";
		break;
	default:
		out->method_ok = get || out->head;
		out->allow = "GET, HEAD";
		break;
	}

	const char *id = http_param(envp, "HTTP_X_REQUEST_ID");
	if (id) {
		size_t n = 0;
		while (id[n] && id_char(id[n]) && n < HTTP_ID_LEN)
			n++;
		if (n > 0 && n < HTTP_ID_LEN && id[n] == 0)
			memcpy(out->request_id, id, n + 1);
	}

	/* Caddy passes a chunked body of unknown length as "-1": read to its end. */
	const char *cl = http_param(envp, "CONTENT_LENGTH");
	if (cl && *cl && strcmp(cl, "-1") != 0) {
		long long v = 0;
		const char *p = cl;
		for (; *p >= '0' && *p <= '9'; p++) {
			if (v > (1LL << 50)) { /* far past any limit: stop counting */
				out->content_length_bad = true;
				break;
			}
			v = v * 10 + (*p - '0');
		}
		if (*p || p == cl)
			out->content_length_bad = true;
		else
			out->content_length = v;
	}
	out->authorization = http_param(envp, "HTTP_AUTHORIZATION");
}

long http_get_values(const unsigned char *in, size_t len, int max_conns, char *out, size_t cap)
{
	size_t n = 0;
	const unsigned char *p = in, *end = in + len;
	while (p < end) {
		size_t l[2];
		for (int k = 0; k < 2; k++) { /* 1 byte, or 4 with the top bit set */
			if (p >= end)
				return -1;
			if (*p < 0x80) {
				l[k] = *p++;
			} else {
				if (end - p < 4)
					return -1;
				l[k] = ((size_t)(p[0] & 0x7f) << 24) | ((size_t)p[1] << 16) |
				       ((size_t)p[2] << 8) | p[3];
				p += 4;
			}
		}
		if (l[0] > (size_t)(end - p) || l[1] > (size_t)(end - p) - l[0])
			return -1;
		char value[16] = "";
		if (l[0] == 15 && memcmp(p, "FCGI_MPXS_CONNS", 15) == 0)
			snprintf(value, sizeof value, "0");
		else if ((l[0] == 14 && memcmp(p, "FCGI_MAX_CONNS", 14) == 0) ||
			 (l[0] == 13 && memcmp(p, "FCGI_MAX_REQS", 13) == 0))
			snprintf(value, sizeof value, "%d", max_conns);
		size_t vl = strlen(value);
		if (vl && n + 2 + l[0] + vl <= cap) {
			out[n++] = (char)l[0];
			out[n++] = (char)vl;
			memcpy(out + n, p, l[0]);
			memcpy(out + n + l[0], value, vl);
			n += l[0] + vl;
		}
		p += l[0] + l[1];
	}
	return (long)n;
}

void http_random_id(char *out, size_t n, const char *alphabet)
{
	unsigned char r[64];
	size_t k = n - 1 < sizeof r ? n - 1 : sizeof r, a = strlen(alphabet);
	if (getrandom(r, k, 0) != (ssize_t)k)
		for (size_t i = 0; i < k; i++)
			r[i] = (unsigned char)rand();
	for (size_t i = 0; i < k; i++)
		out[i] = alphabet[r[i] % a];
	out[k] = 0;
}

int http_keys_load(const char *path, struct http_keys *k, char *err)
{
	memset(k, 0, sizeof *k);
	FILE *f = fopen(path, "r");
	if (!f)
		return ember_err(err, -errno, "open(%s) failed: %s", path, strerror(errno));
	char line[HTTP_KEY_MAX + 4];
	int rc = 0, lineno = 0;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		size_t n = strlen(line);
		if (n == sizeof line - 1 && line[n - 1] != '\n') {
			rc = ember_err(err, -EINVAL, "%s:%d: a key is longer than %d bytes", path,
				       lineno, HTTP_KEY_MAX);
			goto done;
		}
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' ||
				 line[n - 1] == '\t'))
			line[--n] = 0;
		const char *s = line;
		while (*s == ' ' || *s == '\t')
			s++;
		if (!*s || *s == '#')
			continue;
		if (k->n == HTTP_MAX_KEYS) {
			rc = ember_err(err, -EINVAL, "%s: more than %d keys", path, HTTP_MAX_KEYS);
			goto done;
		}
		size_t len = strlen(s);
		if (len > HTTP_KEY_MAX) { /* its newline made it fit the line buffer */
			rc = ember_err(err, -EINVAL, "%s:%d: a key is longer than %d bytes", path,
				       lineno, HTTP_KEY_MAX);
			goto done;
		}
		memcpy(k->key[k->n], s, len + 1);
		k->len[k->n++] = len;
	}
	if (ferror(f))
		rc = ember_err(err, -EIO, "read(%s) failed", path);
	else if (k->n == 0)
		rc = ember_err(err, -EINVAL, "%s holds no key", path);
done:
	fclose(f);
	return rc;
}

bool http_auth_ok(const struct http_keys *k, const char *authorization)
{
	if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
		return false;
	const char *t = authorization + 7;
	while (*t == ' ')
		t++;
	size_t tlen = strnlen(t, HTTP_KEY_MAX + 1);
	unsigned ok = 0;
	for (int i = 0; i < k->n; i++) {
		/* Every byte of every key is looked at, matched or not. */
		unsigned diff = (unsigned)(k->len[i] != tlen);
		for (size_t j = 0; j < k->len[i]; j++)
			diff |= (unsigned char)k->key[i][j] ^ (unsigned char)(j < tlen ? t[j] : 0);
		ok |= diff == 0;
	}
	return ok != 0;
}
