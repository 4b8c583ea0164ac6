/* ember-worker's server modes: FastCGI on a socket it opens or inherits,
 * and plain CGI; the request threads, the engine thread running the
 * scheduler, and the routes of the OpenAI-compatible API. Not the
 * command-line mode (cli.c). Runs as its own process. */
#ifndef EMBER_SERVER_H
#define EMBER_SERVER_H

#include "../engine/device.h"

#include <stdbool.h>
#include <stddef.h>

struct server_opts {
	const char *model_dir;
	const char *model_name;    /* NULL: the directory's base name */
	const char *listen;        /* "/path.sock", "HOST:PORT" or NULL */
	int listen_mode;           /* permissions of a unix socket it creates */
	const char *listen_group;  /* its group, or NULL */
	int listen_fd;             /* an inherited listening socket, or -1 */
	bool cgi;                  /* one request from the environment and stdin */
	const char *prefix;        /* stripped from paths before routing; may be NULL */
	const char *api_key_file;  /* NULL: no key needed */
	const char *chat_template; /* NULL: recognise the model's */
	const char *forced_output; /* tests' seam (sched_opts.forced): NULL, or every answer's text */
	int slots;                 /* concurrent sequences */
	int queue;                 /* requests that may wait for a slot beyond those */
	double queue_timeout;      /* seconds a request may wait for a slot: then 503 */
	double request_timeout;    /* seconds a generation may take */
	double keepalive;          /* seconds between keep-alive comments on an idle stream */
	double drain_timeout;      /* seconds in-flight requests get after SIGTERM */
	size_t max_body_bytes;
	int max_prompt_tokens;     /* 0: the context */
	int ctx;                   /* 0: the model's, at most 4096 */
	int threads;               /* CPU threads; 0: one per processor */
	int kv_mb;                 /* 0: room for every slot's full context (CPU) or
	                            * gpu_memory_fraction of the GPU's free memory */
	const struct device *device; /* --device (NULL: auto) */
	double gpu_memory_fraction; /* 0: 0.9 */
	int max_batch_tokens;      /* 0: 512 */
};

/* Loads the model and serves until SIGTERM or SIGINT (after draining) or,
 * as CGI, one request. Returns the process's exit status. */
int server_run(const struct server_opts *o);

#endif
