/* ember-worker as a FastCGI server (on a socket it opens or inherits) or as
 * plain CGI: loads the model, starts the engine thread and the request
 * threads, routes requests and drains on SIGTERM. Runs as its own process. */
#include "server.h"
#include "complete.h"
#include "http.h"
#include "../engine/chat.h"
#include "../engine/cpu.h"
#include "../supervisor/scoreboard.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

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

/* --- routes other than the generation ones ---------------------------------- */

static void answer_json(struct conn *c, struct sbuf *b)
{
	if (b->failed) {
		struct api_error e;
		api_fail(&e, 503, "server_error", "out_of_memory", NULL, "out of memory");
		conn_error(c, &e, NULL);
		return;
	}
	conn_send(c, 200, "application/json", NULL, b->p, b->len);
}

static void model_object(struct server *s, struct sbuf *b)
{
	sbuf_puts(b, "{\"id\":");
	sbuf_json_str(b, s->model_name, strlen(s->model_name));
	sbuf_printf(b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"ember\","
		       "\"max_model_len\":%d}", (long long)s->start_time, s->env.ctx);
}

/* The pool's part of /metrics, from the scoreboard every worker shares. */
static void pool_metrics(const struct scoreboard *sb, struct sbuf *b)
{
	int by_state[SB_DRAINING + 1] = {0};
	int busy = 0;
	for (uint32_t i = 0; i < sb->pool.n_slots; i++) {
		int st = atomic_load(&sb->slot[i].state);
		if (st >= 0 && st <= SB_DRAINING)
			by_state[st]++;
		if (st != SB_FREE)
			busy += atomic_load(&sb->slot[i].busy);
	}
	sbuf_puts(b, "# HELP ember_pool_workers Worker processes of the pool, by state.\n"
		     "# TYPE ember_pool_workers gauge\n");
	for (int st = SB_STARTING; st <= SB_DRAINING; st++)
		sbuf_printf(b, "ember_pool_workers{state=\"%s\"} %d\n", sb_state_name(st), by_state[st]);
	const struct {
		const char *name, *type, *help;
		double v;
	} rows[] = {
		{"ember_pool_worker_slots", "gauge", "Most workers (emberd's --max-workers).",
		 sb->pool.n_slots},
		{"ember_pool_requests_in_progress", "gauge", "Requests being answered in the pool.", busy},
		{"ember_pool_spawns_total", "counter", "Workers started.",
		 (double)atomic_load(&sb->pool.spawns)},
		{"ember_pool_crashes_total", "counter", "Workers that exited without being asked.",
		 (double)atomic_load(&sb->pool.crashes)},
		{"ember_pool_cold_starts_total", "counter", "Workers that became ready.",
		 (double)atomic_load(&sb->pool.cold_starts)},
		{"ember_pool_cold_start_seconds_total", "counter", "Time from fork to ready, summed.",
		 (double)atomic_load(&sb->pool.cold_start_us) * 1e-6},
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
		sbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", rows[i].name, rows[i].help,
			    rows[i].name, rows[i].type, rows[i].name, rows[i].v);
}

/* Reads the body of a POST into rt->body: at most max_body_bytes, exactly
 * CONTENT_LENGTH when given. Returns 0 or -1 with *e set. */
static int read_body(struct req_thread *rt, struct conn *c, const struct http_req *h,
		     struct api_error *e)
{
	size_t max = rt->s->o->max_body_bytes;
	struct sbuf *b = &rt->body;
	b->len = 0;
	if (h->content_length_bad)
		return api_fail(e, 400, "invalid_request_error", "invalid_content_length", NULL,
				"Content-Length is not a number of bytes");
	if (h->content_length > (long long)max)
		return api_fail(e, 413, "invalid_request_error", "request_too_large", NULL,
				"the body has %lld bytes; this server takes at most %zu",
				h->content_length, max);
	size_t want = h->content_length >= 0 ? (size_t)h->content_length : max + 1;
	char buf[16384];
	while (b->len < want) {
		size_t n = want - b->len < sizeof buf ? want - b->len : sizeof buf;
		long k = conn_read(c, buf, n);
		if (k < 0)
			return api_fail(e, 400, "invalid_request_error", "invalid_body", NULL,
					"reading the body failed");
		if (k == 0)
			break;
		sbuf_put(b, buf, (size_t)k);
		if (b->failed)
			return api_fail(e, 503, "server_error", "out_of_memory", NULL, "out of memory");
	}
	if (b->len > max)
		return api_fail(e, 413, "invalid_request_error", "request_too_large", NULL,
				"the body is larger than %zu bytes", max);
	if (h->content_length >= 0 && b->len < want)
		return api_fail(e, 400, "invalid_request_error", "invalid_body", NULL,
				"the body ended after %zu of %lld bytes", b->len, h->content_length);
	sbuf_put(b, "", 0);
	return 0;
}

