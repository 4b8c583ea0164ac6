/* Chat and text completions: request to prompt, slot, scheduler, answer.
 * Runs in the worker's request threads; job_token and job_finish run in the
 * engine thread and only append under the job's lock. */
#include "complete.h"
#include "http.h"
#include "../engine/chat.h"
#include "../engine/reasoning.h"
#include "../engine/toolcall.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* An absolute CLOCK_MONOTONIC time for timed waits, s seconds from now. */
static struct timespec later(double s)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	double whole = floor(s);
	ts.tv_sec += (time_t)whole;
	ts.tv_nsec += (long)((s - whole) * 1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

static void cond_init_monotonic(pthread_cond_t *cv)
{
	pthread_condattr_t a;
	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &a);
	pthread_condattr_destroy(&a);
}

int comp_env_init(struct comp_env *env)
{
	pthread_mutex_init(&env->slot_mu, NULL);
	cond_init_monotonic(&env->slot_cv);
	pthread_mutex_init(&env->eng_mu, NULL);
	pthread_cond_init(&env->eng_cv, NULL);
	atomic_init(&env->stopping, false);
	return 0;
}

void comp_env_fini(struct comp_env *env)
{
	pthread_mutex_destroy(&env->slot_mu);
	pthread_cond_destroy(&env->slot_cv);
	pthread_mutex_destroy(&env->eng_mu);
	pthread_cond_destroy(&env->eng_cv);
}

/* --- the engine thread ----------------------------------------------------- */

/* The scheduler's KV-cache use and preemptions, for /metrics: under emberd
 * any worker may read them from the scoreboard at any time. */
static void engine_publish(struct comp_env *env)
{
	int total = sched_total_blocks(env->sched);
	atomic_store_explicit(&env->met->g->kv_blocks, total, memory_order_relaxed);
	atomic_store_explicit(&env->met->g->kv_blocks_used, total - sched_free_blocks(env->sched),
			      memory_order_relaxed);
	atomic_store_explicit(&env->met->c->preemptions, sched_preemptions(env->sched),
			      memory_order_relaxed);
}

void *complete_engine_thread(void *arg)
{
	struct comp_env *env = arg;
	char err[EMBER_ERR_LEN];
	engine_publish(env);
	for (;;) {
		pthread_mutex_lock(&env->eng_mu);
		while (!env->eng_work && !env->eng_quit)
			pthread_cond_wait(&env->eng_cv, &env->eng_mu);
		bool quit = env->eng_quit && !env->eng_work;
		env->eng_work = false;
		pthread_mutex_unlock(&env->eng_mu);
		if (quit)
			return NULL;
		/* A submission during these steps sets eng_work again, so that
		 * nothing submitted is left waiting while this thread sleeps. */
		int left;
		while ((left = sched_step(env->sched, err)) > 0)
			engine_publish(env);
		engine_publish(env);
		if (left < 0 && !atomic_exchange(&env->failed, true)) {
			wlog(2, "engine step failed: %s; the worker stops", err);
			atomic_store(&env->stopping, true);
			kill(getpid(), SIGTERM);
		}
	}
}

static void engine_wake(struct comp_env *env)
{
	pthread_mutex_lock(&env->eng_mu);
	env->eng_work = true;
	pthread_cond_signal(&env->eng_cv);
	pthread_mutex_unlock(&env->eng_mu);
}

void complete_engine_stop(struct comp_env *env)
{
	pthread_mutex_lock(&env->eng_mu);
	env->eng_quit = true;
	pthread_cond_signal(&env->eng_cv);
	pthread_mutex_unlock(&env->eng_mu);
}

/* --- slots ----------------------------------------------------------------- */

