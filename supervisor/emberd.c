/* emberd: the supervisor. Takes the listening socket from systemd (or opens
 * it), reads the model once into the weight store, and starts, scales and
 * stops ember-worker processes that inherit the socket, the weights and the
 * scoreboard; it never accepts a connection and never runs the model. One
 * heartbeat makes every spawn and stop decision. Runs as its own process. */
#include "listen.h"
#include "scoreboard.h"
#include "wstore.h"
#include "../engine/common.h"
#include "../engine/modelfiles.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#define HEARTBEAT_MS 100

struct opts {
	const char *model, *listen, *worker;
	const char *listen_mode, *listen_group; /* --listen's unix socket: octal, a group */
	int min_workers, max_workers, spare, slots, max_requests;
	double idle_timeout, exit_idle;
	int verify;
	char **worker_args;              /* after "--": passed to every worker */
	int n_worker_args;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: emberd --model DIR [options] [-- WORKER-OPTIONS...]\n"
		"\n"
		"  --model DIR          model directory, read once into shared memory\n"
		"  --listen ADDR        unix socket path or HOST:PORT (default: the socket\n"
		"                       systemd passes, LISTEN_FDS)\n"
		"  --listen-mode MODE   permissions of --listen's unix socket (octal, default 0660)\n"
		"  --listen-group NAME  its group (the web server's: www-data, caddy, ...)\n"
		"  --worker PATH        the ember-worker program (default: beside emberd)\n"
		"  --min-workers N      workers kept running when idle (default 0)\n"
		"  --max-workers N      most workers (default 4)\n"
		"  --spare N            ready workers kept beyond demand while busy (default 1)\n"
		"  --slots N            sequences per worker (default 4)\n"
		"  --idle-timeout S     stop workers down to --min-workers after S idle seconds (default 60)\n"
		"  --exit-idle S        exit after S seconds with no workers and no traffic, under\n"
		"                       socket activation only (default 0: never)\n"
		"  --max-requests N     replace a worker after N requests (default 0: never)\n"
		"  --verify             check the model files against DIR/ember.sha256\n"
		"\n"
		"Each flag is also an environment variable: EMBER_MIN_WORKERS, EMBER_MAX_WORKERS,\n"
		"EMBER_SPARE, EMBER_SLOTS, EMBER_IDLE_TIMEOUT, EMBER_EXIT_IDLE, EMBER_MAX_REQUESTS,\n"
		"EMBER_MODEL, EMBER_LISTEN, EMBER_LISTEN_MODE, EMBER_LISTEN_GROUP, EMBER_WORKER,\n"
		"EMBER_VERIFY=1 (flags win).\n"
		"\n"
		"SIGTERM: the workers drain and emberd exits. SIGHUP: the model is read again\n"
		"and the workers replaced without failing a request.\n");
}

static int num(const char *flag, const char *v, double lo, double hi, double *out)
{
	char *end;
	double x = strtod(v, &end);
	if (end == v || *end || !(x >= lo && x <= hi)) {
		fprintf(stderr, "emberd: %s wants a number in %g..%g, not '%s'\n", flag, lo, hi, v);
		return -1;
	}
	*out = x;
	return 0;
}

