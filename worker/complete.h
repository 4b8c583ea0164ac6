/* The generation routes, /v1/chat/completions and /v1/completions: a
 * checked request becomes a prompt, waits for a free slot, runs in the
 * scheduler, and its tokens go back whole or as Server-Sent Events. Also
 * the engine thread that steps the scheduler. Runs in the worker's request
 * threads and its engine thread. */
#ifndef EMBER_COMPLETE_H
#define EMBER_COMPLETE_H

#include "api.h"
#include "conn.h"
#include "metrics.h"
#include "wlog.h"
#include "../engine/model.h"
#include "../engine/sched.h"
#include "../engine/tokenizer.h"

#include <pthread.h>
#include <stdatomic.h>

/* What the generation routes share; set up once by the server. */
struct comp_env {
	const struct model *m;
	const struct tokenizer *tok;
	struct sched *sched;
	struct metrics *met;
	const char *model_name;
	int family;                    /* chat template family, or -1 */
	char family_err[EMBER_ERR_LEN];  /* why there is none */
	char bos[256];                 /* the BOS token's text, for chat templates */
	int ctx, max_prompt_tokens;
	int kv_tokens;                 /* tokens the whole KV cache holds */
	double request_timeout, keepalive, queue_timeout;
	int32_t stop_ids[SCHED_MAX_STOP_IDS];
	int n_stop_ids;
	/* slots: sequences running at once */
	pthread_mutex_t slot_mu;
	pthread_cond_t slot_cv;
	int slots, busy;
	atomic_bool stopping;
	atomic_bool failed;            /* a step failed: the worker ends (engine thread) */
	/* the engine thread's wake-up */
	pthread_mutex_t eng_mu;
	pthread_cond_t eng_cv;
	bool eng_work, eng_quit;
};

/* Initialises the locks of env (the rest is the caller's); 0 or -errno. */
int comp_env_init(struct comp_env *env);
void comp_env_fini(struct comp_env *env);

/* A request thread's own buffers, reused from request to request. */
struct comp_thread {
	struct tok_ctx *tc;
	int32_t *ids;
	size_t n_ids, cap_ids;
	struct sbuf out, tmp, think; /* think: a whole answer's reasoning */
};

/* Answers one generation request of kind with body[0..len): any outcome is
 * an answer on c (c->status says which) and the fields of log. */
void complete_handle(struct comp_env *env, struct comp_thread *t, struct conn *c,
		     enum api_kind kind, const char *body, size_t len, struct wlog_req *log);

/* The engine thread: steps the scheduler while it has sequences, sleeps
 * otherwise, returns after complete_engine_stop. A failed step is fatal to
 * the worker: its sequences end with FINISH_ERROR (their requests get an
 * error), env->failed and env->stopping are set and SIGTERM is raised, so
 * that the main thread stops accepting, drains and exits with status 1
 * (emberd then starts another). Steps go on failing every sequence that
 * is still submitted meanwhile. */
void *complete_engine_thread(void *env);
void complete_engine_stop(struct comp_env *env);

#endif
