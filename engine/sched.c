/* The scheduler. Every sequence is a list of tokens (prompt, then what was
 * generated) of which the first n_cached have their keys and values in the
 * cache; a step feeds each sequence some of the rest, and samples for those
 * whose feed reaches their last token. A decoding sequence has one token
 * left to feed; a new or preempted one has many, fed in chunks. */
#include "sched.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

struct seq {
	uint64_t id;
	struct sched_request req;
	int32_t *tokens;        /* (n_prompt + max_tokens) prompt, then generated */
	int n_tokens, n_prompt, n_generated;
	int n_cached;           /* tokens whose keys and values are in the cache */
	int slot;               /* the backend's sequence id, or -1 */
	int32_t *blocks;        /* (blocks_per_seq) the block table */
	int n_blocks;
	struct sampler_seq *sampler;
	struct tok_stream stream;   /* with a tokenizer: the text so far */
	struct stop_matcher stop;
	struct seq *next;
	/* this step */
	int take;               /* tokens fed */
	int row;                /* logits row, or -1 */
};

struct sched {
	struct backend *b;
	int max_batch;
	int blocks_per_seq;
	int32_t *free_blocks;   /* (kv_blocks) a stack */
	atomic_int n_free;      /* read by other threads (sched_free_blocks) */
	int *free_slots;        /* (max_seqs) a stack */
	int n_free_slots;
	struct seq *active;     /* in submission order */
	struct be_entry *entries; /* (max_batch) */
	struct sampler_row *rows; /* (max_seqs) how each logits row is sampled */
	struct sampler_result *results; /* (max_seqs) what the backend chose */
	const struct tokenizer *tok;
	int32_t *forced;        /* (n_forced) sched_opts.forced, or NULL */
	int n_forced;
	char *piece;            /* (piece_cap) one token's text */
	char *text;             /* (piece_cap + STOP_MAX_LEN) what it lets out */
	size_t piece_cap;
	atomic_uint_least64_t preemptions;
	pthread_mutex_t mu;     /* guards what other threads touch: */
	struct seq *incoming;   /* submitted, not yet seen by a step */
	uint64_t next_id;
	uint64_t *cancels;      /* ids to cancel */
	size_t n_cancels, cap_cancels;
};

const char *finish_reason_name(enum finish_reason r)
{
	static const char *names[] = {"none", "stop", "length", "cancelled", "deadline", "error"};
	return (unsigned)r < sizeof names / sizeof names[0] ? names[r] : "?";
}

int sched_create(struct backend *b, const struct sched_opts *o, struct sched **out, char *err)
{
	*out = NULL;
	if (b->kv_blocks <= 0)
		return ember_err(err, -EINVAL, "the backend has no block pool");
	struct sched *s = calloc(1, sizeof *s);
	if (!s)
		return ember_err(err, -ENOMEM, "out of memory");
	s->b = b;
	s->max_batch = o->max_batch_tokens > 0 && o->max_batch_tokens < b->max_tokens
			       ? o->max_batch_tokens
			       : b->max_tokens;
	s->blocks_per_seq = kv_blocks_for(b->max_ctx);
	s->free_blocks = malloc((size_t)b->kv_blocks * sizeof *s->free_blocks);
	s->free_slots = malloc((size_t)b->max_seqs * sizeof *s->free_slots);
	s->entries = malloc((size_t)s->max_batch * sizeof *s->entries);
	s->rows = malloc((size_t)b->max_seqs * sizeof *s->rows);
	s->results = malloc((size_t)b->max_seqs * sizeof *s->results);
	s->tok = o->tok;
	/* Room for what the longest token can let out. */
	s->piece_cap = TOK_STREAM_ROOM(0);
	for (int i = 0; s->tok && i < tok_n_ids(s->tok); i++) {
		size_t len;
		if (tok_piece(s->tok, i, &len) && TOK_STREAM_ROOM(len) > s->piece_cap)
			s->piece_cap = TOK_STREAM_ROOM(len);
	}
	s->piece = malloc(s->piece_cap);
	s->text = malloc(s->piece_cap + STOP_MAX_LEN);
	pthread_mutex_init(&s->mu, NULL);
	bool forced_ok = true;
	if (o->forced && o->n_forced > 0) {
		for (int i = 0; i < o->n_forced; i++)
			forced_ok &= o->forced[i] >= 0 && o->forced[i] < b->vocab;
		s->forced = malloc((size_t)o->n_forced * sizeof *s->forced);
		if (s->forced) {
			memcpy(s->forced, o->forced, (size_t)o->n_forced * sizeof *s->forced);
			s->n_forced = o->n_forced;
		}
	}
	if (!forced_ok) {
		sched_destroy(s);
		return ember_err(err, -EINVAL, "a forced token is outside the vocabulary");
	}
	if (!s->free_blocks || !s->free_slots || !s->entries || !s->rows || !s->results ||
	    !s->piece || !s->text || (o->forced && o->n_forced > 0 && !s->forced)) {
		sched_destroy(s);
		return ember_err(err, -ENOMEM, "out of memory for the scheduler");
	}
	/* Stacks, so that block 0 and slot 0 are handed out first. */
	for (int i = 0; i < b->kv_blocks; i++)
		s->free_blocks[i] = b->kv_blocks - 1 - i;
	s->n_free = b->kv_blocks;
	for (int i = 0; i < b->max_seqs; i++)
		s->free_slots[i] = b->max_seqs - 1 - i;
	s->n_free_slots = b->max_seqs;
	s->next_id = 1;
	*out = s;
	return 0;
}

