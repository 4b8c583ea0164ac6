/* ember-worker as a FastCGI server (on a socket it opens or inherits) or as
 * plain CGI: loads the model, starts the engine thread and the request
 * threads, routes requests and drains on SIGTERM. Runs as its own process. */
#include "serverint.h"
#include "wlog.h"
#include "../supervisor/listen.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* --- threads ---------------------------------------------------------------- */

/* Seconds a read of a request may wait for its bytes. */
#define READ_TIMEOUT_S 30
/* Seconds a connection kept open by the front end (FCGI_KEEP_CONN) may
 * sit idle between requests before the worker closes it. */
#define KEEP_IDLE_S 5

/* Answers the management records (FCGI_GET_VALUES) a front end may send on
 * a new connection before its first request: FCGI_MPXS_CONNS is 0 (one
 * request per connection at a time), FCGI_MAX_CONNS and FCGI_MAX_REQS the
 * request threads. libfcgi reads such a record before a request without
 * answering it, so the worker answers it here. Returns 0 when a request
 * record is next, -1 when the connection ended or misbehaved. */
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
		route_request(rt, &c);
		FCGX_Finish_r(&req);
	}
	FCGX_Free(&req, 1);
	return NULL;
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
	sbuf_free(&rt->ct.think);
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
		char err[EMBER_ERR_LEN];
		s->listen_fd = o->listen_fd;
		if (o->listen &&
		    (s->listen_fd = listen_open(o->listen, o->listen_mode, o->listen_group, err)) < 0)
			wlog(3, "%s", err);
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
	if (server_load(s) < 0)
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
		route_request(&threads[0], &c);
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
	server_log_start(s);

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
		if (listen_is_path(o->listen))
			unlink(o->listen);
	}
	comp_env_fini(&s->env);
	sb_unmap(s->sb);
	free(s);
	return status;
}
