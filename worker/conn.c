/* Answers written to FastCGI or CGI streams. Runs in the worker's request
 * threads. */
#include "conn.h"

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

const char *conn_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 413: return "Content Too Large";
	case 429: return "Too Many Requests";
	case 500: return "Internal Server Error";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Unknown";
	}
}

long conn_read(struct conn *c, char *buf, size_t n)
{
	if (n > (1u << 30))
		n = 1u << 30;
	if (c->fr) {
		int k = FCGX_GetStr(buf, (int)n, c->fr->in);
		return k < 0 ? -1 : k;
	}
	size_t k = fread(buf, 1, n, stdin);
	return ferror(stdin) ? -1 : (long)k;
}

int conn_write(struct conn *c, const char *p, size_t n)
{
	if (c->broken)
		return -1;
	while (n > 0) {
		int chunk = n > (1u << 30) ? 1 << 30 : (int)n;
		int k = c->fr ? FCGX_PutStr(p, chunk, c->fr->out) : (int)fwrite(p, 1, (size_t)chunk, stdout);
		if (k != chunk) {
			c->broken = true;
			return -1;
		}
		p += chunk;
		n -= (size_t)chunk;
	}
	return 0;
}

int conn_flush(struct conn *c)
{
	if (c->broken)
		return -1;
	int rc = c->fr ? FCGX_FFlush(c->fr->out) : fflush(stdout);
	if (rc != 0 || (c->fr && FCGX_GetError(c->fr->out) != 0)) {
		c->broken = true;
		return -1;
	}
	return 0;
}

bool conn_gone(struct conn *c)
{
	if (c->broken)
		return true;
	if (!c->fr || c->fr->ipcFd < 0)
		return false;
	/* After the request the front end sends nothing more (an abort record
	 * at most): end of file means it closed the connection. */
	char b;
	return recv(c->fr->ipcFd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

int conn_head(struct conn *c, int status, const char *content_type, const char *extra)
{
	char h[512];
	c->status = status;
	/* No Status line means 200 (CGI): Caddy passes the line on to the
	 * client as a header, so it is left out where it is not needed. */
	char st[64] = "";
	if (status != 200)
		snprintf(st, sizeof st, "Status: %d %s\r\n", status, conn_reason(status));
	int n = snprintf(h, sizeof h, "%sContent-Type: %s\r\nX-Request-Id: %s\r\n", st,
			 content_type, c->request_id);
	if (n < 0 || (size_t)n >= sizeof h)
		return -1;
	if (conn_write(c, h, (size_t)n) < 0 || (extra && conn_write(c, extra, strlen(extra)) < 0))
		return -1;
	return conn_write(c, "\r\n", 2);
}

int conn_send(struct conn *c, int status, const char *content_type, const char *extra,
	      const char *body, size_t len)
{
	char cl[48];
	char hdr[1024];
	snprintf(cl, sizeof cl, "Content-Length: %zu\r\n", len);
	snprintf(hdr, sizeof hdr, "%s%s", extra ? extra : "", cl);
	if (conn_head(c, status, content_type, hdr) < 0)
		return -1;
	if (!c->head_only && conn_write(c, body, len) < 0)
		return -1;
	return conn_flush(c);
}

int conn_error(struct conn *c, const struct api_error *e, const char *extra)
{
	struct sbuf b = {0};
	api_error_json(&b, e);
	sbuf_put(&b, "\n", 1);
	int rc = b.failed ? -1 : conn_send(c, e->status, "application/json", extra, b.p, b.len);
	sbuf_free(&b);
	return rc;
}