/* Waits up to the queue timeout for a free slot; true when one is taken. */
static bool slot_acquire(struct comp_env *env)
{
	struct timespec until = later(env->queue_timeout);
	atomic_fetch_add(&env->met->g->waiting, 1);
	pthread_mutex_lock(&env->slot_mu);
	/* Also while draining: a request already accepted is served. */
	while (env->busy >= env->slots)
		if (pthread_cond_timedwait(&env->slot_cv, &env->slot_mu, &until) == ETIMEDOUT)
			break;
	bool ok = env->busy < env->slots;
	if (ok)
		env->busy++;
	pthread_mutex_unlock(&env->slot_mu);
	atomic_fetch_sub(&env->met->g->waiting, 1);
	if (ok)
		atomic_fetch_add(&env->met->g->busy_slots, 1);
	return ok;
}

static void slot_release(struct comp_env *env)
{
	pthread_mutex_lock(&env->slot_mu);
	env->busy--;
	pthread_cond_signal(&env->slot_cv);
	pthread_mutex_unlock(&env->slot_mu);
	atomic_fetch_sub(&env->met->g->busy_slots, 1);
}

/* --- a job: one sequence's output as the engine thread hands it over ------- */

struct job {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct sbuf text;           /* everything released so far */
	struct api_token *ev;       /* (cap_ev) per token, when logprobs are wanted */
	size_t n_ev, cap_ev;
	int n_tokens;
	bool done;
	enum finish_reason why;
	double t_arrive, t_first, t_last;
	struct metrics *met;
	/* the reasoning's tokens: counted while think_open, up to and with the
	 * one whose text closes it (think, fed each token's text) */
	bool think_open;
	struct reason_split think;
	int think_tokens;
};

static void job_token(void *arg, const struct sampler_result *r, const char *text, size_t len)
{
	struct job *j = arg;
	double t = ember_now();
	pthread_mutex_lock(&j->mu);
	sbuf_put(&j->text, text, len);
	if (j->n_ev < j->cap_ev) {
		j->ev[j->n_ev].r = *r;
		j->ev[j->n_ev].text_end = j->text.len;
		j->n_ev++;
	}
	if (j->n_tokens == 0) {
		j->t_first = t;
		met_observe(&j->met->c->ttft, t - j->t_arrive);
	} else {
		met_observe(&j->met->c->itl, t - j->t_last);
	}
	j->t_last = t;
	j->n_tokens++;
	if (j->think_open) {
		reason_feed(&j->think, text, len, false, NULL, NULL);
		j->think_tokens++;
		j->think_open = j->think.state != REASON_ANSWER;
	}
	pthread_cond_signal(&j->cv);
	pthread_mutex_unlock(&j->mu);
	atomic_fetch_add_explicit(&j->met->c->generation_tokens, 1, memory_order_relaxed);
}

static void job_finish(void *arg, enum finish_reason why, const char *text, size_t len)
{
	struct job *j = arg;
	pthread_mutex_lock(&j->mu);
	sbuf_put(&j->text, text, len);
	j->done = true;
	j->why = why;
	pthread_cond_signal(&j->cv);
	pthread_mutex_unlock(&j->mu);
}

/* --- the prompt ------------------------------------------------------------ */

/* The prompt's ids into t->ids; *thinks: a chat whose rendering opens a
 * reasoning block (reasoning.h); prefill: what the prompt ends with of the
 * reply (a required or named tool call's start, chat_tool_prefill). */