static void finish_all(struct sched *s, enum finish_reason why);

static void seq_free(struct seq *q)
{
	if (!q)
		return;
	free(q->tokens);
	free(q->blocks);
	sampler_seq_destroy(q->sampler);
	free(q);
}

void sched_destroy(struct sched *s)
{
	if (!s)
		return;
	finish_all(s, FINISH_CANCELLED); /* tell whoever waits */
	for (struct seq *q = s->active, *n; q; q = n) {
		n = q->next;
		seq_free(q);
	}
	pthread_mutex_destroy(&s->mu);
	free(s->free_blocks);
	free(s->free_slots);
	free(s->entries);
	free(s->rows);
	free(s->results);
	free(s->cancels);
	free(s->piece);
	free(s->text);
	free(s->forced);
	free(s);
}

int sched_submit(struct sched *s, const struct sched_request *r, uint64_t *id, char *err)
{
	int rc = sampler_params_check(&r->sampling, err);
	if (rc < 0)
		return rc;
	if (r->n_prompt < 1 || r->n_prompt >= s->b->max_ctx)
		return ember_err(err, -EINVAL, "a prompt of %d tokens does not fit a context of %d",
				 r->n_prompt, s->b->max_ctx);
	if (r->max_tokens < 1)
		return ember_err(err, -EINVAL, "max_tokens must be at least 1");
	if (r->n_stop_ids < 0 || r->n_stop_ids > SCHED_MAX_STOP_IDS)
		return ember_err(err, -EINVAL, "at most %d stop ids", SCHED_MAX_STOP_IDS);
	for (int i = 0; i < r->n_prompt; i++)
		if (r->prompt[i] < 0 || r->prompt[i] >= s->b->vocab)
			return ember_err(err, -EINVAL, "prompt token %d is not in the vocabulary", r->prompt[i]);
	if (r->n_stop > 0 && !s->tok)
		return ember_err(err, -EINVAL, "stop strings need a tokenizer");
	struct stop_matcher stop;
	if ((rc = stop_init(&stop, r->stop, r->n_stop, err)) < 0)
		return rc;
	/* Never more than the context holds. */
	int max_new = r->max_tokens < s->b->max_ctx - r->n_prompt ? r->max_tokens
								   : s->b->max_ctx - r->n_prompt;
	/* Alone in the pool, a sequence must be able to reach its end, or it
	 * would preempt itself for ever. */
	long need = ((long)r->n_prompt + max_new + KV_BLOCK - 1) / KV_BLOCK;
	if (need > s->b->kv_blocks)
		return ember_err(err, -EINVAL,
				 "%d prompt tokens and %d new ones need %ld KV cache blocks; the cache has %d",
				 r->n_prompt, max_new, need, s->b->kv_blocks);
	size_t cap = (size_t)r->n_prompt + (size_t)max_new;
	struct seq *q = calloc(1, sizeof *q);
	if (!q)
		return ember_err(err, -ENOMEM, "out of memory");
	q->req = *r;
	q->req.prompt = NULL;
	q->tokens = malloc(cap * sizeof *q->tokens);
	q->blocks = malloc((size_t)s->blocks_per_seq * sizeof *q->blocks);
	q->sampler = sampler_seq_create(&r->sampling, s->b->vocab, cap);
	if (!q->tokens || !q->blocks || !q->sampler) {
		seq_free(q);
		return ember_err(err, -ENOMEM, "out of memory for a sequence of %zu tokens", cap);
	}
	memcpy(q->tokens, r->prompt, (size_t)r->n_prompt * sizeof *q->tokens);
	for (int i = 0; i < r->n_prompt; i++)
		sampler_seq_add(q->sampler, r->prompt[i], false);
	q->n_tokens = q->n_prompt = r->n_prompt;
	q->slot = -1;
	q->stop = stop;
	for (int i = 0; i < STOP_MAX; i++)
		q->req.stop[i] = NULL; /* the matcher holds its own copies */
	pthread_mutex_lock(&s->mu);
	uint64_t mine = q->id = s->next_id++; /* q may be gone once unlocked */
	struct seq **tail = &s->incoming;
	while (*tail)
		tail = &(*tail)->next;
	*tail = q;
	pthread_mutex_unlock(&s->mu);
	if (id)
		*id = mine;
	return 0;
}

