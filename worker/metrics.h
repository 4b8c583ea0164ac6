/* The worker's counters and latency histograms, kept with C11 atomics in a
 * plain struct (so that it can later live in the pool's shared memory), and
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

struct metrics {
	_Atomic uint64_t requests[ROUTE_COUNT][MET_STATUSES];
	_Atomic uint64_t finished[MET_FINISHES];
	_Atomic uint64_t prompt_tokens, generation_tokens;
	_Atomic int64_t running;   /* sequences submitted and not finished */
	_Atomic int64_t waiting;   /* requests waiting for a slot */
	_Atomic int64_t busy_slots;
	struct met_hist ttft, itl, duration, queue;
};

/* What /metrics reads from elsewhere at the time it is asked. */
struct met_gauges {
	int slots;
	int kv_blocks_total, kv_blocks_free;
	uint64_t preemptions;
	double start_time; /* Unix seconds */
};

void met_request(struct metrics *m, enum http_route r, int status);
void met_observe(struct met_hist *h, double seconds);
/* Appends the Prometheus text format of m and g to out. */
void met_render(struct metrics *m, const struct met_gauges *g, struct sbuf *out);

#endif
