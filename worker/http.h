/* What the worker reads from a request's FastCGI parameters: the route
 * (whatever the front end puts in SCRIPT_NAME, PATH_INFO and REQUEST_URI),
 * the method, the request id, the body length and the API key. Every
 * parameter is untrusted; nothing here allocates. Not the body (api.h).
 * Runs in the worker's request threads. */
#ifndef EMBER_HTTP_H
#define EMBER_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#define HTTP_ID_LEN 65        /* request ids: 1..64 bytes of [A-Za-z0-9._:-] */
#define HTTP_MODEL_ID_LEN 257 /* /v1/models/ID: at most 256 bytes */
#define HTTP_MAX_KEYS 64
#define HTTP_KEY_MAX 256

enum http_route {
	ROUTE_NONE, /* unknown: 404 */
	ROUTE_CHAT,
	ROUTE_COMPLETIONS,
	ROUTE_MODELS,
	ROUTE_MODEL, /* /v1/models/ID */
	ROUTE_HEALTH,
	ROUTE_METRICS,
	ROUTE_COUNT,
};

const char *http_route_name(enum http_route r);

struct http_req {
	enum http_route route;
	bool head;                  /* HEAD: answer as GET without a body */
	bool method_ok;             /* false: 405 with the Allow header below */
	const char *allow;          /* the route's methods */
	char model_id[HTTP_MODEL_ID_LEN];
	char request_id[HTTP_ID_LEN]; /* the client's X-Request-Id when valid, else "" */
	long long content_length;   /* -1: none given */
	bool content_length_bad;    /* given but not a decimal count */
	const char *authorization;  /* HTTP_AUTHORIZATION or NULL */
};

/* The value of parameter name in envp ("NAME=value" strings, NULL-ended),
 * or NULL. */
const char *http_param(char *const *envp, const char *name);

/* Reads the parameters into *out. prefix ("" or NULL for none) is stripped
 * from the path before routing. Never fails: what is not understood
 * becomes ROUTE_NONE, method_ok false or content_length_bad. */
void http_parse(char *const *envp, const char *prefix, struct http_req *out);

/* Writes n - 1 random characters of alphabet (at most 64 of them) and a
 * NUL to out: request and completion ids. */
void http_random_id(char *out, size_t n, const char *alphabet);

/* Room for the answer to FCGI_GET_VALUES (three names and short values). */
#define HTTP_VALUES_MAX 128

/* The body of the answer to an FCGI_GET_VALUES record whose body is
 * in[0..len) (name-value pairs in FastCGI's encoding): FCGI_MPXS_CONNS 0,
 * and max_conns for FCGI_MAX_CONNS and FCGI_MAX_REQS; other names are left
 * out. Writes at most cap bytes to out; returns their count, or -1 for a
 * malformed body. */
long http_get_values(const unsigned char *in, size_t len, int max_conns, char *out, size_t cap);

/* API keys, one per line of a file; blank lines and lines starting with '#'
 * are skipped. */
struct http_keys {
	int n;
	char key[HTTP_MAX_KEYS][HTTP_KEY_MAX + 1];
	size_t len[HTTP_MAX_KEYS];
};

/* Loads path into *k. Returns 0, or a negative errno with err set (no
 * file, no key in it, a key too long, too many keys). */
int http_keys_load(const char *path, struct http_keys *k, char *err);

/* Whether an Authorization header value ("Bearer KEY") names one of the
 * keys. Compares every key in time that depends on the keys' lengths only. */
bool http_auth_ok(const struct http_keys *k, const char *authorization);

#endif