static int build_prompt(struct comp_env *env, struct comp_thread *t, const struct api_request *ar,
			bool *thinks, struct sbuf *prefill, struct api_error *e)
{
	char err[EMBER_ERR_LEN];
	t->n_ids = 0;
	*thinks = false;
	if (ar->kind == API_COMPLETION && ar->prompt_ids) {
		if (t->cap_ids < ar->n_prompt_ids) {
			int32_t *p = realloc(t->ids, ar->n_prompt_ids * sizeof *p);
			if (!p)
				return api_fail(e, 503, "server_error", "out_of_memory", NULL, "out of memory");
			t->ids = p;
			t->cap_ids = ar->n_prompt_ids;
		}
		for (size_t i = 0; i < ar->n_prompt_ids; i++)
			if (ar->prompt_ids[i] >= env->m->cfg.vocab)
				return api_fail(e, 400, "invalid_request_error", "invalid_value", "prompt",
						"token id %d is outside the vocabulary of %d",
						ar->prompt_ids[i], env->m->cfg.vocab);
		memcpy(t->ids, ar->prompt_ids, ar->n_prompt_ids * sizeof *t->ids);
		t->n_ids = ar->n_prompt_ids;
		return 0;
	}
	const char *text = ar->prompt;
	size_t len = ar->prompt_len;
	char *rendered = NULL;
	if (ar->kind == API_CHAT) {
		if (env->family < 0)
			return api_fail(e, 400, "invalid_request_error", "chat_template_unsupported",
					"messages", "%s", env->family_err);
		struct chat_tools tools = {(const char *const *)ar->tools_py, ar->n_tools};
		bool offer = ar->n_tools > 0 && !ar->tools_off;
		if (offer && !chat_has_tools((enum chat_family)env->family))
			return api_fail(e, 400, "invalid_request_error", "unsupported_parameter", "tools",
					"the model's chat template (%s) has no syntax for tools",
					chat_family_name((enum chat_family)env->family));
		int rc = chat_render((enum chat_family)env->family, ar->messages, ar->n_messages,
				     offer ? &tools : NULL, true,
				     ar->thinking, env->bos, &rendered, err);
		if (rc < 0)
			return rc == -ENOMEM ? api_fail(e, 503, "server_error", "out_of_memory", NULL,
							"out of memory")
					     : api_fail(e, 400, "invalid_request_error", "invalid_value",
							"messages", "%s", err);
		text = rendered;
		len = strlen(rendered);
		*thinks = reason_prompt_opens(rendered, len);
		if (offer && (ar->tool_required || ar->tool_named)) {
			const char *pre = chat_tool_prefill((enum chat_family)env->family,
							    ar->tool_named, *thinks, prefill);
			char *both = pre ? realloc(rendered, len + prefill->len + 1) : NULL;
			if (!both) {
				free(rendered);
				return api_fail(e, 503, "server_error", "out_of_memory", NULL,
						"out of memory");
			}
			memcpy(both + len, prefill->p, prefill->len + 1);
			text = rendered = both;
			len += prefill->len;
		}
	}
	/* A chat template writes the BOS itself, as text. */
	int rc = tok_encode(env->tok, t->tc, text, len, ar->kind != API_CHAT, &t->ids, &t->n_ids,
			    &t->cap_ids, err);
	free(rendered);
	if (rc < 0)
		return rc == -ENOMEM ? api_fail(e, 503, "server_error", "out_of_memory", NULL,
						"out of memory")
				     : api_fail(e, 400, "invalid_request_error", "invalid_value", NULL,
						"%s", err);
	if (t->n_ids == 0)
		return api_fail(e, 400, "invalid_request_error", "invalid_value",
				ar->kind == API_CHAT ? "messages" : "prompt", "the prompt is empty");
	return 0;
}

/* --- one request ----------------------------------------------------------- */

/* Cancels sequence seq and waits until the engine thread is done with j.
 * The cancel is asked again now and then: it is dropped if the scheduler
 * cannot record it (out of memory). */
