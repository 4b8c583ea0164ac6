/* One request's connection as the request threads see it: its parameters,
 * its body and its answer, over FastCGI (libfcgi) or plain CGI (stdin and
 * stdout). Writes report failure so that a client who left is noticed.
 * Runs in the worker's request threads. */
#ifndef EMBER_CONN_H
#define EMBER_CONN_H

#include "api.h"

#include <fcgiapp.h>

struct conn {
	FCGX_Request *fr;         /* NULL under CGI */
	char **envp;
	char request_id[72];      /* sent back as X-Request-Id */
	int status;               /* of the answer, once its head is sent */
	bool head_only;           /* HEAD: no body */
	bool broken;              /* a write failed: the client is gone */
};

/* Reads up to n bytes of the body; returns the count (0 at its end) or -1. */
long conn_read(struct conn *c, char *buf, size_t n);
/* Writes n bytes; returns 0, or -1 (and sets broken) when the client is gone. */
int conn_write(struct conn *c, const char *p, size_t n);
int conn_flush(struct conn *c);
/* Whether the front end closed the connection (a client that left, for a
 * request whose answer has not begun); never true under CGI. */
bool conn_gone(struct conn *c);

/* Sends the status line and headers: Content-Type, X-Request-Id and extra
 * (complete "Name: value\r\n" lines, or NULL). */
int conn_head(struct conn *c, int status, const char *content_type, const char *extra);
/* A whole answer with a body of content_type. */
int conn_send(struct conn *c, int status, const char *content_type, const char *extra,
	      const char *body, size_t len);
/* An error answer in OpenAI's shape. */
int conn_error(struct conn *c, const struct api_error *e, const char *extra);

const char *conn_reason(int status);

#endif
