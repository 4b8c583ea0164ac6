/* The backend interface: the one seam between the engine's scheduling code
 * and the code that computes (the CPU here, CUDA in kernels/). A backend owns
 * the model's working buffers and the KV cache of its sequences. Runs in the
 * worker's engine thread. */
#ifndef EMBER_BACKEND_H
#define EMBER_BACKEND_H

#include "common.h"
#include "kv.h"
#include "sampler.h"

/* One token of a forward step: token `token` of sequence `seq` at position
 * `pos`. Its key and value are written into the sequence's cache at pos; it
 * attends to positions 0..pos of that sequence, which earlier steps or
 * earlier entries of this step must have written. When logits_row >= 0 the
 * logits of the next token after it are written to row logits_row. */
struct be_entry {
	int32_t seq;
	int32_t pos;
	int32_t token;
	int32_t logits_row;
};

struct backend;

struct backend_ops {
	/* Runs one step over n entries (1..max_tokens). logits is (rows, vocab)
	 * f32 where rows is the number of entries with logits_row >= 0, and
	 * those rows must be 0..rows-1, each once. Returns 0, or -EINVAL with
	 * err set when an entry is out of range (nothing is computed then). */
	int (*forward)(struct backend *b, const struct be_entry *e, int n, float *logits,
		       char *err);
	/* Runs forward's step, then chooses the next token of each logits row
	 * r as sampler_sample_row would from that row's logits with rows[r],
	 * into out[r]; the logits stay where they were made (on a GPU only
	 * the results cross to the host). At most max_seqs rows. Returns as
	 * forward does. */
	int (*sample)(struct backend *b, const struct be_entry *e, int n,
		      const struct sampler_row *rows, struct sampler_result *out, char *err);
	/* kv_bind on the backend's tables (kv.h): blocks[0..n) becomes seq's
	 * block table until bound again; NULL gives seq its own blocks back,
	 * if the backend was made with them. Returns 0 or -EINVAL. */
	int (*bind)(struct backend *b, int seq, const int32_t *blocks, int n, char *err);
	void (*destroy)(struct backend *b);
};

struct backend {
	const struct backend_ops *ops;
	const char *name;   /* "cpu", "cuda" */
	int max_tokens;     /* entries per step */
	int max_seqs;       /* sequence ids are 0..max_seqs-1 */
	int max_ctx;        /* positions are 0..max_ctx-1 */
	int vocab;
	int kv_blocks;      /* blocks in the cache: ids 0..kv_blocks-1 */
	size_t kv_block_bytes; /* memory of one block (all layers, K and V) */
};

static inline int be_forward(struct backend *b, const struct be_entry *e, int n, float *logits,
			     char *err)
{
	return b->ops->forward(b, e, n, logits, err);
}

static inline int be_sample(struct backend *b, const struct be_entry *e, int n,
			    const struct sampler_row *rows, struct sampler_result *out, char *err)
{
	return b->ops->sample(b, e, n, rows, out, err);
}

static inline int be_bind(struct backend *b, int seq, const int32_t *blocks, int n, char *err)
{
	return b->ops->bind(b, seq, blocks, n, err);
}

static inline void be_destroy(struct backend *b)
{
	if (b)
		b->ops->destroy(b);
}

/* Fills b's limits as every backend does: max_tokens 0 means 512,
 * max_seqs 0 means 1, max_ctx 0 means 4096, and the context is at most the
 * model's max_pos. */
void be_init(struct backend *b, const struct backend_ops *ops, const char *name, int vocab,
	     int max_tokens, int max_seqs, int max_ctx, int max_pos);

/* Checks a step's entries against the backend's limits; shared by backends.
 * Returns the number of logits rows, or -EINVAL with err set. */
int be_check(const struct backend *b, const struct be_entry *e, int n, char *err);

/* be_check for a sampled step: also at most max_seqs rows. */
int be_check_sample(const struct backend *b, const struct be_entry *e, int n, char *err);

/* A backend that runs inner's steps (forward or sample) until `steps`
 * have run, then fails every later one with -EIO and "injected failure",
 * as a GPU does after a sticky error: for testing what a failed step does
 * to the worker. Takes ownership of inner in all cases (destroying the
 * result destroys it). Returns 0 or -ENOMEM with err set. */
int be_fault_create(struct backend *inner, long steps, struct backend **out, char *err);

#endif