/* Reads flags, after the EMBER_* environment. Returns 0, or 2 on bad use. */
static int parse(int argc, char **argv, struct opts *o)
{
	static const struct {
		const char *flag, *env;
		double lo, hi;
		int kind; /* 0 string, 1 int, 2 seconds */
		size_t off;
	} table[] = {
		{"--model", "EMBER_MODEL", 0, 0, 0, offsetof(struct opts, model)},
		{"--listen", "EMBER_LISTEN", 0, 0, 0, offsetof(struct opts, listen)},
		{"--listen-mode", "EMBER_LISTEN_MODE", 0, 0, 0, offsetof(struct opts, listen_mode)},
		{"--listen-group", "EMBER_LISTEN_GROUP", 0, 0, 0, offsetof(struct opts, listen_group)},
		{"--worker", "EMBER_WORKER", 0, 0, 0, offsetof(struct opts, worker)},
		{"--min-workers", "EMBER_MIN_WORKERS", 0, SB_MAX_WORKERS / 2, 1, offsetof(struct opts, min_workers)},
		{"--max-workers", "EMBER_MAX_WORKERS", 1, SB_MAX_WORKERS / 2, 1, offsetof(struct opts, max_workers)},
		{"--spare", "EMBER_SPARE", 0, SB_MAX_WORKERS, 1, offsetof(struct opts, spare)},
		{"--slots", "EMBER_SLOTS", 1, 1024, 1, offsetof(struct opts, slots)},
		{"--max-requests", "EMBER_MAX_REQUESTS", 0, 1e9, 1, offsetof(struct opts, max_requests)},
		{"--idle-timeout", "EMBER_IDLE_TIMEOUT", 0.1, 1e7, 2, offsetof(struct opts, idle_timeout)},
		{"--exit-idle", "EMBER_EXIT_IDLE", 0, 1e7, 2, offsetof(struct opts, exit_idle)},
	};
	const size_t n = sizeof table / sizeof table[0];
	const char *given[sizeof table / sizeof table[0]] = {0};
	for (size_t k = 0; k < n; k++)
		given[k] = getenv(table[k].env);
	const char *verify = getenv("EMBER_VERIFY");
	o->verify = verify && strcmp(verify, "0") != 0 && *verify;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			exit(0);
		}
		if (strcmp(argv[i], "--verify") == 0) {
			o->verify = 1;
			continue;
		}
		if (strcmp(argv[i], "--") == 0) {
			o->worker_args = argv + i + 1;
			o->n_worker_args = argc - i - 1;
			break;
		}
		size_t k = 0;
		while (k < n && strcmp(argv[i], table[k].flag) != 0)
			k++;
		if (k == n || i + 1 >= argc) {
			fprintf(stderr, "emberd: %s %s (see --help)\n", argv[i],
				k == n ? "is not an option" : "needs a value");
			return 2;
		}
		given[k] = argv[++i];
	}
	for (size_t k = 0; k < n; k++) {
		if (!given[k])
			continue;
		char *field = (char *)o + table[k].off;
		double x;
		if (table[k].kind == 0) {
			memcpy(field, &given[k], sizeof given[k]);
			continue;
		}
		if (num(table[k].flag, given[k], table[k].lo, table[k].hi, &x) < 0)
			return 2;
		if (table[k].kind == 1) {
			int v = (int)x;
			if (v != x) {
				fprintf(stderr, "emberd: %s wants a whole number\n", table[k].flag);
				return 2;
			}
			memcpy(field, &v, sizeof v);
		} else {
			memcpy(field, &x, sizeof x);
		}
	}
	if (!o->model) {
		usage(stderr);
		return 2;
	}
	if (o->min_workers > o->max_workers) {
		fprintf(stderr, "emberd: --min-workers %d is above --max-workers %d\n", o->min_workers,
			o->max_workers);
		return 2;
	}
	return 0;
}