static void handle(struct req_thread *rt, struct conn *c)
{
	struct server *s = rt->s;
	double t0 = ember_now();
	struct http_req h;
	http_parse(c->envp, s->o->prefix, &h);
	if (h.request_id[0])
		snprintf(c->request_id, sizeof c->request_id, "%s", h.request_id);
	else
		http_random_id(c->request_id, 33, "0123456789abcdef");
	c->head_only = h.head;
	const char *method = http_param(c->envp, "REQUEST_METHOD");
	struct wlog_req log = {.request_id = c->request_id, .route = http_route_name(h.route),
			       .model = s->model_name};
	char method_copy[16];
	snprintf(method_copy, sizeof method_copy, "%s", method ? method : "GET");
	log.method = method_copy;
	struct api_error e;
	struct sbuf *b = &rt->ct.out;
	/* The thread's buffers start each request empty, and a failure to
	 * grow one is not carried over. */
	struct sbuf *bufs[] = {&rt->ct.out, &rt->ct.tmp, &rt->body};
	for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
		bufs[i]->len = 0;
		bufs[i]->failed = false;
	}

	if (h.route == ROUTE_NONE) {
		api_fail(&e, 404, "invalid_request_error", "not_found", NULL,
			 "no route for this path; see /v1/models, /v1/chat/completions, "
			 "/v1/completions, /health, /metrics");
		goto error;
	}
	if (!h.method_ok) {
		char allow[64];
		snprintf(allow, sizeof allow, "Allow: %s\r\n", h.allow);
		api_fail(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
			 "%s takes %s, not %s", http_route_name(h.route), h.allow, log.method);
		conn_error(c, &e, allow);
		log.error_code = e.code;
		goto done;
	}
	if (s->keys && h.route != ROUTE_HEALTH && !http_auth_ok(s->keys, h.authorization)) {
		api_fail(&e, 401, "invalid_request_error", "invalid_api_key", NULL,
			 h.authorization ? "the API key is not valid"
					 : "an API key is needed: Authorization: Bearer KEY");
		conn_error(c, &e, "WWW-Authenticate: Bearer\r\n");
		log.error_code = e.code;
		goto done;
	}
	switch (h.route) {
	case ROUTE_HEALTH:
		sbuf_puts(b, "{\"status\":\"ok\",\"model\":");
		sbuf_json_str(b, s->model_name, strlen(s->model_name));
		sbuf_printf(b, ",\"slots\":%d,\"busy\":%lld}\n", s->env.slots,
			    (long long)atomic_load(&s->met.g->busy_slots));
		answer_json(c, b);
		break;
	case ROUTE_METRICS: {
		/* Count this request first, so that it shows in its own answer. */
		met_request(&s->met, h.route, 200);
		if (s->sb) { /* the whole pool's, since emberd started */
			_Atomic uint64_t counters[SB_COUNTER_WORDS];
			_Atomic int64_t gauges[SB_GAUGE_WORDS];
			sb_sum(s->sb, counters, gauges);
			met_render((const struct met_counters *)counters,
				   (const struct met_gauges *)gauges, (double)s->sb->pool.started_unix, b);
			pool_metrics(s->sb, b);
		} else {
			met_render(s->met.c, s->met.g, s->start_time, b);
		}
		if (b->failed) {
			api_fail(&e, 503, "server_error", "out_of_memory", NULL, "out of memory");
			goto error;
		}
		conn_send(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b->p, b->len);
		goto logged;
	}
	case ROUTE_MODELS:
		sbuf_puts(b, "{\"object\":\"list\",\"data\":[");
		model_object(s, b);
		sbuf_puts(b, "]}\n");
		answer_json(c, b);
		break;
	case ROUTE_MODEL:
		if (strcmp(h.model_id, s->model_name) != 0) {
			api_fail(&e, 404, "invalid_request_error", "model_not_found", "model",
				 "the model '%.64s' does not exist; this server has '%s'", h.model_id,
				 s->model_name);
			goto error;
		}
		model_object(s, b);
		sbuf_puts(b, "\n");
		answer_json(c, b);
		break;
	case ROUTE_CHAT:
	case ROUTE_COMPLETIONS:
		if (s->slot) { /* demand, for emberd's scaling */
			if (atomic_fetch_add(&s->slot->busy, 1) + 1 == s->o->slots)
				sb_event(s->event_fd, SB_EV_FULL);
			atomic_store(&s->slot->last_active_ms, sb_now_ms());
		}
		if (read_body(rt, c, &h, &e) == 0) {
			complete_handle(&s->env, &rt->ct, c,
					h.route == ROUTE_CHAT ? API_CHAT : API_COMPLETION, rt->body.p,
					rt->body.len, &log);
		} else {
			conn_error(c, &e, NULL);
			log.error_code = e.code;
		}
		if (s->slot) {
			atomic_fetch_add(&s->slot->requests, 1);
			atomic_fetch_add(&s->slot->tokens, (uint64_t)log.completion_tokens);
			atomic_store(&s->slot->last_active_ms, sb_now_ms());
			atomic_fetch_sub(&s->slot->busy, 1);
		}
		break;
	default:
		break;
	}
	goto done;
