/* The paged KV cache's bookkeeping, shared by the backends and the
 * scheduler: the block size, the layout a recipe declares, and the block
 * tables of the sequences (bind, and the check that a position has a
 * block). Computes nothing and holds none of
 * the cache itself (each backend owns that memory and reads it through the
 * tables). Runs in the worker's engine thread. */
#ifndef EMBER_KV_H
#define EMBER_KV_H

#include "common.h"

/* Blocks of KV_BLOCK positions; a sequence's table says which block holds
 * its positions i * KV_BLOCK onwards. */
#define KV_BLOCK 16

/* What one position keeps per layer: n_parts vectors of width[p] values
 * (K and V per KV head: two of n_kv_heads * head_dim). */
struct kv_layout {
	int n_layers;
	int n_parts;
	int width[2];
};

/* Blocks that hold positions 0..positions-1. */
static inline int kv_blocks_for(int positions)
{
	return (positions + KV_BLOCK - 1) / KV_BLOCK;
}

/* Bytes of one block: every layer and part of KV_BLOCK positions, of
 * elem_size bytes per value. */
size_t kv_block_bytes(const struct kv_layout *l, size_t elem_size);

/* The tables of max_seqs sequences over blocks 0..n_blocks-1. */
struct kv_tables {
	int max_seqs;
	int max_blocks;         /* a context's worth: the most one table holds */
	int n_blocks;
	const int32_t **table;  /* (max_seqs) the bound table, or NULL */
	int *len;               /* (max_seqs) blocks in it */
	int32_t *own;           /* (max_seqs, max_blocks) each sequence's own blocks, or NULL */
};

/* n_blocks > 0: a pool of that many blocks, for tables that bind gives
 * (no sequence has one until then). n_blocks == 0: every sequence its own
 * max_blocks blocks, bound from the start (n_blocks becomes max_seqs *
 * max_blocks). Returns 0 or -EINVAL / -ENOMEM with err set; kv_tables_free
 * frees what was made either way. */
int kv_tables_init(struct kv_tables *t, int max_seqs, int max_ctx, int n_blocks, char *err);
void kv_tables_free(struct kv_tables *t);

/* Makes blocks[0..n) seq's table, until bound again (blocks stays the
 * caller's and must outlive the binding; the caller may append to it and
 * bind again); with blocks NULL, seq's own blocks again, or none. Returns
 * 0 or -EINVAL for a sequence, a count or a block out of range. */
int kv_bind(struct kv_tables *t, int seq, const int32_t *blocks, int n, char *err);

/* Whether every entry's sequence has a block for its position (the
 * entries are already in range: be_check). Returns 0 or -EINVAL naming the
 * first that has none. */
struct be_entry;
int kv_check(const struct kv_tables *t, const struct be_entry *e, int n, char *err);

/* The block that holds position pos of seq (which kv_check found). */
static inline int32_t kv_block(const struct kv_tables *t, int seq, int pos)
{
	return t->table[seq][pos / KV_BLOCK];
}

#endif
