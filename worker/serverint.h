/* The worker's server (server.h) inside: its state and a request thread's,
 * shared by its threads (server.c), its routes (routes.c) and its start
 * (load.c). Not for use outside those files. */
#ifndef EMBER_SERVERINT_H
#define EMBER_SERVERINT_H

#include "complete.h"
#include "conn.h"
#include "http.h"
#include "metrics.h"
#include "server.h"
#include "../supervisor/scoreboard.h"

#include <pthread.h>

struct server {
	const struct server_opts *o;
	struct model *m;
	struct tokenizer *tok;
	struct backend *b;
	struct http_keys *keys;
	struct comp_env env;
	struct metrics met;           /* into the scoreboard slot, or the two below */
	struct met_counters own_counters;
	struct met_gauges own_gauges;
	double start_time;
	int listen_fd;
	pthread_mutex_t accept_mu;
	char model_name[API_MODEL_LEN];
	struct scoreboard *sb;        /* under emberd: the pool's scoreboard, else NULL */
	struct sb_slot *slot;         /* this worker's slot in it */
	int event_fd;                 /* emberd's event pipe (sb_event), or -1 */
	/* the start's phases (CLOCK_MONOTONIC seconds), for the ready line */
	double t_run, t_model, t_tok, t_both; /* t_both: the tokenizer and the device side by side */
	struct device_stats dev;
};

struct req_thread {
	struct server *s;
	pthread_t th;
	struct comp_thread ct;
	struct sbuf body;
	bool started;
};

/* Answers the request on c (routing, auth, the body, logging, metrics). */
void route_request(struct req_thread *rt, struct conn *c);

/* Loads the model, its tokenizer and chat template, the backend and the
 * scheduler into s. Returns 0 or -1 (logged). */
int server_load(struct server *s);

/* Logs where the start went (the ready line). */
void server_log_start(const struct server *s);

#endif