error:
	conn_error(c, &e, NULL);
	log.error_code = e.code;
done:
	met_request(&s->met, h.route, c->status);
logged:
	log.status = c->status;
	log.duration_ms = (ember_now() - t0) * 1e3;
	if (h.route == ROUTE_CHAT || h.route == ROUTE_COMPLETIONS)
		met_observe(&s->met.c->duration, ember_now() - t0);
	wlog_request(&log);
	/* A large body or answer is not kept for the next request. */
	for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
		if (bufs[i]->cap > (1u << 20))
			sbuf_free(bufs[i]);
}

/* --- threads ---------------------------------------------------------------- */

/* Answers the management records (FCGI_GET_VALUES) a front end may send on
 * a new connection before its first request: FCGI_MPXS_CONNS is 0 (one
 * request per connection at a time), FCGI_MAX_CONNS and FCGI_MAX_REQS the
 * request threads. libfcgi reads such a record before a request without
 * answering it, so the worker answers it here. Returns 0 when a request
 * record is next, -1 when the connection ended or misbehaved. */
/* Seconds a read of a request may wait for its bytes. */
#define READ_TIMEOUT_S 30
/* Seconds a connection kept open by the front end (FCGI_KEEP_CONN) may
 * sit idle between requests before the worker closes it. */
#define KEEP_IDLE_S 5

static int answer_management(int fd, int max_conns)
{
	for (;;) {
		/* MSG_WAITALL does not apply to MSG_PEEK on unix sockets: peek
		 * until the header is all there (reads time out, see below). */
		unsigned char h[8];
		ssize_t got;
		double until = ember_now() + READ_TIMEOUT_S;
		while ((got = recv(fd, h, sizeof h, MSG_PEEK)) > 0 && got < (ssize_t)sizeof h) {
			if (ember_now() > until)
				return -1;
			usleep(1000); /* the rest of a header split in two is on its way */
		}
		if (got != (ssize_t)sizeof h)
			return -1;
		if (h[0] != 1 || h[1] != 9 /* FCGI_GET_VALUES */ || h[2] || h[3])
			return 0;
		size_t clen = (size_t)h[4] << 8 | h[5], total = sizeof h + clen + h[6];
		unsigned char rec[8 + 65535 + 255];
		if (recv(fd, rec, total, MSG_WAITALL) != (ssize_t)total)
			return -1;
		char body[HTTP_VALUES_MAX];
		long n = http_get_values(rec + 8, clen, max_conns, body, sizeof body);
		if (n < 0)
			return -1;
		unsigned char out[8 + sizeof body + 8] = {1, 10 /* FCGI_GET_VALUES_RESULT */, 0, 0,
							 (unsigned char)(n >> 8), (unsigned char)n,
							 (unsigned char)((8 - n % 8) % 8), 0};
		memcpy(out + 8, body, (size_t)n);
		size_t olen = 8 + (size_t)n + out[6];
		if (send(fd, out, olen, MSG_NOSIGNAL) != (ssize_t)olen)
			return -1;
	}
}