static void logf_(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(int prio, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	/* "<N>" prefixes give journald the priority of a line on stderr; the
	 * journal names the program itself. */
	static int journal = -1;
	if (journal < 0)
		journal = ember_stderr_is_journal();
	fprintf(stderr, "<%d>%s%s\n", prio, journal ? "" : "emberd: ", msg);
}

/* --- the pool ----------------------------------------------------------------- */

struct pool {
	struct opts *o;
	int listen_fd, weights_fd, sb_fd;
	int event_fd[2];                /* workers write sb_event bytes into [1] */
	int generation;                 /* of the weights; SIGHUP starts a new one */
	int retired;                    /* old workers told to drain since then */
	int gen[2 * SB_MAX_WORKERS];    /* the generation of each slot's worker */
	struct scoreboard *sb;
	bool activated;                 /* the socket came from systemd */
	int crashes_recent;             /* in the back-off window */
	int64_t crash_window_ms, backoff_until_ms;
	int64_t idle_since_ms;          /* no workers and no traffic since */
	char worker_path[PATH_MAX];
};

/* Starts a worker in slot i: fork, then exec with the listening socket,
 * the weight memfd, the scoreboard and the event pipe inherited. Returns 0
 * or -1 (logged). */
static int spawn(struct pool *p, int i)
{
	struct sb_slot *s = &p->sb->slot[i];
	int64_t t = sb_now_ms();
	atomic_store(&s->state, SB_STARTING);
	atomic_store(&s->busy, 0);
	atomic_store(&s->requests, 0);
	atomic_store(&s->started_ms, t);
	atomic_store(&s->ready_ms, 0);
	atomic_store(&s->last_active_ms, t);
	/* prepare: the argument vector, before fork (nothing allocated after) */
	char slots[16], model_fd[16], listen_fd[16], sb_fd[16], slot[16], event_fd[16];
	snprintf(slots, sizeof slots, "%d", p->o->slots);
	snprintf(model_fd, sizeof model_fd, "%d", p->weights_fd);
	snprintf(listen_fd, sizeof listen_fd, "%d", p->listen_fd);
	snprintf(sb_fd, sizeof sb_fd, "%d", p->sb_fd);
	snprintf(slot, sizeof slot, "%d", i);
	snprintf(event_fd, sizeof event_fd, "%d", p->event_fd[1]);
	char *argv[64 + 8];
	int a = 0;
	argv[a++] = p->worker_path;
	argv[a++] = "--model";
	argv[a++] = (char *)p->o->model;
	argv[a++] = "--slots";
	argv[a++] = slots;
	for (int k = 0; k < p->o->n_worker_args && a < 64 + 6; k++)
		argv[a++] = p->o->worker_args[k];
	argv[a] = NULL;
	/* The environment too: the child calls nothing that allocates (a
	 * reload thread may hold malloc's lock at fork). */
	char vars[5][64];
	snprintf(vars[0], sizeof vars[0], "EMBER_LISTEN_FD=%s", listen_fd);
	snprintf(vars[1], sizeof vars[1], "EMBER_WEIGHTS_FD=%s", model_fd);
	snprintf(vars[2], sizeof vars[2], "EMBER_SCOREBOARD_FD=%s", sb_fd);
	snprintf(vars[3], sizeof vars[3], "EMBER_WORKER_SLOT=%s", slot);
	snprintf(vars[4], sizeof vars[4], "EMBER_EVENT_FD=%s", event_fd);
	static const char *const drop[] = {"LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES=",
					   "NOTIFY_SOCKET=", "EMBER_LISTEN_FD=", "EMBER_WEIGHTS_FD=",
					   "EMBER_SCOREBOARD_FD=", "EMBER_WORKER_SLOT=",
					   "EMBER_EVENT_FD="};
	size_t ne = 0;
	while (environ[ne])
		ne++;
	char **envp = malloc((ne + 6) * sizeof *envp);
	if (!envp) {
		logf_(3, "out of memory");
		atomic_store(&s->state, SB_FREE);
		return -1;
	}
	size_t k = 0;
	for (size_t e = 0; e < ne; e++) {
		bool skip = false;
		for (size_t d = 0; d < sizeof drop / sizeof drop[0]; d++)
			skip |= strncmp(environ[e], drop[d], strlen(drop[d])) == 0;
		if (!skip)
			envp[k++] = environ[e];
	}
	for (int v = 0; v < 5; v++)
		envp[k++] = vars[v];
	envp[k] = NULL;
	pid_t pid = fork();
	if (pid < 0) {
		logf_(3, "fork failed: %s", strerror(errno));
		free(envp);
		atomic_store(&s->state, SB_FREE);
		return -1;
	}
	if (pid == 0) {
		/* the child: hand over the four fds, reset signals, exec */
		int fds[] = {p->listen_fd, p->weights_fd, p->sb_fd, p->event_fd[1]};
		for (size_t k = 0; k < 4; k++)
			fcntl(fds[k], F_SETFD, 0);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execve(p->worker_path, argv, envp);
		static const char msg[] = "<3>emberd: exec of the worker failed\n";
		if (write(2, msg, sizeof msg - 1) < 0)
			_exit(126);
		_exit(127);
	}
	free(envp);
	/* use: the slot names the child */
	p->gen[i] = p->generation;
	atomic_store(&s->pid, pid);
	atomic_fetch_add(&p->sb->pool.spawns, 1);
	logf_(6, "started worker %d (pid %d)", i, (int)pid);
	return 0;
}

static int count(struct pool *p, int state)
{
	int n = 0;
	for (uint32_t i = 0; i < p->sb->pool.n_slots; i++)
		n += atomic_load(&p->sb->slot[i].state) == state;
	return n;
}

static int free_slot(struct pool *p)
{
	for (uint32_t i = 0; i < p->sb->pool.n_slots; i++)
		if (atomic_load(&p->sb->slot[i].state) == SB_FREE)
			return (int)i;
	return -1;
}

static void stop_worker(struct pool *p, int i, const char *why)
{
	struct sb_slot *s = &p->sb->slot[i];
	atomic_store(&s->state, SB_DRAINING);
	pid_t pid = atomic_load(&s->pid);
	if (pid > 0)
		kill(pid, SIGTERM);
	logf_(6, "stopping worker %d (pid %d): %s", i, (int)pid, why);
}

/* Collects exited workers: a slot is free again; an exit that was not
 * asked for counts as a crash for the back-off. */
static void reap(struct pool *p)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (uint32_t i = 0; i < p->sb->pool.n_slots; i++) {
			struct sb_slot *s = &p->sb->slot[i];
			if (atomic_load(&s->pid) != pid)
				continue;
			bool asked = atomic_load(&s->state) == SB_DRAINING;
			if (!asked) {
				atomic_fetch_add(&p->sb->pool.crashes, 1);
				int64_t t = sb_now_ms();
				if (t - p->crash_window_ms > 10000) {
					p->crash_window_ms = t;
					p->crashes_recent = 0;
				}
				p->crashes_recent++;
				if (p->crashes_recent >= 3) {
					int64_t wait = 1000LL << (p->crashes_recent - 3 < 5 ? p->crashes_recent - 3 : 5);
					p->backoff_until_ms = t + wait;
					logf_(4, "worker %u crashed %d times in 10 s: next start in %.1f s", i,
					      p->crashes_recent, wait / 1000.0);
				}
				if (WIFSIGNALED(status))
					logf_(4, "worker %u (pid %d) was killed by signal %d", i, (int)pid,
					      WTERMSIG(status));
				else
					logf_(4, "worker %u (pid %d) exited with status %d", i, (int)pid,
					      WEXITSTATUS(status));
			} else {
				logf_(6, "worker %u (pid %d) stopped", i, (int)pid);
			}
			sb_retire(p->sb, (int)i); /* its counters stay in the pool's */
		}
	}
}

