/* What every backend shares: its limits, and checking a step's entries
 * against them. */
#include "backend.h"

#include <errno.h>
#include <stdlib.h>

void be_init(struct backend *b, const struct backend_ops *ops, const char *name, int vocab,
	     int max_tokens, int max_seqs, int max_ctx, int max_pos)
{
	b->ops = ops;
	b->name = name;
	b->vocab = vocab;
	b->max_tokens = max_tokens > 0 ? max_tokens : 512;
	b->max_seqs = max_seqs > 0 ? max_seqs : 1;
	int ctx = max_ctx > 0 ? max_ctx : 4096;
	b->max_ctx = ctx < max_pos ? ctx : max_pos;
}

int be_check(const struct backend *b, const struct be_entry *e, int n, char *err)
{
	if (n < 1 || n > b->max_tokens)
		return ember_err(err, -EINVAL, "step of %d entries (1..%d allowed)", n, b->max_tokens);
	int rows = 0;
	for (int i = 0; i < n; i++) {
		if (e[i].seq < 0 || e[i].seq >= b->max_seqs || e[i].pos < 0 ||
		    e[i].pos >= b->max_ctx || e[i].token < 0 || e[i].token >= b->vocab)
			return ember_err(err, -EINVAL,
					 "entry %d (seq %d, pos %d, token %d) is outside seq < %d, "
					 "pos < %d, token < %d",
					 i, e[i].seq, e[i].pos, e[i].token, b->max_seqs, b->max_ctx,
					 b->vocab);
		if (e[i].logits_row >= 0)
			rows++;
	}
	/* Rows must be a permutation of 0..rows-1: each in range, none twice. */
	for (int i = 0; i < n; i++) {
		if (e[i].logits_row < 0)
			continue;
		if (e[i].logits_row >= rows)
			return ember_err(err, -EINVAL, "entry %d: logits row %d of %d", i,
					 e[i].logits_row, rows);
		for (int j = 0; j < i; j++)
			if (e[j].logits_row == e[i].logits_row)
				return ember_err(err, -EINVAL, "logits row %d given twice",
						 e[i].logits_row);
	}
	return rows;
}

int be_check_sample(const struct backend *b, const struct be_entry *e, int n, char *err)
{
	int rows = be_check(b, e, n, err);
	if (rows > b->max_seqs)
		return ember_err(err, -EINVAL, "%d rows to sample; at most %d", rows, b->max_seqs);
	return rows;
}

/* ---- the failing backend ------------------------------------------------- */

struct fault_backend {
	struct backend base; /* inner's limits, under ops of its own */
	struct backend *inner;
	long left;           /* steps still allowed */
};

static int fault_step(struct fault_backend *fb, char *err)
{
	if (fb->left <= 0)
		return ember_err(err, -EIO, "injected failure (EMBER_FAULT_STEPS)");
	fb->left--;
	return 0;
}

static int fault_forward(struct backend *b, const struct be_entry *e, int n, float *logits,
			 char *err)
{
	struct fault_backend *fb = (struct fault_backend *)b;
	int rc = fault_step(fb, err);
	return rc < 0 ? rc : be_forward(fb->inner, e, n, logits, err);
}

static int fault_sample(struct backend *b, const struct be_entry *e, int n,
			const struct sampler_row *rows, struct sampler_result *out, char *err)
{
	struct fault_backend *fb = (struct fault_backend *)b;
	int rc = fault_step(fb, err);
	return rc < 0 ? rc : be_sample(fb->inner, e, n, rows, out, err);
}

static int fault_bind(struct backend *b, int seq, const int32_t *blocks, int n, char *err)
{
	return be_bind(((struct fault_backend *)b)->inner, seq, blocks, n, err);
}

static void fault_destroy(struct backend *b)
{
	struct fault_backend *fb = (struct fault_backend *)b;
	be_destroy(fb->inner);
	free(fb);
}

static const struct backend_ops fault_ops = {
	.forward = fault_forward,
	.sample = fault_sample,
	.bind = fault_bind,
	.destroy = fault_destroy,
};

int be_fault_create(struct backend *inner, long steps, struct backend **out, char *err)
{
	*out = NULL;
	struct fault_backend *fb = calloc(1, sizeof *fb);
	if (!fb) {
		be_destroy(inner);
		return ember_err(err, -ENOMEM, "out of memory");
	}
	fb->base = *inner;
	fb->base.ops = &fault_ops;
	fb->inner = inner;
	fb->left = steps;
	*out = &fb->base;
	return 0;
}