void sched_cancel(struct sched *s, uint64_t id)
{
	pthread_mutex_lock(&s->mu);
	if (s->n_cancels == s->cap_cancels) {
		size_t cap = s->cap_cancels ? 2 * s->cap_cancels : 16;
		uint64_t *c = realloc(s->cancels, cap * sizeof *c);
		if (c) {
			s->cancels = c;
			s->cap_cancels = cap;
		}
	}
	if (s->n_cancels < s->cap_cancels)
		s->cancels[s->n_cancels++] = id;
	pthread_mutex_unlock(&s->mu);
}

/* Gives back q's blocks and slot; its tokens stay, to be fed again. */
static void release(struct sched *s, struct seq *q)
{
	for (int i = 0; i < q->n_blocks; i++)
		s->free_blocks[s->n_free++] = q->blocks[i];
	q->n_blocks = 0;
	q->n_cached = 0;
	if (q->slot >= 0) {
		be_bind(s->b, q->slot, NULL, 0, NULL);
		s->free_slots[s->n_free_slots++] = q->slot;
		q->slot = -1;
	}
}

static void finish(struct sched *s, struct seq **link, enum finish_reason why)
{
	struct seq *q = *link;
	*link = q->next;
	release(s, q);
	/* What was held back: a stop string's possible start, a character's
	 * first bytes (which come out as U+FFFD). */
	size_t n = 0;
	if (s->tok) {
		n = stop_flush(&q->stop, s->text);
		if (!q->stop.stopped)
			n += (size_t)tok_stream_flush(&q->stream, s->text + n, 4);
	}
	if (q->req.on_finish)
		q->req.on_finish(q->req.arg, why, s->tok ? s->text : NULL, n);
	seq_free(q);
}

/* The text token id lets out; true when it completes a stop string. */
static bool token_text(struct sched *s, struct seq *q, int32_t id, size_t *len)
{
	*len = 0;
	if (!s->tok)
		return false;
	long w = tok_stream_push(s->tok, &q->stream, id, s->piece, s->piece_cap);
	*len = stop_feed(&q->stop, s->piece, w > 0 ? (size_t)w : 0, s->text);
	return q->stop.stopped;
}

/* Gives q the blocks for its first `upto` positions; false when the pool or
 * the slots are short (q keeps what it had). */
static bool reserve(struct sched *s, struct seq *q, int upto)
{
	int need = kv_blocks_for(upto) - q->n_blocks;
	if (need <= 0)
		return true;
	if (need > s->n_free || (q->slot < 0 && s->n_free_slots == 0))
		return false;
	if (q->slot < 0)
		q->slot = s->free_slots[--s->n_free_slots];
	while (need-- > 0)
		q->blocks[q->n_blocks++] = s->free_blocks[--s->n_free];
	be_bind(s->b, q->slot, q->blocks, q->n_blocks, NULL);
	return true;
}

/* The newest sequence holding blocks, to preempt. */
static struct seq *newest_holder(struct sched *s)
{
	struct seq *last = NULL;
	for (struct seq *q = s->active; q; q = q->next)
		if (q->n_blocks > 0)
			last = q;
	return last;
}

/* Moves new submissions into the active list and finishes the cancelled
 * sequences; callbacks run with the lock released, so they may submit. */
static void take_submissions_and_cancels(struct sched *s)
{
	pthread_mutex_lock(&s->mu);
	struct seq **tail = &s->active;
	while (*tail)
		tail = &(*tail)->next;
	*tail = s->incoming;
	s->incoming = NULL;
	uint64_t *ids = s->cancels;
	size_t n = s->n_cancels;
	s->cancels = NULL;
	s->n_cancels = s->cap_cancels = 0;
	pthread_mutex_unlock(&s->mu);
	for (size_t i = 0; i < n; i++)
		for (struct seq **l = &s->active; *l; l = &(*l)->next)
			if ((*l)->id == ids[i]) {
				finish(s, l, FINISH_CANCELLED);
				break;
			}
	free(ids);
}

/* Ends every sequence, active or just submitted, with why. */
static void finish_all(struct sched *s, enum finish_reason why)
{
	pthread_mutex_lock(&s->mu);
	struct seq **tail = &s->active;
	while (*tail)
		tail = &(*tail)->next;
	*tail = s->incoming;
	s->incoming = NULL;
	pthread_mutex_unlock(&s->mu);
	while (s->active)
		finish(s, &s->active, why);
}

