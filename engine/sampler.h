/* Choosing the next token of one sequence from its logits: repetition,
 * presence and frequency penalties, temperature, top-k, top-p and min-p, a
 * random state of the sequence's own, and log-probabilities. Not the
 * scheduler (which calls it once per sequence per step). Runs in the
 * worker's engine thread. */
#ifndef EMBER_SAMPLER_H
#define EMBER_SAMPLER_H

#include "common.h"

#define SAMPLER_MAX_TOP_LOGPROBS 20

/* A request's sampling parameters; sampler_params_default gives OpenAI's
 * defaults (temperature 1, nothing else). */
struct sampler_params {
	float temperature;        /* 0: greedy */
	int top_k;                /* 0: all */
	float top_p;              /* (0, 1]; 1: all */
	float min_p;              /* [0, 1]; 0: off */
	float presence_penalty;   /* [-2, 2], on tokens generated so far (OpenAI) */
	float frequency_penalty;  /* [-2, 2], times each generated token's count */
	float repetition_penalty; /* > 0; 1: off; on prompt and generated tokens (HF) */
	uint64_t seed;
	int top_logprobs;         /* 0..SAMPLER_MAX_TOP_LOGPROBS */
};

void sampler_params_default(struct sampler_params *p);

/* Checks ranges; returns 0 or -EINVAL with err naming the parameter. */
int sampler_params_check(const struct sampler_params *p, char *err);

/* The random state of one sequence (xoshiro256**), seeded from the request
 * alone so that its draws do not depend on any other sequence. */
struct sampler_rng {
	uint64_t s[4];
};

void sampler_rng_seed(struct sampler_rng *r, uint64_t seed);
/* Uniform in [0, 1) with 53 random bits. */
double sampler_rng_uniform(struct sampler_rng *r);

/* Which tokens a sequence has seen, for the penalties: counts of generated
 * tokens and a mark for prompt tokens, in a table sized at creation. */
struct sampler_seq;

/* For a sequence of at most max_tokens tokens (prompt and generated) over a
 * vocabulary of vocab ids. Returns NULL when out of memory. */
struct sampler_seq *sampler_seq_create(const struct sampler_params *p, int vocab,
				       size_t max_tokens);
void sampler_seq_destroy(struct sampler_seq *s);

/* Records a prompt token (generated = false) or a generated one. Returns
 * -ENOSPC past max_tokens distinct tokens. */
int sampler_seq_add(struct sampler_seq *s, int32_t token, bool generated);

/* Scratch for sampling over a vocabulary, shared by the sequences of one
 * engine thread (allocated once). */
struct sampler_scratch;
struct sampler_scratch *sampler_scratch_create(int vocab);
void sampler_scratch_destroy(struct sampler_scratch *s);

/* How one sequence's next token is chosen, flat, for a backend that
 * samples where its logits are (sampler_prepare fills it from a sequence;
 * sampler_sample_row applies it): the request's parameters, this step's
 * uniform draw from the sequence's random state, and, when a penalty
 * applies, the distinct tokens seen so far with the times each was
 * generated (borrowed from the sequence: valid until its next token). */
struct sampler_row {
	struct sampler_params p;
	double u;                 /* [0, 1); drawn only when the row samples at random */
	const int32_t *seen;      /* (n_seen) prompt and generated tokens, each once */
	const uint32_t *generated; /* (n_seen) times each of them was generated */
	int n_seen;               /* 0 when no penalty applies */
};

struct sampler_result {
	int32_t token;
	float logprob;            /* of token, from the model's own distribution */
	int n_top;
	int32_t top_token[SAMPLER_MAX_TOP_LOGPROBS];
	float top_logprob[SAMPLER_MAX_TOP_LOGPROBS];
};

/* Chooses the next token from logits (vocab floats, modified in place: the
 * penalties and temperature are applied to them) and records it in s.
 * Log-probabilities are those of the model before penalties and sampling
 * (log_softmax of the logits as given). Allocates nothing. */
void sampler_sample(struct sampler_seq *s, struct sampler_scratch *scratch, float *logits,
		    struct sampler_result *out);

/* sampler_sample in three parts, for sampling away from the sequence (on a
 * backend, in another thread): sampler_prepare takes this step's draw from
 * s's random state into row; sampler_sample_row chooses from logits (vocab
 * floats, modified in place) as sampler_sample would, touching nothing of
 * the sequence; sampler_accept records the token chosen. */
void sampler_prepare(struct sampler_seq *s, struct sampler_row *row);
void sampler_sample_row(const struct sampler_row *row, struct sampler_scratch *scratch,
			float *logits, struct sampler_result *out);
void sampler_accept(struct sampler_seq *s, int32_t token);

/* True when row chooses greedily (temperature 0 or top_k 1): no draw. */
bool sampler_row_greedy(const struct sampler_params *p);

#endif
