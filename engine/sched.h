/* The scheduler: many sequences in one forward pass. Sequences are
 * submitted from any thread and stepped by one engine thread: each step
 * decodes one token of every running sequence and prefills chunks of new
 * prompts within a token budget (shared among the prompts waiting, first
 * come first served), over a paged KV cache of a fixed number of blocks. When blocks run out, new prompts wait and, if a running sequence
 * cannot grow, the newest one is preempted (its blocks freed, recomputed
 * later, with the same tokens). Runs in the worker's engine thread. */
#ifndef EMBER_SCHED_H
#define EMBER_SCHED_H

#include "backend.h"
#include "sampler.h"
#include "stop.h"
#include "tokenizer.h"

#define SCHED_MAX_STOP_IDS 16

enum finish_reason {
	FINISH_NONE,
	FINISH_STOP,      /* a stop token (EOS) or stop string */
	FINISH_LENGTH,    /* max_tokens, or the context is full */
	FINISH_CANCELLED, /* sched_cancel */
	FINISH_DEADLINE,  /* the request's deadline passed */
	FINISH_ERROR,     /* the backend failed */
};

const char *finish_reason_name(enum finish_reason r);

struct sched_request {
	const int32_t *prompt;      /* copied at submission */
	int n_prompt;
	struct sampler_params sampling;
	int max_tokens;
	int32_t stop_ids[SCHED_MAX_STOP_IDS];
	int n_stop_ids;
	const char *stop[STOP_MAX]; /* stop strings (copied); need a tokenizer */
	int n_stop;
	double deadline;            /* CLOCK_MONOTONIC seconds; 0: none */
	/* Called from the engine thread: each token as it is chosen, with the
	 * text it adds (with a tokenizer: whole characters only, and nothing of
	 * a stop string; without one, NULL), then once at the end with the text
	 * held back till then (after which the sequence is gone). */
	void (*on_token)(void *arg, const struct sampler_result *r, const char *text, size_t len);
	void (*on_finish)(void *arg, enum finish_reason why, const char *text, size_t len);
	void *arg;
};

struct sched_opts {
	int max_batch_tokens;       /* entries per step; 0: the backend's max_tokens */
	const struct tokenizer *tok; /* for text and stop strings; may be NULL */
	/* A seam for tests of what is made of a model's output: every
	 * sequence's i-th token is forced[i] (copied) instead of the sampler's
	 * (whose log-probabilities it keeps), and after n_forced of them the
	 * sequence ends as at an end-of-sequence token. NULL: none. */
	const int32_t *forced;
	int n_forced;
};

struct sched;

/* A scheduler over backend b, which must have been made with a block pool
 * (kv_blocks > 0). Returns 0 or a negative errno with err set. */
int sched_create(struct backend *b, const struct sched_opts *o, struct sched **out, char *err);
/* Ends every sequence left with FINISH_CANCELLED (callbacks run) and frees
 * the scheduler. */
void sched_destroy(struct sched *s);

/* Queues a sequence; thread-safe. On success *id names it for
 * sched_cancel. Returns -EINVAL (bad parameters, a prompt that does not fit
 * the context, a prompt and max_tokens that need more blocks than the pool
 * has) or -ENOMEM, with err set; nothing is queued then. */
int sched_submit(struct sched *s, const struct sched_request *r, uint64_t *id, char *err);

/* Ends sequence id at the next step with FINISH_CANCELLED, freeing its
 * blocks; thread-safe; an id already finished is ignored. */
void sched_cancel(struct sched *s, uint64_t id);

/* Runs one step. Returns the number of sequences still queued or running
 * afterwards, or a negative errno if the backend failed (every sequence is
 * then finished with FINISH_ERROR and the error is in err). */
int sched_step(struct sched *s, char *err);

/* Blocks free in the pool, and in all; for tests and /metrics (any thread). */
int sched_free_blocks(struct sched *s);
int sched_total_blocks(struct sched *s);
/* Sequences preempted so far. */
uint64_t sched_preemptions(struct sched *s);

#endif
