/* Counters and histograms with atomics, and their Prometheus text. Runs in
 * every worker thread. */
#include "metrics.h"

static const int statuses[MET_STATUSES - 1] = {200, 400, 401, 404, 405, 413, 429, 500, 503, 504};
static const double bounds[MET_BUCKETS - 1] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
					       0.5,   1,      2.5,   5,    10,    30,   60,  300};
static const char *const finishes[MET_FINISHES] = {"stop", "length", "aborted", "error"};

void met_request(struct metrics *m, enum http_route r, int status)
{
	int k = MET_STATUSES - 1;
	for (int i = 0; i < MET_STATUSES - 1; i++)
		if (statuses[i] == status)
			k = i;
	if (r < 0 || r >= ROUTE_COUNT)
		r = ROUTE_NONE;
	atomic_fetch_add_explicit(&m->c->requests[r][k], 1, memory_order_relaxed);
}

void met_observe(struct met_hist *h, double s)
{
	if (!(s >= 0))
		s = 0;
	int k = MET_BUCKETS - 1;
	for (int i = 0; i < MET_BUCKETS - 1; i++)
		if (s <= bounds[i]) {
			k = i;
			break;
		}
	atomic_fetch_add_explicit(&h->bucket[k], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_us, (uint64_t)(s * 1e6 + 0.5), memory_order_relaxed);
	atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

static void hist(struct sbuf *o, const char *name, const char *help, const struct met_hist *h)
{
	sbuf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	uint64_t cum = 0;
	for (int i = 0; i < MET_BUCKETS; i++) {
		cum += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
		if (i < MET_BUCKETS - 1)
			sbuf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i],
				    (unsigned long long)cum);
		else
			sbuf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
	}
	/* The count is the buckets' total read above, so that the two agree
	 * even while observations land. */
	sbuf_printf(o, "%s_sum %.6f\n%s_count %llu\n", name,
		    (double)atomic_load_explicit(&h->sum_us, memory_order_relaxed) * 1e-6, name,
		    (unsigned long long)cum);
}

static void one(struct sbuf *o, const char *name, const char *type, const char *help, double v)
{
	sbuf_printf(o, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

void met_render(const struct met_counters *m, const struct met_gauges *g, double start_time,
		struct sbuf *o)
{
	sbuf_puts(o, "# HELP ember_requests_total HTTP requests answered, by route and status.\n"
		     "# TYPE ember_requests_total counter\n");
	for (int r = 0; r < ROUTE_COUNT; r++)
		for (int k = 0; k < MET_STATUSES; k++) {
			uint64_t v = atomic_load_explicit(&m->requests[r][k], memory_order_relaxed);
			char st[16];
			if (k < MET_STATUSES - 1)
				snprintf(st, sizeof st, "%d", statuses[k]);
			else
				snprintf(st, sizeof st, "other");
			if (v || (k == 0 && (r == ROUTE_CHAT || r == ROUTE_COMPLETIONS)))
				sbuf_printf(o, "ember_requests_total{route=\"%s\",status=\"%s\"} %llu\n",
					    http_route_name((enum http_route)r), st,
					    (unsigned long long)v);
		}
	sbuf_puts(o, "# HELP ember_sequences_finished_total Generations ended, by reason.\n"
		     "# TYPE ember_sequences_finished_total counter\n");
	for (int k = 0; k < MET_FINISHES; k++)
		sbuf_printf(o, "ember_sequences_finished_total{reason=\"%s\"} %llu\n", finishes[k],
			    (unsigned long long)atomic_load(&m->finished[k]));
	one(o, "ember_prompt_tokens_total", "counter", "Prompt tokens processed.",
	    (double)atomic_load(&m->prompt_tokens));
	one(o, "ember_generation_tokens_total", "counter", "Tokens generated.",
	    (double)atomic_load(&m->generation_tokens));
	one(o, "ember_preemptions_total", "counter", "Sequences preempted for KV-cache room.",
	    (double)atomic_load(&m->preemptions));
	one(o, "ember_sequences_running", "gauge",
	    "Sequences in the engine (prefilling or decoding).", (double)atomic_load(&g->running));
	one(o, "ember_requests_waiting", "gauge", "Requests waiting for a free slot.",
	    (double)atomic_load(&g->waiting));
	one(o, "ember_slots_busy", "gauge", "Sequence slots in use.",
	    (double)atomic_load(&g->busy_slots));
	one(o, "ember_slots", "gauge", "Sequence slots (--slots of each worker running).",
	    (double)atomic_load(&g->slots));
	double kv = (double)atomic_load(&g->kv_blocks), used = (double)atomic_load(&g->kv_blocks_used);
	one(o, "ember_kv_cache_blocks", "gauge", "Blocks in the paged KV caches.", kv);
	one(o, "ember_kv_cache_blocks_used", "gauge", "KV-cache blocks held by sequences.", used);
	one(o, "ember_kv_cache_usage_ratio", "gauge", "Share of the KV cache in use.",
	    kv > 0 ? used / kv : 0);
	one(o, "ember_start_time_seconds", "gauge",
	    "When the counters began: emberd's start, or the worker's alone (Unix time).",
	    start_time);
	hist(o, "ember_time_to_first_token_seconds", "From the request's arrival to its first token.",
	     &m->ttft);
	hist(o, "ember_inter_token_latency_seconds", "Between consecutive tokens of a sequence.",
	     &m->itl);
	hist(o, "ember_request_duration_seconds", "From arrival to the last byte of the answer.",
	     &m->duration);
	hist(o, "ember_queue_time_seconds", "Time waiting for a free slot.", &m->queue);
}