static bool socket_readable(int fd)
{
	struct pollfd q = {.fd = fd, .events = POLLIN};
	return poll(&q, 1, 0) > 0;
}

/* The heartbeat: every spawn and stop decision, from the scoreboard. */
static void heartbeat(struct pool *p)
{
	int64_t t = sb_now_ms();
	int64_t idle_ms = (int64_t)(p->o->idle_timeout * 1000);
	int n = (int)p->sb->pool.n_slots;
	/* Of the workers on the current weights: live (starting or ready),
	 * ready ones, busy ones, those with a free slot (starting ones will
	 * have them), and those draining (still holding their memory). */
	int live = 0, ready = 0, busy_workers = 0, with_room = 0, draining = 0;
	int old_gen = 0, new_ready = 0;
	for (int i = 0; i < n; i++) {
		struct sb_slot *s = &p->sb->slot[i];
		int st = atomic_load(&s->state);
		if (st == SB_DRAINING && p->gen[i] == p->generation)
			draining++;
		if (st == SB_FREE || st == SB_DRAINING)
			continue;
		if (p->gen[i] != p->generation) { /* runs the weights before SIGHUP */
			old_gen++;
			continue;
		}
		live++;
		if (st == SB_STARTING) {
			with_room++;
			continue;
		}
		ready++;
		new_ready++;
		int busy = atomic_load(&s->busy);
		busy_workers += busy > 0;
		with_room += busy < atomic_load(&s->slots);
		/* recycle after --max-requests */
		if (p->o->max_requests > 0 &&
		    atomic_load(&s->requests) >= (uint64_t)p->o->max_requests) {
			stop_worker(p, i, "--max-requests reached");
			live--;
			ready--;
			draining++;
		}
	}
	/* After SIGHUP: an old worker drains for each new one that is ready;
	 * until then it serves, so no request waits on the reload. */
	for (int i = 0; i < n && old_gen > 0 && p->retired < new_ready; i++) {
		int st = atomic_load(&p->sb->slot[i].state);
		if (p->gen[i] != p->generation && (st == SB_READY || st == SB_STARTING)) {
			stop_worker(p, i, "replaced after SIGHUP");
			p->retired++;
			old_gen--;
		}
	}
	if (t < p->backoff_until_ms)
		return;
	int want = p->o->min_workers;
	if (old_gen > 0 && want < live + old_gen) /* replace the old ones, one for one */
		want = live + old_gen;
	if (live == 0 && socket_readable(p->listen_fd))
		want = want > 1 ? want : 1; /* a connection waits: a cold start */
	/* While any worker is busy, keep --spare workers with room beyond demand. */
	if (busy_workers > 0 && with_room < p->o->spare && want < live + p->o->spare - with_room)
		want = live + p->o->spare - with_room;
	/* --max-workers counts the processes on the current weights, those
	 * still draining too (their memory, a GPU's most of all, is not free
	 * yet); after SIGHUP the old ones drain beside them. */
	if (want > p->o->max_workers - draining)
		want = p->o->max_workers - draining;
	while (live < want) {
		int i = free_slot(p);
		if (i < 0 || spawn(p, i) < 0)
			break;
		live++;
	}
	/* Each worker idle for --idle-timeout (by its own last request) stops,
	 * down to --min-workers, keeping --spare with room while others work. */
	for (int i = n - 1; i >= 0 && live > p->o->min_workers; i--) {
		struct sb_slot *s = &p->sb->slot[i];
		if (atomic_load(&s->state) != SB_READY || p->gen[i] != p->generation ||
		    atomic_load(&s->busy) > 0)
			continue;
		int64_t since = atomic_load(&s->last_active_ms);
		if (atomic_load(&s->ready_ms) > since)
			since = atomic_load(&s->ready_ms);
		if (t - since <= idle_ms || (busy_workers > 0 && with_room <= p->o->spare))
			continue;
		stop_worker(p, i, "idle");
		live--;
		with_room--;
	}
}

