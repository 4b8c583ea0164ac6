/* The worker's routes (serverint.h): /health, /metrics, /v1/models and
 * the generation ones, which read the body and hand it to complete.c;
 * authentication, the request's log line and its metrics. */
#include "serverint.h"

#include <stdio.h>
#include <string.h>

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

void route_request(struct req_thread *rt, struct conn *c)
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
	struct sbuf *bufs[] = {&rt->ct.out, &rt->ct.tmp, &rt->ct.think, &rt->body};
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