/* The next connection with a request on it, or -1 once the worker stops.
 * Reads on it time out after READ_TIMEOUT_S, so that a peer that connects
 * and sends nothing (or too slowly) cannot hold a thread for ever.
 * One thread at a time waits on the (non-blocking) listening socket and
 * looks at the stop flag between polls, so that a drain never leaves a
 * connection accepted and unanswered. */
static int next_connection(struct server *s, int max_conns)
{
	for (;;) {
		int fd = -1;
		pthread_mutex_lock(&s->accept_mu);
		while (fd < 0 && !atomic_load(&s->env.stopping)) {
			struct pollfd p = {.fd = s->listen_fd, .events = POLLIN};
			int r = poll(&p, 1, 200);
			if (r < 0 && errno != EINTR) {
				wlog(3, "poll(listening socket) failed: %s", strerror(errno));
				break;
			}
			if (r <= 0)
				continue;
			fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
			if (fd < 0 && errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
				wlog(3, "accept failed: %s", strerror(errno));
				usleep(100 * 1000); /* out of descriptors: do not spin */
			}
		}
		pthread_mutex_unlock(&s->accept_mu);
		if (fd < 0)
			return -1;
		struct timeval tv = {.tv_sec = READ_TIMEOUT_S};
		if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0 &&
		    answer_management(fd, max_conns) == 0)
			return fd;
		close(fd);
	}
}

/* On a connection the front end keeps open: whether its next request
 * starts within KEEP_IDLE_S seconds (and before the worker stops). */
static bool next_request_comes(struct server *s, int fd)
{
	for (int waited = 0; waited < KEEP_IDLE_S * 1000 && !atomic_load(&s->env.stopping);
	     waited += 200) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int r = poll(&p, 1, 200);
		if (r > 0)
			return (p.revents & POLLIN) != 0;
		if (r < 0 && errno != EINTR)
			return false;
	}
	return false;
}

static void *request_thread(void *arg)
{
	struct req_thread *rt = arg;
	struct server *s = rt->s;
	FCGX_Request req;
	/* No listening socket for libfcgi: connections are accepted above and
	 * handed to it, so it never accepts (or blocks) on its own. */
	if (FCGX_InitRequest(&req, -1, 0) != 0) {
		wlog(3, "FCGX_InitRequest failed");
		return NULL;
	}
	int max_conns = s->o->slots + s->o->queue;
	for (;;) {
		if (req.ipcFd >= 0 && !next_request_comes(s, req.ipcFd)) {
			close(req.ipcFd);
			req.ipcFd = -1;
		}
		if (req.ipcFd < 0) {
			int fd = next_connection(s, max_conns);
			if (fd < 0)
				break;
			req.ipcFd = fd;
			req.keepConnection = 1; /* so that FCGX_Accept_r reads it, not closes it */
		}
		/* On a connection the front end keeps open (FCGI_KEEP_CONN),
		 * the next request comes on it; when it ends, libfcgi closes it
		 * and sets ipcFd to -1. */
		if (FCGX_Accept_r(&req) < 0)
			continue;
		struct conn c = {.fr = &req, .envp = req.envp};
		handle(rt, &c);
		FCGX_Finish_r(&req);
	}
	FCGX_Free(&req, 1);
	return NULL;
}

/* --- start and stop --------------------------------------------------------- */

/* Opens the listening socket of --listen: a unix socket path (a stale
 * socket file is replaced) or HOST:PORT. Returns the fd or -1 (logged). */
static int open_listen(const char *addr, int mode)
{
	int fd = -1;
	if (addr[0] == '/' || addr[0] == '.') {
		struct sockaddr_un un = {.sun_family = AF_UNIX};
		if (strlen(addr) >= sizeof un.sun_path) {
			wlog(3, "--listen %s: the path is too long", addr);
			return -1;
		}
		strcpy(un.sun_path, addr);
		struct stat st;
		if (lstat(addr, &st) == 0 && S_ISSOCK(st.st_mode))
			unlink(addr);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&un, sizeof un) < 0) {
			wlog(3, "bind(%s) failed: %s", addr, strerror(errno));
			goto fail;
		}
		if (chmod(addr, (mode_t)mode) < 0) {
			wlog(3, "chmod(%s) failed: %s", addr, strerror(errno));
			goto fail;
		}
	} else {
		char host[256];
		const char *colon = strrchr(addr, ':');
		if (!colon || (size_t)(colon - addr) >= sizeof host) {
			wlog(3, "--listen %s: want a socket path or HOST:PORT", addr);
			return -1;
		}
		memcpy(host, addr, (size_t)(colon - addr));
		host[colon - addr] = 0;
		char *h = host;
		if (h[0] == '[' && h[strlen(h) - 1] == ']') { /* [::1]:9000 */
			h[strlen(h) - 1] = 0;
			h++;
		}
		struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
		struct addrinfo *ai = NULL;
		int rc = getaddrinfo(*h ? h : NULL, colon + 1, &hints, &ai);
		if (rc != 0) {
			wlog(3, "--listen %s: %s", addr, gai_strerror(rc));
			return -1;
		}
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int one = 1;
		if (fd >= 0)
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
			wlog(3, "bind(%s) failed: %s", addr, strerror(errno));
			freeaddrinfo(ai);
			goto fail;
		}
		freeaddrinfo(ai);
	}
	if (listen(fd, SOMAXCONN) < 0) {
		wlog(3, "listen(%s) failed: %s", addr, strerror(errno));
		goto fail;
	}
	return fd;