/* STATUS= for systemctl status, from the scoreboard. */
static void status_line(struct pool *p)
{
	uint64_t requests = 0;
	int busy = 0;
	for (uint32_t i = 0; i < p->sb->pool.n_slots; i++) {
		requests += atomic_load(&p->sb->slot[i].requests);
		busy += atomic_load(&p->sb->slot[i].busy);
	}
	sd_notifyf(0, "STATUS=%d ready, %d starting, %d draining workers; %d requests in progress, "
		      "%llu answered by the workers running",
		   count(p, SB_READY), count(p, SB_STARTING), count(p, SB_DRAINING), busy,
		   (unsigned long long)requests);
}

/* SIGHUP: reads the model again into a new memfd, in a thread of its own
 * so that the heartbeat (and the watchdog) go on meanwhile; new workers
 * start on it and an old one drains for each new one that is ready. A
 * model that fails to load leaves everything as it was. */
struct reload {
	pthread_t thread;
	bool running;
	int done_pipe[2];            /* the thread writes a byte when it ends */
	int fd;                      /* the new memfd, or -1 */
	struct wstore_stats st;
	char err[EMBER_ERR_LEN];
};

static struct reload reloading = {.done_pipe = {-1, -1}, .fd = -1};

static void *reload_thread(void *arg)
{
	struct pool *p = arg;
	struct wstore_opts wo = {.verify = p->o->verify};
	if (wstore_load(p->o->model, &wo, &reloading.fd, &reloading.st, reloading.err) < 0)
		reloading.fd = -1;
	char b = 1;
	if (write(reloading.done_pipe[1], &b, 1) != 1)
		abort(); /* a pipe of our own with room: cannot fail */
	return NULL;
}

