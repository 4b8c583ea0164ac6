/* The KV cache's block tables (kv.h). */
#include "kv.h"

#include "backend.h"

#include <errno.h>
#include <stdlib.h>

size_t kv_block_bytes(const struct kv_layout *l, size_t elem_size)
{
	size_t per = 0;
	for (int i = 0; i < l->n_parts; i++)
		per += (size_t)l->width[i];
	return (size_t)l->n_layers * KV_BLOCK * per * elem_size;
}

int kv_tables_init(struct kv_tables *t, int max_seqs, int max_ctx, int n_blocks, char *err)
{
	*t = (struct kv_tables){.max_seqs = max_seqs, .max_blocks = kv_blocks_for(max_ctx)};
	if (max_seqs < 1 || max_ctx < 1 || n_blocks < 0)
		return ember_err(err, -EINVAL, "KV tables of %d sequences of %d positions, %d blocks",
				 max_seqs, max_ctx, n_blocks);
	t->table = calloc((size_t)max_seqs, sizeof *t->table);
	t->len = calloc((size_t)max_seqs, sizeof *t->len);
	if (!t->table || !t->len)
		return ember_err(err, -ENOMEM, "out of memory");
	t->n_blocks = n_blocks;
	if (n_blocks > 0)
		return 0;
	size_t own;
	if (!size_mul((size_t)max_seqs, (size_t)t->max_blocks, &own) || own > INT32_MAX)
		return ember_err(err, -EINVAL, "%d sequences of %d positions: too many blocks",
				 max_seqs, max_ctx);
	if (!(t->own = malloc(own * sizeof *t->own)))
		return ember_err(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < own; i++)
		t->own[i] = (int32_t)i;
	t->n_blocks = (int)own;
	for (int s = 0; s < max_seqs; s++)
		kv_bind(t, s, NULL, 0, NULL); /* its own blocks: cannot fail */
	return 0;
}

void kv_tables_free(struct kv_tables *t)
{
	free(t->table);
	free(t->len);
	free(t->own);
	*t = (struct kv_tables){0};
}

int kv_bind(struct kv_tables *t, int seq, const int32_t *blocks, int n, char *err)
{
	if (seq < 0 || seq >= t->max_seqs || n < 0 || n > t->max_blocks)
		return ember_err(err, -EINVAL, "sequence %d with %d blocks: out of range", seq, n);
	for (int i = 0; blocks && i < n; i++)
		if (blocks[i] < 0 || blocks[i] >= t->n_blocks)
			return ember_err(err, -EINVAL, "block %d is not in the cache", blocks[i]);
	if (!blocks && t->own) {
		t->table[seq] = t->own + (size_t)seq * t->max_blocks;
		t->len[seq] = t->max_blocks;
		return 0;
	}
	t->table[seq] = blocks;
	t->len[seq] = blocks ? n : 0;
	return 0;
}

int kv_check(const struct kv_tables *t, const struct be_entry *e, int n, char *err)
{
	for (int i = 0; i < n; i++)
		if (e[i].pos >= t->len[e[i].seq] * KV_BLOCK)
			return ember_err(err, -EINVAL, "entry %d: sequence %d has no block for position %d",
					 i, e[i].seq, e[i].pos);
	return 0;
}