static void cancel_and_wait(struct comp_env *env, struct job *j, uint64_t seq)
{
	pthread_mutex_lock(&j->mu);
	while (!j->done) {
		pthread_mutex_unlock(&j->mu);
		sched_cancel(env->sched, seq);
		engine_wake(env);
		pthread_mutex_lock(&j->mu);
		struct timespec until = later(1.0);
		while (!j->done && pthread_cond_timedwait(&j->cv, &j->mu, &until) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&j->mu);
}

/* Waits until the job is done; returns false, having cancelled the
 * sequence, when the client went away meanwhile (looked at every keepalive
 * period: a request that does not stream has nothing to write till then). */
static bool wait_done(struct comp_env *env, struct conn *c, struct job *j, uint64_t seq)
{
	pthread_mutex_lock(&j->mu);
	while (!j->done) {
		struct timespec until = later(env->keepalive);
		while (!j->done && pthread_cond_timedwait(&j->cv, &j->mu, &until) != ETIMEDOUT)
			;
		if (j->done)
			break;
		pthread_mutex_unlock(&j->mu);
		if (conn_gone(c)) {
			cancel_and_wait(env, j, seq);
			return false;
		}
		pthread_mutex_lock(&j->mu);
	}
	pthread_mutex_unlock(&j->mu);
	return true;
}

/* What is made of the generated text on its way out: the reasoning apart
 * (a->reasoning), the answer's tool calls parsed (tools), into chunks of a
 * stream (o) or the parts of a whole answer. In a stream a token's
 * logprobs go with its first chunk (an empty one when all its text is
 * held back). */
struct pipe {
	const struct api_answer *a;
	bool tools, parallel;
	struct reason_split rs;
	struct tool_split ts;
	struct tool_out to;
	struct sbuf *o;            /* a stream's chunks, or NULL */
	struct sbuf *think, *text; /* a whole answer's parts */
	struct api_tool_call *calls; /* a whole answer's (n_calls) */
	size_t n_calls, cap_calls;
	const struct api_token *ev; /* the token whose text this is, or NULL */
	size_t i;
	const char *pre;            /* the reply's start that the prompt ends with (n_pre) */
	size_t n_pre;
};

static void pipe_text(void *arg, const char *p, size_t n)
{
	struct pipe *pp = arg;
	if (!pp->o) {
		sbuf_put(pp->text, p, n);
		return;
	}
	api_chunk_text(pp->o, pp->a, p, n, pp->ev, pp->i);
	pp->ev = NULL;
}

static void pipe_call(void *arg, int index, const char *name, const char *args)
{
	struct pipe *pp = arg;
	if (index > 0 && !pp->parallel)
		return; /* parallel_tool_calls false: the first only */
	struct api_tool_call c = {.name = strdup(name), .arguments = strdup(args)};
	memcpy(c.id, "call_", 5);
	http_random_id(c.id + 5, 25, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
	if (pp->o && c.name && c.arguments)
		api_chunk_tool_call(pp->o, pp->a, (int)pp->n_calls, &c);
	if (pp->o || !c.name || !c.arguments) {
		pp->n_calls += c.name && c.arguments;
		free(c.name), free(c.arguments);
		return;
	}
	if (pp->n_calls == pp->cap_calls) {
		size_t cap = pp->cap_calls ? 2 * pp->cap_calls : 4;
		struct api_tool_call *m = realloc(pp->calls, cap * sizeof *m);
		if (!m) {
			free(c.name), free(c.arguments);
			return;
		}
		pp->calls = m, pp->cap_calls = cap;
	}
	pp->calls[pp->n_calls++] = c;
}

static void pipe_piece(void *arg, bool think, const char *p, size_t n)
{
	struct pipe *pp = arg;
	if (n == 0 && !pp->ev)
		return; /* no chunk of nothing */
	if (!think) {
		if (pp->tools)
			tool_feed(&pp->ts, p, n, false, &pp->to);
		else
			pipe_text(pp, p, n);
	} else if (pp->o) {
		api_chunk_reasoning(pp->o, pp->a, p, n, pp->ev, pp->i);
		pp->ev = NULL;
	} else {
		sbuf_put(pp->think, p, n);
	}
}

static void pipe_init(struct pipe *pp, const struct api_answer *a, int syntax, bool parallel)
{
	*pp = (struct pipe){.a = a, .tools = syntax >= 0, .parallel = parallel};
	reason_init(&pp->rs);
	tool_split_init(&pp->ts, syntax >= 0 ? (enum tool_syntax)syntax : TOOL_QWEN);
	pp->to = (struct tool_out){pipe_text, pipe_call, pp};
}

static void pipe_free(struct pipe *pp)
{
	tool_split_free(&pp->ts);
	for (size_t i = 0; i < pp->n_calls && pp->calls; i++)
		free(pp->calls[i].name), free(pp->calls[i].arguments);
	free(pp->calls);
}

/* Feeds text[0..n), of token ev[i] when ev is given; final: the end. */
static void pipe_feed(struct pipe *pp, const char *text, size_t n, const struct api_token *ev,
		      size_t i, bool final)
{
	if (pp->n_pre > 0) { /* the prefill first, as if the model had written it */
		size_t k = pp->n_pre;
		pp->n_pre = 0;
		pipe_feed(pp, pp->pre, k, NULL, 0, false);
	}
	pp->ev = ev, pp->i = i;
	if (pp->a->reasoning)
		reason_feed(&pp->rs, text, n, final, pipe_piece, pp);
	else
		pipe_piece(pp, false, text, n);
	if (final && pp->tools)
		tool_feed(&pp->ts, "", 0, true, &pp->to);
	if (pp->o && pp->ev) { /* nothing came out: the logprobs alone */
		if (pp->a->reasoning && pp->rs.state != REASON_ANSWER)
			api_chunk_reasoning(pp->o, pp->a, "", 0, pp->ev, pp->i);
		else
			api_chunk_text(pp->o, pp->a, "", 0, pp->ev, pp->i);
	}
	pp->ev = NULL;
}

/* The finish reason: tool_calls for an answer that called tools and ended
 * by itself. */
static const char *pipe_finish(const struct pipe *pp, enum finish_reason why)
{
	return pp->n_calls > 0 && why == FINISH_STOP ? "tool_calls" : api_finish_name(why);
}

/* Streams the job's output as Server-Sent Events until it is done or the
 * client is gone (then the sequence is cancelled and waited for). */
static void stream_out(struct comp_env *env, struct comp_thread *t, struct conn *c,
		       const struct api_answer *a, struct job *j, uint64_t seq, int n_prompt,
		       bool include_usage, struct pipe *pp)
{
	struct sbuf *o = &t->out;
	size_t sent_text = 0, sent_ev = 0;
	pp->o = o;
	o->len = 0;
	if (a->kind == API_CHAT) /* the role first, as OpenAI does */
		api_chunk_role(o, a);
	if (conn_write(c, o->p, o->len) < 0 || conn_flush(c) < 0)
		goto gone;
	for (;;) {
		struct timespec until = later(env->keepalive);
		pthread_mutex_lock(&j->mu);
		bool timed_out = false;
		while (!j->done && j->text.len == sent_text && j->n_ev == sent_ev && !timed_out)
			timed_out = pthread_cond_timedwait(&j->cv, &j->mu, &until) == ETIMEDOUT;
		bool done = j->done;
		size_t text_len = j->text.len, n_ev = j->n_ev;
		/* The text may move when the engine thread grows it: copy it. */
		t->tmp.len = 0;
		sbuf_put(&t->tmp, j->text.p ? j->text.p + sent_text : "", text_len - sent_text);
		pthread_mutex_unlock(&j->mu);
		if (t->tmp.failed || o->failed)
			goto gone;
		o->len = 0;
		if (n_ev > sent_ev) {
			/* One chunk per token, with its logprobs; events are only
			 * appended, so those before n_ev are read without the lock. */
			for (size_t i = sent_ev; i < n_ev; i++) {
				size_t from = i > 0 ? j->ev[i - 1].text_end : 0;
				size_t to = j->ev[i].text_end;
				if (from < sent_text) /* never: text comes with its event */
					from = sent_text;
				pipe_feed(pp, t->tmp.p + (from - sent_text), to - from, j->ev, i, false);
			}
			size_t end = j->ev[n_ev - 1].text_end;
			if (text_len > end)
				pipe_feed(pp, t->tmp.p + (end - sent_text), text_len - end, NULL, 0,
					  false);
		} else if (text_len > sent_text) {
			pipe_feed(pp, t->tmp.p, text_len - sent_text, NULL, 0, false);
		} else if (timed_out && !done) {
			sbuf_puts(o, ": keep-alive\n\n");
		}
		sent_text = text_len;
		sent_ev = n_ev;
		if (done) {
			const char *reason = api_finish_name(j->why);
			if (reason) {
				pipe_feed(pp, "", 0, NULL, 0, true); /* what the splits held */
				reason = pipe_finish(pp, j->why);
				struct api_usage u = {n_prompt, j->n_tokens, j->think_tokens};
				api_chunk_finish(o, a, reason, include_usage, &u);
			} else {
				/* No [DONE]: the stream did not end well, and an error
				 * event says why (OpenAI's clients raise it). */
				struct api_error e;
				if (j->why == FINISH_DEADLINE)
					api_fail(&e, 504, "server_error", "timeout", NULL,
						 "the generation took longer than the server allows");
				else
					api_fail(&e, 500, "server_error", "engine_error",
						 NULL, "the engine failed; see the server's log");
				api_chunk_error(o, &e);
			}
		}
		if (o->failed) /* a chunk half built: end the stream rather than send it */
			goto gone;
		if (o->len && (conn_write(c, o->p, o->len) < 0 || conn_flush(c) < 0))
			goto gone;
		if (done)
			return;
	}
gone:
	cancel_and_wait(env, j, seq);
}

void complete_handle(struct comp_env *env, struct comp_thread *t, struct conn *c,
		     enum api_kind kind, const char *body, size_t len, struct wlog_req *log)
{
	double t_arrive = ember_now();
	struct api_request ar;
	struct api_error e;
	char err[EMBER_ERR_LEN];
	if (api_parse(kind, body, len, &ar, &e) < 0)
		goto error_only;
	if (ar.model && strcmp(ar.model, env->model_name) != 0) {
		api_fail(&e, 404, "invalid_request_error", "model_not_found", "model",
			 "the model '%.*s' does not exist; this server has '%s'", 64, ar.model,
			 env->model_name);
		goto error;
	}
	log->stream = ar.stream;
	bool thinks;
	struct sbuf prefill = {0};
	if (build_prompt(env, t, &ar, &thinks, &prefill, &e) < 0) {
		sbuf_free(&prefill);
		goto error;
	}
	int n_prompt = (int)t->n_ids;
	log->prompt_tokens = n_prompt;
	int limit = env->max_prompt_tokens > 0 ? env->max_prompt_tokens : env->ctx;
	if (n_prompt > limit || n_prompt >= env->ctx) {
		api_fail(&e, 400, "invalid_request_error", "context_length_exceeded",
			 kind == API_CHAT ? "messages" : "prompt",
			 "the prompt has %d tokens; this server takes at most %d", n_prompt,
			 limit < env->ctx - 1 ? limit : env->ctx - 1);
		goto error;
	}
	/* A sequence holds its whole length in the KV cache, which may be
	 * smaller than the context (--kv-cache-mb). */
	int room = env->ctx < env->kv_tokens ? env->ctx : env->kv_tokens;
	int max_tokens = ar.max_tokens ? ar.max_tokens : room - n_prompt;
	if (max_tokens < 1 || n_prompt + max_tokens > room) {
		api_fail(&e, 400, "invalid_request_error", "context_length_exceeded",
			 ar.max_tokens ? "max_tokens" : kind == API_CHAT ? "messages" : "prompt",
			 "%d prompt tokens and max_tokens %d exceed the %s of %d tokens", n_prompt,
			 max_tokens, room < env->ctx ? "KV cache" : "context", room);
		goto error;
	}

	struct sched_request q = {.prompt = t->ids, .n_prompt = n_prompt, .max_tokens = max_tokens,
				  .on_token = job_token, .on_finish = job_finish};
	model_sampling_defaults(env->m, &q.sampling);
	const struct sampler_params *p = &ar.sampling;
	if (ar.temperature_set)
		q.sampling.temperature = p->temperature;
	if (ar.top_p_set)
		q.sampling.top_p = p->top_p;
	if (ar.top_k_set)
		q.sampling.top_k = p->top_k;
	if (ar.repetition_penalty_set)
		q.sampling.repetition_penalty = p->repetition_penalty;
	q.sampling.min_p = p->min_p;
	q.sampling.presence_penalty = p->presence_penalty;
	q.sampling.frequency_penalty = p->frequency_penalty;
	q.sampling.top_logprobs = p->top_logprobs;
	if (ar.seed_set)
		q.sampling.seed = p->seed;
	else if (getrandom(&q.sampling.seed, sizeof q.sampling.seed, 0) != sizeof q.sampling.seed)
		q.sampling.seed = (uint64_t)rand();
	memcpy(q.stop_ids, env->stop_ids, sizeof q.stop_ids);
	q.n_stop_ids = env->n_stop_ids;
	for (int i = 0; i < ar.n_stop; i++)
		q.stop[q.n_stop++] = ar.stop[i];
	q.deadline = t_arrive + env->request_timeout;

	bool reasoning = thinks && ar.separate_reasoning;
	/* a prefill closes the reasoning: none of the reply's tokens is in it */
	struct job j = {.t_arrive = t_arrive, .met = env->met,
			.think_open = reasoning && prefill.len == 0};
	reason_init(&j.think);
	pthread_mutex_init(&j.mu, NULL);
	cond_init_monotonic(&j.cv);
	q.arg = &j;
	/* Room for the text up front (8 bytes a token, at most 1 MiB): the
	 * engine thread's appends then seldom have to grow it. */
	sbuf_reserve(&j.text, (size_t)max_tokens * 8 < (1u << 20) ? (size_t)max_tokens * 8 : 1u << 20);
	if (ar.logprobs) {
		j.ev = malloc((size_t)max_tokens * sizeof *j.ev);
		if (!j.ev) {
			api_fail(&e, 503, "server_error", "out_of_memory", NULL, "out of memory");
			goto error_job;
		}
		j.cap_ev = (size_t)max_tokens;
	}

	bool got = slot_acquire(env);
	double t_slot = ember_now();
	met_observe(&env->met->c->queue, t_slot - t_arrive);
	log->queue_ms = (t_slot - t_arrive) * 1e3;
	if (!got) {
		api_fail(&e, 503, "server_error", "overloaded", NULL,
			 "every slot stayed busy for %.0f s; try again later", env->queue_timeout);
		conn_error(c, &e, "Retry-After: 5\r\n");
		log->error_code = e.code;
		goto done_job;
	}
	uint64_t seq;
	int rc = sched_submit(env->sched, &q, &seq, err);
	if (rc < 0) {
		slot_release(env);
		if (rc == -ENOMEM)
			api_fail(&e, 503, "server_error", "out_of_memory", NULL, "out of memory");
		else
			api_fail(&e, 400, "invalid_request_error", "invalid_value", NULL, "%s", err);
		goto error_job;
	}
	atomic_fetch_add(&env->met->g->running, 1);
	atomic_fetch_add(&env->met->c->prompt_tokens, (uint64_t)n_prompt);
	engine_wake(env);

	struct api_answer a = {.kind = kind, .created = (long long)time(NULL),
			       .model = env->model_name, .usage_null = ar.stream && ar.include_usage,
			       .logprobs = ar.logprobs, .tok = env->tok, .reasoning = reasoning};
	char rid[25];
	http_random_id(rid, sizeof rid,
		       "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
	snprintf(a.id, sizeof a.id, "%s%s", kind == API_CHAT ? "chatcmpl-" : "cmpl-", rid);
	int syntax = -1; /* the answer's tool calls parsed back, in the template's syntax */
	if (kind == API_CHAT && ar.n_tools > 0 && !ar.tools_off &&
	    chat_has_tools((enum chat_family)env->family))
		syntax = env->family == CHAT_QWEN25 ? TOOL_QWEN : TOOL_DEEPSEEK;
	struct pipe pp;
	pipe_init(&pp, &a, syntax, ar.parallel_tool_calls);
	pp.pre = prefill.p, pp.n_pre = prefill.len;
	if (ar.stream) {
		if (conn_head(c, 200, "text/event-stream",
			      "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n") < 0 ||
		    conn_flush(c) < 0) {
			sched_cancel(env->sched, seq);
		}
		stream_out(env, t, c, &a, &j, seq, n_prompt, ar.include_usage, &pp);
	} else {
		bool here = wait_done(env, c, &j, seq);
		const char *reason = api_finish_name(j.why);
		if (!here) {
			c->broken = true; /* nobody to answer */
			c->status = 499;
		} else if (reason) {
			t->out.len = 0;
			struct api_usage u = {n_prompt, j.n_tokens, j.think_tokens};
			if (reasoning || pp.tools) {
				t->tmp.len = t->think.len = 0;
				pp.think = &t->think, pp.text = &t->tmp;
				pipe_feed(&pp, j.text.p ? j.text.p : "", j.text.len, NULL, 0, true);
				api_answer_json(&t->out, &a, t->think.p, t->think.len, t->tmp.p,
						t->tmp.len, pp.calls, pp.n_calls, j.ev, j.n_ev,
						pipe_finish(&pp, j.why), &u);
				t->out.failed |= t->tmp.failed || t->think.failed;
			} else {
				api_answer_json(&t->out, &a, NULL, 0, j.text.p, j.text.len, NULL, 0, j.ev,
						j.n_ev, reason, &u);
			}
			if (t->out.failed)
				api_fail(&e, 503, "server_error", "out_of_memory", NULL, "out of memory");
			else
				conn_send(c, 200, "application/json", NULL, t->out.p, t->out.len);
		} else if (j.why == FINISH_DEADLINE) {
			api_fail(&e, 504, "server_error", "timeout", NULL,
				 "the generation took longer than the server allows (%.0f s)",
				 env->request_timeout);
		} else {
			api_fail(&e, 500, "server_error", "engine_error", NULL,
				 "the engine failed; see the server's log");
		}
		if (here && (!reason || t->out.failed)) {
			conn_error(c, &e, NULL);
			log->error_code = e.code;
		}
	}
	atomic_fetch_sub(&env->met->g->running, 1);
	slot_release(env);
	enum met_finish mf = j.why == FINISH_STOP ? MET_FIN_STOP : j.why == FINISH_LENGTH ? MET_FIN_LENGTH
			     : j.why == FINISH_CANCELLED ? MET_FIN_ABORTED : MET_FIN_ERROR;
	atomic_fetch_add(&env->met->c->finished[mf], 1);
	log->completion_tokens = j.n_tokens;
	log->finish_reason = c->broken || j.why == FINISH_CANCELLED ? "client_gone"
			     : pipe_finish(&pp, j.why) ? pipe_finish(&pp, j.why)
						       : finish_reason_name(j.why);
	if (pp.ts.malformed)
		wlog(4, "request %s: %d tool call%s that the model began did not end well formed: "
			"sent as text", c->request_id, pp.ts.malformed, pp.ts.malformed > 1 ? "s" : "");
	pipe_free(&pp);
	sbuf_free(&prefill);
	log->ttft_ms = j.n_tokens ? (j.t_first - t_arrive) * 1e3 : 0;
	goto done_job;

error_job:
	conn_error(c, &e, NULL);
	log->error_code = e.code;
done_job:
	free(j.ev);
	sbuf_free(&j.text);
	pthread_mutex_destroy(&j.mu);
	pthread_cond_destroy(&j.cv);
	api_request_free(&ar);
	return;
error:
	api_request_free(&ar);
error_only:
	conn_error(c, &e, NULL);
	log->error_code = e.code;
}