static void reload_start(struct pool *p)
{
	if (reloading.running) {
		logf_(4, "SIGHUP: a reload is already running; this one is ignored");
		return;
	}
	reloading.running = true;
	if (pthread_create(&reloading.thread, NULL, reload_thread, p) != 0) {
		reloading.running = false;
		logf_(3, "SIGHUP: pthread_create failed; the model is not reloaded");
		return;
	}
	logf_(6, "SIGHUP: reading the model again");
}

/* Takes the finished reload's memfd into use. */
static void reload_finish(struct pool *p)
{
	char b;
	if (read(reloading.done_pipe[0], &b, 1) != 1)
		return;
	pthread_join(reloading.thread, NULL);
	reloading.running = false;
	if (reloading.fd < 0) {
		logf_(3, "SIGHUP: cannot load the model, keeping the one loaded: %s", reloading.err);
		return;
	}
	close(p->weights_fd); /* running workers keep their own copies */
	p->weights_fd = reloading.fd;
	reloading.fd = -1;
	p->generation++;
	p->retired = 0;
	sd_notify(0, "FDSTOREREMOVE=1\nFDNAME=weights");
	sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=weights", &p->weights_fd, 1);
	logf_(6, "SIGHUP: reloaded the model (%d files, %.3f GB in %.3f s); replacing the workers",
	      reloading.st.files, reloading.st.bytes / 1e9, reloading.st.seconds);
}

/* While the first load runs, before READY=1: systemd's start timeout is
 * pushed back and the status says how far it is, once a second, so that a
 * model of hundreds of GB is not killed as a failed start. */
static void load_progress(void *arg, const char *what, size_t done, size_t total)
{
	int64_t *last = arg, t = sb_now_ms();
	if (t - *last < 1000)
		return;
	*last = t;
	sd_notifyf(0, "EXTEND_TIMEOUT_USEC=30000000\nWATCHDOG=1\nSTATUS=%s the model: %.1f of %.1f GB",
		   what, done / 1e9, total / 1e9);
}

/* --- the socket ---------------------------------------------------------------- */

static int take_socket(struct pool *p, char *err)
{
	if (p->o->listen) {
		/* A unix socket for the owner and the group only (the front end's,
		 * with --listen-group), as the worker's. */
		int mode = 0660;
		if (p->o->listen_mode) {
			char *end;
			long m = strtol(p->o->listen_mode, &end, 8);
			if (end == p->o->listen_mode || *end || m < 0 || m > 0777)
				return ember_err(err, -EINVAL, "--listen-mode %s: want octal permissions",
						 p->o->listen_mode);
			mode = (int)m;
		}
		int fd = listen_open(p->o->listen, mode, p->o->listen_group, err);
		if (fd < 0)
			return fd;
		p->listen_fd = fd;
		return 0;
	}
	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names);
	if (n < 1)
		return ember_err(err, -EINVAL, "no --listen and no socket from systemd (LISTEN_FDS)");
	p->listen_fd = -1;
	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		if (names && names[i] && strcmp(names[i], "weights") == 0) {
			p->weights_fd = fd; /* the fd store gave the weights back */
		} else if (p->listen_fd < 0 && sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) > 0) {
			p->listen_fd = fd;
		}
		fcntl(fd, F_SETFD, FD_CLOEXEC);
	}
	for (int i = 0; names && i < n; i++)
		free(names[i]);
	free(names);
	if (p->listen_fd < 0)
		return ember_err(err, -EINVAL, "systemd passed no listening stream socket");
	p->activated = true;
	return 0;
}

