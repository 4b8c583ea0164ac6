/* The scoreboard: shared memory (a memfd) with a part for the pool and a
 * page per worker slot, written with C11 atomics. Each worker writes only
 * its own slot; emberd (and any worker) reads them all. emberd creates it;
 * workers attach to the fd they inherit (EMBER_SCOREBOARD_FD, slot index in
 * EMBER_WORKER_SLOT). Runs in emberd and the workers. */
#ifndef EMBER_SCOREBOARD_H
#define EMBER_SCOREBOARD_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define SB_MAGIC 0x32424d45u /* "EMB2" */
#define SB_MAX_WORKERS 256
/* A worker's metrics, in words whose meaning is the worker's own
 * (worker/metrics.h): counters, which outlive the worker, and gauges,
 * which end with it. */
#define SB_COUNTER_WORDS 256
#define SB_GAUGE_WORDS 8

enum sb_state {
	SB_FREE,      /* no worker */
	SB_STARTING,  /* forked, loading the model */
	SB_READY,     /* accepting requests */
	SB_DRAINING,  /* told to stop: finishing its requests */
};

const char *sb_state_name(int state);

/* One worker's slot, a page of its own so that writers do not share lines. */
struct sb_slot {
	_Atomic int32_t pid;
	_Atomic int32_t state;         /* enum sb_state */
	_Atomic int32_t busy;          /* requests being answered (waiting ones too) */
	_Atomic int32_t slots;         /* its --slots */
	_Atomic uint64_t requests;     /* answered */
	_Atomic uint64_t tokens;       /* generated */
	_Atomic int64_t started_ms;    /* CLOCK_MONOTONIC ms when forked */
	_Atomic int64_t ready_ms;      /* when it began to accept; 0 before */
	_Atomic int64_t last_active_ms; /* when a request last began or ended */
	_Atomic int64_t gauges[SB_GAUGE_WORDS];
	_Atomic uint64_t counters[SB_COUNTER_WORDS]; /* zero when the slot is free */
	char pad[4096 - 56 - 8 * SB_GAUGE_WORDS - 8 * SB_COUNTER_WORDS];
};

struct sb_pool {
	uint32_t magic;
	uint32_t n_slots;
	_Atomic uint64_t spawns, crashes, cold_starts;
	_Atomic uint64_t cold_start_us; /* sum over cold starts: fork to ready */
	_Atomic int64_t last_active_ms; /* the pool's last request activity */
	int64_t started_unix;           /* when emberd made the scoreboard */
	/* The counters of workers that have exited, so that the pool's stay
	 * monotonic; retire_seq is odd while emberd moves a worker's in. */
	_Atomic uint64_t retire_seq;
	_Atomic uint64_t retired[SB_COUNTER_WORDS];
	char pad[4096 - 64 - 8 * SB_COUNTER_WORDS];
};

struct scoreboard {
	struct sb_pool pool;
	struct sb_slot slot[];          /* (pool.n_slots) */
};

_Static_assert(sizeof(struct sb_slot) == 4096, "a page per slot");
_Static_assert(sizeof(struct sb_pool) == 4096, "a page for the pool");

int64_t sb_now_ms(void);

/* Events a worker writes, a byte each, to the pipe it inherits
 * (EMBER_EVENT_FD), so that emberd decides at once instead of at its next
 * heartbeat. */
enum sb_event {
	SB_EV_READY = 'r',  /* the worker accepts requests */
	SB_EV_FULL = 'f',   /* every slot of the worker is busy: time for a spare */
};

/* Writes event ev to fd without blocking (a full pipe already holds one to
 * wake emberd); fd < 0 does nothing. */
void sb_event(int fd, enum sb_event ev);

/* Creates a scoreboard of n slots in a new memfd (close-on-exec). Returns
 * the mapping and sets *fd, or NULL with err set. */
struct scoreboard *sb_create(int n, int *fd, char *err);
/* Maps the scoreboard in fd (untrusted: its size and header are checked).
 * Returns the mapping or NULL with err set. */
struct scoreboard *sb_attach(int fd, char *err);
void sb_unmap(struct scoreboard *sb);

/* emberd, for slot i's worker that has exited: adds its counters into the
 * pool's and zeroes them, then frees the slot. */
void sb_retire(struct scoreboard *sb, int i);
/* The pool's metrics: counters of every worker that ever ran (retired and
 * live), gauges of the live ones, read consistently with sb_retire (a
 * worker's counters are never counted twice or missed). Any process. */
void sb_sum(const struct scoreboard *sb, _Atomic uint64_t counters[SB_COUNTER_WORDS],
	    _Atomic int64_t gauges[SB_GAUGE_WORDS]);

#endif
