/* Greedy decoding of one sequence. */
#include "generate.h"

#include <errno.h>

#define STEP_MAX 4096

int gen_argmax(const float *x, int n)
{
	int best = 0;
	for (int i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

int gen_prefill(struct backend *b, int seq, const int32_t *ids, int n, int start,
		float *logits, char *err)
{
	if (n < 1)
		return ember_err(err, -EINVAL, "empty prompt");
	if (start < 0 || n > b->max_ctx - start)
		return ember_err(err, -EINVAL, "%d tokens from position %d exceed the context of %d",
				 n, start, b->max_ctx);
	struct be_entry e[STEP_MAX];
	int step = b->max_tokens < STEP_MAX ? b->max_tokens : STEP_MAX;
	for (int i = 0; i < n; i += step) {
		int m = n - i < step ? n - i : step;
		for (int j = 0; j < m; j++)
			e[j] = (struct be_entry){seq, start + i + j, ids[i + j], -1};
		if (i + m == n)
			e[m - 1].logits_row = 0;
		int rc = be_forward(b, e, m, logits, err);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int gen_greedy(struct backend *b, int seq, const int32_t *prompt, int n, int max_new,
	       int32_t *out, float *logits, gen_token_fn on_token, void *arg, char *err)
{
	if (max_new < 0 || n > b->max_ctx || max_new > b->max_ctx - n)
		return ember_err(err, -EINVAL, "%d prompt tokens and %d new ones exceed the context of %d",
				 n, max_new, b->max_ctx);
	int rc = gen_prefill(b, seq, prompt, n, 0, logits, err);
	if (rc < 0)
		return rc;
	for (int i = 0; i < max_new; i++) {
		out[i] = gen_argmax(logits, b->vocab);
		if ((on_token && on_token(arg, out[i])) || i + 1 == max_new)
			return i + 1;
		struct be_entry e = {seq, n + i, out[i], 0};
		if ((rc = be_forward(b, &e, 1, logits, err)) < 0)
			return rc;
	}
	return 0;
}