/* emberd's exit status rc, --listen's socket file removed: it goes with
 * the pool (systemd's socket is systemd's). */
static int leave(const struct opts *o, int rc)
{
	if (o->listen && listen_is_path(o->listen))
		unlink(o->listen);
	return rc;
}

int main(int argc, char **argv)
{
	struct opts o = {.max_workers = 4, .spare = 1, .slots = 4, .idle_timeout = 60};
	int rc = parse(argc, argv, &o);
	if (rc)
		return rc;
	struct pool p = {.o = &o, .listen_fd = -1, .weights_fd = -1, .event_fd = {-1, -1}};
	char err[EMBER_ERR_LEN];
	if (o.worker) {
		snprintf(p.worker_path, sizeof p.worker_path, "%s", o.worker);
	} else {
		/* ember-worker beside emberd */
		ssize_t k = readlink("/proc/self/exe", p.worker_path, sizeof p.worker_path - 20);
		if (k < 0) {
			logf_(3, "readlink(/proc/self/exe) failed: %s", strerror(errno));
			return 1;
		}
		p.worker_path[k] = 0;
		char *slash = strrchr(p.worker_path, '/');
		strcpy(slash ? slash + 1 : p.worker_path, "ember-worker");
	}
	if (take_socket(&p, err) < 0) {
		logf_(3, "%s", err);
		return 1;
	}
	int fl = fcntl(p.listen_fd, F_GETFL);
	fcntl(p.listen_fd, F_SETFL, fl | O_NONBLOCK); /* workers accept without blocking */
	if (p.weights_fd >= 0) {
		/* The fd store's copy, if it is an image this version reads. */
		struct mfiles *mf;
		if (mf_open_image(p.weights_fd, &mf, err) == 0) {
			mf_close(mf);
			logf_(6, "took the weight store back from systemd's fd store: nothing read from disk");
		} else {
			logf_(4, "the fd store's weights are unusable (%s): reading the model", err);
			sd_notify(0, "FDSTOREREMOVE=1\nFDNAME=weights");
			close(p.weights_fd);
			p.weights_fd = -1;
		}
	}
	if (p.weights_fd < 0) {
		int64_t last_progress = 0;
		struct wstore_opts wo = {.verify = o.verify, .progress = load_progress,
					 .progress_arg = &last_progress};
		struct wstore_stats st;
		if (wstore_load(o.model, &wo, &p.weights_fd, &st, err) < 0) {
			logf_(3, "cannot load the model: %s", err);
			return leave(&o, 1);
		}
		logf_(6, "read %d files, %.3f GB, into the weight store in %.3f s (%.2f GB/s, %d with O_DIRECT)",
		      st.files, st.bytes / 1e9, st.seconds, st.bytes / 1e9 / st.seconds, st.direct_files);
		/* Under systemd the weights outlive a restart in the fd store. */
		if (sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=weights", &p.weights_fd, 1) > 0)
			logf_(6, "the weight store is in systemd's fd store");
	}
	/* Room for two generations of workers, for SIGHUP. */
	p.sb = sb_create(2 * o.max_workers, &p.sb_fd, err);
	if (!p.sb) {
		logf_(3, "%s", err);
		return leave(&o, 1);
	}
	atomic_store(&p.sb->pool.last_active_ms, sb_now_ms());

	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGCHLD);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	int sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0 || pipe2(reloading.done_pipe, O_CLOEXEC | O_NONBLOCK) < 0 ||
	    pipe2(p.event_fd, O_CLOEXEC | O_NONBLOCK) < 0) {
		logf_(3, "signalfd or pipe failed: %s", strerror(errno));
		return leave(&o, 1);
	}
	uint64_t watchdog_us = 0;
	bool watchdog = sd_watchdog_enabled(0, &watchdog_us) > 0;
	int64_t last_watchdog = 0, last_status = 0;
	sd_notify(0, "READY=1");
	logf_(6, "ready: %s, up to %d workers of %d slots, %d spare, idle timeout %.0f s",
	      p.activated ? "socket from systemd" : o.listen, o.max_workers, o.slots, o.spare,
	      o.idle_timeout);
	p.idle_since_ms = sb_now_ms();
	bool stopping = false;
	int64_t stop_deadline = 0;
	for (;;) {
		/* Wake at once for a signal, the reload's end, a worker's event,
		 * and (while no worker runs and no back-off holds) a connection
		 * waiting for a cold start; else at the next heartbeat. */
		bool cold = !stopping && count(&p, SB_FREE) == (int)p.sb->pool.n_slots &&
			    sb_now_ms() >= p.backoff_until_ms;
		struct pollfd q[4] = {{.fd = sfd, .events = POLLIN},
				      {.fd = reloading.done_pipe[0], .events = POLLIN},
				      {.fd = p.event_fd[0], .events = POLLIN},
				      {.fd = cold ? p.listen_fd : -1, .events = POLLIN}};
		poll(q, 4, HEARTBEAT_MS);
		if (q[1].revents & POLLIN)
			reload_finish(&p);
		char events[256];
		while (read(p.event_fd[0], events, sizeof events) > 0)
			; /* the heartbeat below reads the scoreboard itself */
		struct signalfd_siginfo si;
		while (read(sfd, &si, sizeof si) == sizeof si) {
			if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
				if (!stopping) {
					logf_(6, "signal %u: stopping the workers", si.ssi_signo);
					sd_notify(0, "STOPPING=1");
					for (uint32_t i = 0; i < p.sb->pool.n_slots; i++)
						if (atomic_load(&p.sb->slot[i].state) != SB_FREE)
							stop_worker(&p, (int)i, "emberd stops");
					stopping = true;
					stop_deadline = sb_now_ms() + 60000;
				}
			} else if (si.ssi_signo == SIGHUP && !stopping) {
				reload_start(&p);
			}
		}
		reap(&p);
		int64_t t = sb_now_ms();
		if (stopping) {
			if (count(&p, SB_FREE) == (int)p.sb->pool.n_slots)
				break;
			if (t > stop_deadline) {
				for (uint32_t i = 0; i < p.sb->pool.n_slots; i++) {
					pid_t pid = atomic_load(&p.sb->slot[i].pid);
					if (pid > 0) {
						logf_(4, "worker %u (pid %d) still runs after 60 s: killing it", i,
						      (int)pid);
						kill(pid, SIGKILL);
						waitpid(pid, NULL, 0);
					}
				}
				break;
			}
			continue;
		}
		heartbeat(&p);
		if (watchdog && t - last_watchdog > (int64_t)(watchdog_us / 2000)) {
			sd_notify(0, "WATCHDOG=1");
			last_watchdog = t;
		}
		if (t - last_status > 1000) {
			status_line(&p);
			last_status = t;
		}
		/* Exit on idle (socket activation only): no workers, no traffic,
		 * and no connection already waiting. */
		int live = (int)p.sb->pool.n_slots - count(&p, SB_FREE);
		int64_t la = atomic_load(&p.sb->pool.last_active_ms);
		for (uint32_t i = 0; i < p.sb->pool.n_slots; i++)
			if (atomic_load(&p.sb->slot[i].last_active_ms) > la)
				la = atomic_load(&p.sb->slot[i].last_active_ms);
		if (live > 0)
			p.idle_since_ms = t;
		if (p.activated && o.exit_idle > 0 && live == 0 &&
		    t - (la > p.idle_since_ms ? la : p.idle_since_ms) > (int64_t)(o.exit_idle * 1000) &&
		    !socket_readable(p.listen_fd)) {
			logf_(6, "idle for %.0f s with no workers: exiting (systemd keeps the socket)",
			      o.exit_idle);
			break;
		}
	}
	sb_unmap(p.sb);
	return leave(&o, 0);
}