fail:
	if (fd >= 0)
		close(fd);
	return -1;
}

/* A tokenizer loading in a thread of its own. */
struct tok_job {
	struct mfiles *files;
	struct tokenizer *tok;
	int rc;
	double seconds;
	char err[EMBER_ERR_LEN];
};

static void *tok_job_run(void *arg)
{
	struct tok_job *j = arg;
	double t0 = ember_now();
	j->rc = tok_load(j->files, &j->tok, j->err);
	j->seconds = ember_now() - t0;
	return NULL;
}

/* The backend on the device the flags name, with a KV cache for the
 * context (env.ctx, set here). Returns 0 or -1 (logged). */
static int start_device(struct server *s)
{
	const struct server_opts *o = s->o;
	char err[EMBER_ERR_LEN];
	int ctx = o->ctx > 0 ? o->ctx : 4096;
	s->env.ctx = ctx < s->m->cfg.max_pos ? ctx : s->m->cfg.max_pos;
	const struct device *dev = device_resolve(o->device);
	struct device_opts co = {.threads = o->threads, .max_ctx = s->env.ctx,
				 .max_seqs = o->slots, .max_tokens = o->max_batch_tokens,
				 .gpu_memory_fraction = o->gpu_memory_fraction, .stats = &s->dev};
	size_t block_bytes = dev->kv_block_bytes(s->m);
	/* Without --kv-cache-mb the device sizes the pool (device.h). */
	co.kv_blocks = o->kv_mb > 0 ? (int)((size_t)o->kv_mb * 1024 * 1024 / block_bytes) : -1;
	if (co.kv_blocks == 0) {
		wlog(3, "--kv-cache-mb %d holds no block of %zu bytes", o->kv_mb, block_bytes);
		return -1;
	}
	if (device_backend_create(dev, s->m, &co, &s->b, err) < 0) {
		wlog(3, "cannot start the engine: %s", err);
		return -1;
	}
	/* For the tests of a failed step: EMBER_FAULT_STEPS=N lets N steps
	 * run, then every step fails, as after a GPU's sticky error. */
	const char *fault = getenv("EMBER_FAULT_STEPS");
	if (fault) {
		char *end;
		long n = strtol(fault, &end, 10);
		if (*end || end == fault || n < 0) {
			wlog(3, "EMBER_FAULT_STEPS=%s is not a number of steps", fault);
			return -1;
		}
		if (be_fault_create(s->b, n, &s->b, err) < 0) {
			s->b = NULL;
			wlog(3, "EMBER_FAULT_STEPS: %s", err);
			return -1;
		}
		wlog(4, "EMBER_FAULT_STEPS=%ld: every step after the %ld-th fails", n, n);
	}
	return 0;
}

/* Loads the model, its tokenizer and chat template, the backend and the
 * scheduler. Returns 0 or -1 (logged). */
