/* The worker's counters, gauges and latency histograms, kept with C11
 * atomics in plain structs that can live in the pool's shared memory, and
 * their Prometheus text. Runs in every worker thread; allocates nothing but
 * the text it renders. */
#ifndef EMBER_METRICS_H
#define EMBER_METRICS_H

#include "api.h"
#include "http.h"

#include <stdatomic.h>
#include <stdint.h>

/* Statuses counted one by one; anything else counts as "other". */
#define MET_STATUSES 11
#define MET_BUCKETS 17 /* upper bounds in seconds, the last one +Inf */

struct met_hist {
	_Atomic uint64_t bucket[MET_BUCKETS]; /* not cumulative */
	_Atomic uint64_t count;
	_Atomic uint64_t sum_us;              /* microseconds */
};

enum met_finish { MET_FIN_STOP, MET_FIN_LENGTH, MET_FIN_ABORTED, MET_FIN_ERROR, MET_FINISHES };

/* Counters only, all _Atomic uint64_t: under emberd they live in the
 * worker's scoreboard slot, and emberd adds an exited worker's into the
 * pool's word by word without knowing what they count. */
struct met_counters {
	_Atomic uint64_t requests[ROUTE_COUNT][MET_STATUSES];
	_Atomic uint64_t finished[MET_FINISHES];
	_Atomic uint64_t prompt_tokens, generation_tokens;
	_Atomic uint64_t preemptions; /* the scheduler's count, stored by the engine thread */
	struct met_hist ttft, itl, duration, queue;
};

/* Gauges, all _Atomic int64_t: the pool's are the sum over live workers. */
struct met_gauges {
	_Atomic int64_t running;    /* sequences submitted and not finished */
	_Atomic int64_t waiting;    /* requests waiting for a slot */
	_Atomic int64_t busy_slots;
	_Atomic int64_t slots;      /* --slots */
	_Atomic int64_t kv_blocks, kv_blocks_used;
};

/* A worker's metrics: in its scoreboard slot under emberd, else its own. */
struct metrics {
	struct met_counters *c;
	struct met_gauges *g;
};

void met_request(struct metrics *m, enum http_route r, int status);
void met_observe(struct met_hist *h, double seconds);
/* Appends the Prometheus text format of c and g (one worker's, or the
 * pool's sums) to out; start_time is in Unix seconds. */
void met_render(const struct met_counters *c, const struct met_gauges *g, double start_time,
		struct sbuf *out);

#endif
