/* The tokenizer's insides (tokenizer.h), shared by its loading
 * (tokenizer.c) and its encoding (tokencode.c): the loaded vocabulary,
 * merges, added tokens, normalizers and pre-tokenizers, and the two hash
 * maps both look up. Not for use outside the tokenizer's files. */
#ifndef EMBER_TOKINT_H
#define EMBER_TOKINT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <pcre2.h>
#include <string.h>

#define MAX_PRETOK 16
#define MAX_NORM 8
#define MAX_TEMPLATE 8

static inline uint64_t hash_bytes(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h ^ (h >> 29);
}

static inline uint64_t hash_u64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	return x;
}

/* Token text -> id, open addressing over the pieces' own storage. Each
 * slot keeps its text's hash's high half, so that a probe reads a text
 * only when that matches (most probes would miss the cache otherwise). */
struct strslot {
	int32_t id;    /* id + 1; 0 is empty */
	uint32_t tag;  /* hash >> 32 */
};

struct strmap {
	struct strslot *slots;
	size_t mask;
};

/* (left id, right id) -> merge rank and merged id. */
struct merge {
	uint64_t key;  /* left << 32 | right, + 1 so 0 is empty */
	int32_t rank;
	int32_t id;
};

struct mergemap {
	struct merge *slots;
	size_t mask;
};

enum split_behavior { SB_REMOVED, SB_ISOLATED, SB_PREVIOUS, SB_NEXT, SB_CONTIGUOUS };
enum pretok_kind { PT_SPLIT, PT_BYTELEVEL };
enum norm_kind { NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD };

struct pretok {
	enum pretok_kind kind;
	pcre2_code *re;               /* PT_SPLIT, and PT_BYTELEVEL with use_regex */
	enum split_behavior behavior;
	bool invert;
	bool prefix_space;            /* PT_BYTELEVEL add_prefix_space */
};

struct added {
	const char *text;             /* in pieces */
	size_t len;
	int32_t id;
	bool special, lstrip, rstrip, single_word;
};

struct tokenizer {
	int n_ids;
	char **piece;                 /* (n_ids) raw bytes of each id, NULL if unused */
	uint32_t *piece_len;
	char **text;                  /* (n_ids) the token as written in the vocabulary */
	uint32_t *text_len;           /* (n_ids) strlen of each text */
	struct strmap vocab;          /* text -> id */
	struct mergemap merges;
	int32_t byte_id[256];         /* the id of each byte's single-symbol token, or -1 */
	char byte_text[256][3];       /* each byte's symbol in the byte-level alphabet, UTF-8 */
	uint8_t byte_text_len[256];
	bool ignore_merges;           /* a word that is in the vocabulary is one token */
	size_t longest;               /* bytes of the longest vocabulary entry */
	struct added *added;          /* sorted by first byte, longest first */
	size_t n_added;
	uint32_t added_at[257];       /* added[added_at[b]..added_at[b + 1]) start with byte b */
	bool *special;                /* (n_ids) */
	enum norm_kind norm[MAX_NORM];
	int n_norm;
	struct pretok pretok[MAX_PRETOK];
	int n_pretok;
	int32_t prefix[MAX_TEMPLATE], suffix[MAX_TEMPLATE];
	int n_prefix, n_suffix;
	int32_t bos, eos;
	char *chat_template;
};

/* The id whose vocabulary text is s[0..len), or -1. */
static inline int32_t strmap_get(const struct tokenizer *t, const char *s, size_t len)
{
	uint64_t h = hash_bytes(s, len);
	for (size_t i = h & t->vocab.mask;; i = (i + 1) & t->vocab.mask) {
		struct strslot e = t->vocab.slots[i];
		if (e.id == 0)
			return -1;
		if (e.tag == (uint32_t)(h >> 32) && t->text_len[e.id - 1] == len &&
		    memcmp(t->text[e.id - 1], s, len) == 0)
			return e.id - 1;
	}
}

/* The merge of ids a and b (its rank and merged id), or NULL. */
static inline const struct merge *merge_get(const struct mergemap *m, int32_t a, int32_t b)
{
	uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
	for (size_t i = hash_u64(key) & m->mask;; i = (i + 1) & m->mask) {
		if (m->slots[i].key == key)
			return &m->slots[i];
		if (m->slots[i].key == 0)
			return NULL;
	}
}

#endif