static int load(struct server *s)
{
	const struct server_opts *o = s->o;
	char err[EMBER_ERR_LEN];
	double t0 = ember_now();
	/* From the supervisor's weight image when it hands one over, else
	 * from the directory's files. */
	const char *wfd = getenv("EMBER_WEIGHTS_FD");
	int rc;
	if (wfd) {
		char *end;
		long fd = strtol(wfd, &end, 10);
		struct mfiles *mf = NULL;
		if (*end || end == wfd || fd < 0 || fd > INT_MAX) {
			wlog(3, "EMBER_WEIGHTS_FD=%s is not a file descriptor", wfd);
			return -1;
		}
		rc = mf_open_image((int)fd, &mf, err);
		if (rc == 0)
			rc = model_open(mf, &s->m, err);
	} else {
		rc = model_open_dir(o->model_dir, &s->m, err);
	}
	if (rc < 0) {
		wlog(3, "cannot load the model: %s", err);
		return -1;
	}
	s->t_model = ember_now() - t0;
	/* The tokenizer (parsing tokenizer.json takes a good part of a cold
	 * start) loads in a thread of its own while the device takes the
	 * weights: meanwhile that thread alone reads the model's files, the
	 * device only the tensors model_open mapped. */
	struct tok_job tj = {s->m->files, NULL, 0, 0, ""};
	pthread_t tok_thread;
	bool tok_threaded = pthread_create(&tok_thread, NULL, tok_job_run, &tj) == 0;
	if (!tok_threaded)
		tok_job_run(&tj);
	double t1 = ember_now();
	rc = start_device(s);
	if (tok_threaded)
		pthread_join(tok_thread, NULL);
	s->t_both = ember_now() - t1;
	s->tok = tj.tok;
	s->t_tok = tj.seconds;
	if (tj.rc < 0) {
		wlog(3, "cannot load the tokenizer: %s", tj.err);
		return -1;
	}
	if (rc < 0)
		return -1;
	struct comp_env *env = &s->env;
	env->m = s->m;
	env->tok = s->tok;
	env->met = &s->met;
	env->model_name = s->model_name;
	env->max_prompt_tokens = o->max_prompt_tokens;
	env->request_timeout = o->request_timeout;
	env->keepalive = o->keepalive;
	env->queue_timeout = o->queue_timeout;
	env->slots = o->slots;
	env->family = -1;
	if (o->chat_template) {
		env->family = chat_family_from_name(o->chat_template);
		if (env->family < 0) {
			wlog(3, "--chat-template %s is not one of deepseek-v3, qwen3, llama3",
			     o->chat_template);
			return -1;
		}
	} else {
		env->family = chat_detect(tok_chat_template(s->tok), env->family_err);
		if (env->family < 0)
			wlog(4, "chat completions are off: %s", env->family_err);
	}
	size_t blen = 0;
	const char *bos = tok_bos(s->tok) >= 0 ? tok_piece(s->tok, tok_bos(s->tok), &blen) : "";
	snprintf(env->bos, sizeof env->bos, "%.*s", (int)blen, bos ? bos : "");
	for (int k = 0; k < s->m->n_stop_ids && env->n_stop_ids < SCHED_MAX_STOP_IDS; k++)
		env->stop_ids[env->n_stop_ids++] = s->m->stop_ids[k];
	if (tok_eos(s->tok) >= 0 && env->n_stop_ids < SCHED_MAX_STOP_IDS)
		env->stop_ids[env->n_stop_ids++] = tok_eos(s->tok);

	struct sched_opts so = {.max_batch_tokens = o->max_batch_tokens, .tok = s->tok};
	if (sched_create(s->b, &so, &env->sched, err) < 0) {
		wlog(3, "cannot start the engine: %s", err);
		return -1;
	}
	int blocks = s->b->kv_blocks;
	env->kv_tokens = blocks > INT_MAX / KV_BLOCK ? INT_MAX : blocks * KV_BLOCK;
	wlog(6, "model %s loaded on %s (%s, %d layers, context %d, %d slots, %d KV blocks) in %.3f s",
	     s->model_name, s->b->name, s->m->cfg.arch_name, s->m->cfg.n_layers, env->ctx, o->slots,
	     blocks, ember_now() - t0);
	return 0;
}

/* Where the start went, for cold-start budgets: under emberd from its
 * fork (the scoreboard's started_ms, on the same monotonic clock); the
 * tokenizer beside the device, and on a GPU the weights' upload and the
 * graphs' capture. */