int sched_step(struct sched *s, char *err)
{
	take_submissions_and_cancels(s);
	double t = ember_now();
	for (struct seq **l = &s->active; *l;) {
		if ((*l)->req.deadline > 0 && t > (*l)->req.deadline)
			finish(s, l, FINISH_DEADLINE);
		else
			l = &(*l)->next;
	}
	for (struct seq *q = s->active; q; q = q->next)
		q->take = 0, q->row = -1;

	/* Decoding sequences first, one token each, so that prompts being
	 * prefilled never stall them; a sequence that cannot grow preempts the
	 * newest one holding blocks (perhaps itself). */
	int budget = s->max_batch;
	for (struct seq *q = s->active; q && budget > 0; q = q->next) {
		if (q->n_cached == 0 || q->n_tokens - q->n_cached != 1)
			continue;
		while (!reserve(s, q, q->n_tokens)) {
			struct seq *victim = newest_holder(s);
			release(s, victim);
			s->preemptions++;
			if (victim == q)
				break;
		}
		if (q->n_cached == 0)
			continue; /* preempted itself */
		q->take = 1;
		budget--;
	}
	/* Then prompts, first come first served, in chunks: what is left of the
	 * budget is shared among them, so a short prompt behind a long one is
	 * not kept waiting for the whole of it. */
	int n_prefill = 0;
	for (struct seq *q = s->active; q; q = q->next)
		n_prefill += !q->take && q->n_tokens - q->n_cached > (q->n_cached > 0);
	for (struct seq *q = s->active; q && budget > 0; q = q->next) {
		int pending = q->n_tokens - q->n_cached;
		if (q->take || pending == 0 || (q->n_cached > 0 && pending == 1))
			continue;
		int share = (budget + n_prefill - 1) / n_prefill;
		n_prefill--;
		/* A prompt starts only with blocks for all of it, so prompts part
		 * way through never wait on each other for blocks. */
		if (!reserve(s, q, q->n_tokens))
			break; /* the pool is short: later prompts wait too */
		q->take = pending < share ? pending : share;
		budget -= q->take;
	}

	int n = 0, rows = 0;
	for (struct seq *q = s->active; q; q = q->next) {
		for (int i = 0; i < q->take; i++) {
			int pos = q->n_cached + i;
			s->entries[n++] = (struct be_entry){q->slot, pos, q->tokens[pos], -1};
		}
		if (q->take && q->n_cached + q->take == q->n_tokens) {
			q->row = rows++;
			s->entries[n - 1].logits_row = q->row;
			sampler_prepare(q->sampler, &s->rows[q->row]);
		}
	}
	if (n > 0) {
		int rc = be_sample(s->b, s->entries, n, s->rows, s->results, err);
		if (rc < 0) {
			finish_all(s, FINISH_ERROR);
			return rc;
		}
	}
	for (struct seq **l = &s->active; *l;) {
		struct seq *q = *l;
		q->n_cached += q->take;
		if (q->row < 0) {
			l = &q->next;
			continue;
		}
		const struct sampler_result *r = &s->results[q->row];
		struct sampler_result forced;
		if (s->forced) { /* the tests' seam (sched_opts) */
			if (q->n_generated >= s->n_forced) {
				finish(s, l, FINISH_STOP);
				continue;
			}
			forced = *r;
			forced.token = s->forced[q->n_generated];
			r = &forced;
		}
		sampler_accept(q->sampler, r->token);
		bool stop = false;
		for (int i = 0; i < q->req.n_stop_ids; i++)
			stop |= r->token == q->req.stop_ids[i];
		if (stop) {
			finish(s, l, FINISH_STOP);
			continue;
		}
		q->tokens[q->n_tokens++] = r->token;
		q->n_generated++;
		size_t len;
		bool stopped = token_text(s, q, r->token, &len);
		if (q->req.on_token)
			q->req.on_token(q->req.arg, r, s->tok ? s->text : NULL, len);
		if (stopped) {
			finish(s, l, FINISH_STOP);
			continue;
		}
		if (q->n_generated >= q->req.max_tokens || q->n_tokens >= s->b->max_ctx) {
			finish(s, l, FINISH_LENGTH);
			continue;
		}
		l = &q->next;
	}
	int left = 0;
	for (struct seq *q = s->active; q; q = q->next)
		left++;
	pthread_mutex_lock(&s->mu);
	for (struct seq *q = s->incoming; q; q = q->next)
		left++;
	pthread_mutex_unlock(&s->mu);
	return left;
}

int sched_free_blocks(struct sched *s)
{
	return s->n_free;
}

int sched_total_blocks(struct sched *s)
{
	return s->b->kv_blocks;
}

uint64_t sched_preemptions(struct sched *s)
{
	return s->preemptions;
}
