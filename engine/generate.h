/* Greedy generation of one sequence straight on a backend: what the
 * command-line mode, the reference tests and the benchmarks use. Not the
 * scheduler (which batches many sequences). Runs in the caller's thread. */
#ifndef EMBER_GENERATE_H
#define EMBER_GENERATE_H

#include "backend.h"

/* Index of the largest of x[0..n); the first one on ties, as torch.argmax. */
int gen_argmax(const float *x, int n);

/* Feeds ids[0..n) of sequence seq at positions start..start+n-1, in steps of
 * at most b->max_tokens entries, and leaves the logits after the last token
 * in logits (vocab floats). Returns 0 or a negative errno with err set. */
int gen_prefill(struct backend *b, int seq, const int32_t *ids, int n, int start,
		float *logits, char *err);

/* Called with each new token; returns true to stop after it. */
typedef bool (*gen_token_fn)(void *arg, int32_t id);

/* Prefills prompt[0..n) and appends up to max_new greedy tokens to out
 * (which has room for them), calling on_token (when not NULL) as each comes.
 * logits is scratch of vocab floats. Returns the number of tokens made, or
 * a negative errno; the prompt plus max_new must fit in b->max_ctx. */
int gen_greedy(struct backend *b, int seq, const int32_t *prompt, int n, int max_new,
	       int32_t *out, float *logits, gen_token_fn on_token, void *arg, char *err);

#endif