static void log_start(const struct server *s)
{
	double now = ember_now(), before = 0;
	if (s->slot)
		before = s->t_run - (double)atomic_load(&s->slot->started_ms) / 1000;
	const struct device_stats *d = &s->dev;
	char gpu[160] = "";
	if (d->upload_s > 0)
		snprintf(gpu, sizeof gpu,
			 ", weights to the GPU %.3f s (%.2f GB/s), graph capture %.3f s (%d graphs)",
			 d->upload_s, (double)d->upload_bytes / 1e9 / d->upload_s, d->graph_s, d->graphs);
	if (d->graph_error[0])
		wlog(4, "CUDA graphs stopped after %d batch sizes (larger decode steps run kernel by "
		     "kernel): %s", d->graphs, d->graph_error);
	wlog(6, "ready %.3f s after %s: process start %.3f s, model %.3f s, tokenizer %.3f s, %s "
	     "init %.3f s%s, tokenizer and device side by side %.3f s, the rest %.3f s",
	     now - s->t_run + before, s->slot ? "emberd's fork" : "the process started", before,
	     s->t_model, s->t_tok, s->b->name, d->init_s, gpu, s->t_both,
	     now - s->t_run - s->t_model - s->t_both);
}

static int init_thread(struct req_thread *rt, struct server *s)
{
	rt->s = s;
	rt->ct.tc = tok_ctx_create(s->tok);
	return rt->ct.tc ? 0 : -1;
}

static void fini_thread(struct req_thread *rt)
{
	tok_ctx_destroy(rt->ct.tc);
	free(rt->ct.ids);
	sbuf_free(&rt->ct.out);
	sbuf_free(&rt->ct.tmp);
	sbuf_free(&rt->body);
}

int server_run(const struct server_opts *o)
{
	struct server *s = calloc(1, sizeof *s);
	struct req_thread *threads = NULL;
	int n_threads = o->cgi ? 1 : o->slots + o->queue;
	int status = 1;
	pthread_t engine;
	bool engine_started = false;
	if (!s)
		return 1;
	wlog_init();
	s->o = o;
	s->t_run = ember_now();
	s->listen_fd = -1;
	s->start_time = (double)time(NULL);
	pthread_mutex_init(&s->accept_mu, NULL);
	comp_env_init(&s->env);
	if (o->model_name) {
		snprintf(s->model_name, sizeof s->model_name, "%s", o->model_name);
	} else {
		size_t n = strlen(o->model_dir);
		while (n > 1 && o->model_dir[n - 1] == '/')
			n--;
		size_t k = n;
		while (k > 0 && o->model_dir[k - 1] != '/')
			k--;
		snprintf(s->model_name, sizeof s->model_name, "%.*s", (int)(n - k), o->model_dir + k);
	}

	/* Signals are taken by sigwait in this thread only; a client that
	 * leaves must not kill the process through SIGPIPE. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (o->api_key_file) {
		char err[EMBER_ERR_LEN];
		s->keys = malloc(sizeof *s->keys);
		if (!s->keys || http_keys_load(o->api_key_file, s->keys, err) < 0) {
			wlog(3, "--api-key-file: %s", s->keys ? err : "out of memory");
			goto done;
		}
	}
	if (!o->cgi) {
		s->listen_fd = o->listen ? open_listen(o->listen, o->listen_mode) : o->listen_fd;
		if (s->listen_fd < 0)
			goto done;
		/* Others may take a connection between poll and accept (a
		 * thundering herd of workers): accept must then not block. */
		int fl = fcntl(s->listen_fd, F_GETFL);
		if (fl < 0 || fcntl(s->listen_fd, F_SETFL, fl | O_NONBLOCK) < 0) {
			wlog(3, "fcntl(listening socket) failed: %s", strerror(errno));
			goto done;
		}
	}
	const char *sb_fd = getenv("EMBER_SCOREBOARD_FD"), *sb_slot = getenv("EMBER_WORKER_SLOT");
	if (sb_fd && sb_slot) {
		char err[EMBER_ERR_LEN];
		int i = atoi(sb_slot);
		s->sb = sb_attach(atoi(sb_fd), err);
		if (!s->sb || i < 0 || (uint32_t)i >= s->sb->pool.n_slots) {
			wlog(3, "EMBER_SCOREBOARD_FD=%s EMBER_WORKER_SLOT=%s: %s", sb_fd, sb_slot,
			     s->sb ? "no such slot" : err);
			goto done;
		}
		s->slot = &s->sb->slot[i];
	}
	s->event_fd = -1;
	const char *ev = getenv("EMBER_EVENT_FD");
	struct stat evst;
	if (ev && s->slot) {
		int fd = atoi(ev);
		if (fd < 3 || fstat(fd, &evst) < 0 || !S_ISFIFO(evst.st_mode)) {
			wlog(3, "EMBER_EVENT_FD=%s is not a pipe", ev);
			goto done;
		}
		s->event_fd = fd;
		fcntl(fd, F_SETFD, FD_CLOEXEC);
	}
	/* Under emberd the metrics live in this worker's slot, where every
	 * worker reads the pool's sums. */
	_Static_assert(sizeof(struct met_counters) <= sizeof s->slot->counters &&
			       sizeof(struct met_counters) % sizeof(uint64_t) == 0,
		       "the counters fit their scoreboard words");
	_Static_assert(sizeof(struct met_gauges) <= sizeof s->slot->gauges,
		       "the gauges fit their scoreboard words");
	s->met.c = s->slot ? (struct met_counters *)s->slot->counters : &s->own_counters;
	s->met.g = s->slot ? (struct met_gauges *)s->slot->gauges : &s->own_gauges;
	atomic_store(&s->met.g->slots, o->slots);
	if (load(s) < 0)
		goto done;
	if (FCGX_Init() != 0) {
		wlog(3, "FCGX_Init failed");
		goto done;
	}
	if (pthread_create(&engine, NULL, complete_engine_thread, &s->env) != 0) {
		wlog(3, "pthread_create(engine) failed");
		goto done;
	}
	engine_started = true;
	threads = calloc((size_t)n_threads, sizeof *threads);
	if (!threads)
		goto done;
	for (int i = 0; i < n_threads; i++)
		if (init_thread(&threads[i], s) < 0) {
			wlog(3, "out of memory");
			goto done;
		}

	if (o->cgi) {
		struct conn c = {.envp = environ};
		handle(&threads[0], &c);
		fflush(stdout);
		status = atomic_load(&s->env.failed) ? 1 : 0;
		goto done;
	}
	for (int i = 0; i < n_threads; i++) {
		if (pthread_create(&threads[i].th, NULL, request_thread, &threads[i]) != 0) {
			wlog(3, "pthread_create(request thread) failed");
			atomic_store(&s->env.stopping, true);
			break;
		}
		threads[i].started = true;
	}
	if (s->slot) {
		/* Ready: emberd counts the cold start from its fork to here. */
		int64_t t = sb_now_ms();
		atomic_store(&s->slot->slots, o->slots);
		atomic_store(&s->slot->ready_ms, t);
		int expect = SB_STARTING;
		atomic_compare_exchange_strong(&s->slot->state, &expect, SB_READY);
		atomic_fetch_add(&s->sb->pool.cold_starts, 1);
		atomic_fetch_add(&s->sb->pool.cold_start_us,
				 (uint64_t)(t - atomic_load(&s->slot->started_ms)) * 1000);
		sb_event(s->event_fd, SB_EV_READY);
	}
	wlog(6, "serving FastCGI on %s with %d slots and %d request threads",
	     o->listen ? o->listen : "the inherited socket", o->slots, n_threads);
	log_start(s);

	int sig = 0;
	while (!atomic_load(&s->env.stopping)) {
		if (sigwait(&sigs, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			wlog(6, "SIGHUP: nothing to reload in a worker on its own");
			continue;
		}
		break;
	}
	if (atomic_load(&s->env.failed))
		wlog(3, "the engine failed: no new requests; draining for at most %.0f s",
		     o->drain_timeout);
	else
		wlog(6, "signal %d: no new requests; draining for at most %.0f s", sig,
		     o->drain_timeout);
	atomic_store(&s->env.stopping, true);
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += (time_t)o->drain_timeout;
	bool drained = true;
	for (int i = 0; i < n_threads; i++)
		if (threads[i].started && pthread_timedjoin_np(threads[i].th, NULL, &until) != 0)
			drained = false;
	if (!drained) {
		wlog(4, "requests still running after %.0f s; exiting anyway", o->drain_timeout);
		_exit(1);
	}
	status = atomic_load(&s->env.failed) ? 1 : 0;
done:
	if (engine_started) {
		complete_engine_stop(&s->env);
		pthread_join(engine, NULL);
	}
	for (int i = 0; threads && i < n_threads; i++)
		fini_thread(&threads[i]);
	free(threads);
	sched_destroy(s->env.sched);
	be_destroy(s->b);
	tok_free(s->tok);
	model_close(s->m);
	free(s->keys);
	if (s->listen_fd >= 0 && o->listen) {
		close(s->listen_fd);
		if (o->listen[0] == '/' || o->listen[0] == '.')
			unlink(o->listen);
	}
	comp_env_fini(&s->env);
	sb_unmap(s->sb);
	free(s);
	return status;
}
