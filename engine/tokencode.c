/* Byte-level BPE encoding as Hugging Face's tokenizers library does it
 * (tokenizer.h). An input is split on added tokens first; each remaining
 * segment is normalized, cut by the pre-tokenizers into words, and each
 * word is mapped to byte-level symbols and merged by rank (lowest first,
 * leftmost on ties, with a heap as in tokenizers' Word::merge_all). Each
 * thread encodes through its own tok_ctx, which caches short words. */
#include "tokint.h"

#include <errno.h>
#include <stdlib.h>
#include <utf8proc.h>

#define CACHE_MAX_WORD 64      /* longer words are not cached */
#define CACHE_SLOTS (1 << 16)

struct cache_entry {
	uint64_t hash;
	uint8_t len;                  /* 0: empty */
	uint8_t n_ids;
	char word[CACHE_MAX_WORD];
	int32_t ids[CACHE_MAX_WORD];
};

struct span {
	size_t off, len;
};

struct tok_ctx {
	const struct tokenizer *t;
	struct cache_entry *cache;    /* (CACHE_SLOTS) */
	char *arena;                  /* normalized text and prefixed words */
	size_t arena_len, arena_cap;
	struct span *a, *b;           /* splits, before and after one pre-tokenizer */
	size_t cap_a, cap_b;
	pcre2_match_data *md;
	/* merge scratch, sized by the longest word seen */
	int32_t *sym;
	int32_t *prev, *next;         /* (sym_cap) the live symbols as a list */
	uint32_t *heap_rank, *heap_pos; /* (3 * sym_cap) pairs to merge */
	size_t sym_cap;
	char *word;                   /* (word_cap) a word in the byte-level alphabet */
	size_t word_cap;
};

/* With ignore_merges (Llama 3's tokenizer), a word found whole in the
 * vocabulary is that token, whatever the merges would make of it. */
static int32_t whole_word(const struct tokenizer *t, const char *w, size_t len, char *scratch)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		uint8_t b = (uint8_t)w[i];
		memcpy(scratch + n, t->byte_text[b], t->byte_text_len[b]);
		n += t->byte_text_len[b];
	}
	return strmap_get(t, scratch, n);
}

struct tok_ctx *tok_ctx_create(const struct tokenizer *t)
{
	struct tok_ctx *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->t = t;
	c->cache = calloc(CACHE_SLOTS, sizeof *c->cache);
	c->md = pcre2_match_data_create(4, NULL);
	if (!c->cache || !c->md) {
		tok_ctx_destroy(c);
		return NULL;
	}
	return c;
}

void tok_ctx_destroy(struct tok_ctx *c)
{
	if (!c)
		return;
	free(c->cache);
	free(c->arena);
	free(c->a);
	free(c->b);
	pcre2_match_data_free(c->md);
	free(c->sym);
	free(c->prev);
	free(c->next);
	free(c->heap_rank);
	free(c->heap_pos);
	free(c->word);
	free(c);
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return true;
	size_t n = *cap ? *cap : 64;
	while (n < need)
		n *= 2;
	void *q = realloc(*p, n * elem);
	if (!q)
		return false;
	*p = q;
	*cap = n;
	return true;
}

static bool push_ids(int32_t **ids, size_t *n, size_t *cap, const int32_t *src, size_t k)
{
	if (k == 0)
		return true;
	if (!grow((void **)ids, cap, *n + k, sizeof **ids))
		return false;
	memcpy(*ids + *n, src, k * sizeof *src);
	*n += k;
	return true;
}

/* Appends len bytes (and returns their offset in the arena), or -1. */
static long arena_put(struct tok_ctx *c, const char *s, size_t len)
{
	if (!grow((void **)&c->arena, &c->arena_cap, c->arena_len + len + 1, 1))
		return -1;
	memcpy(c->arena + c->arena_len, s, len);
	long off = (long)c->arena_len;
	c->arena_len += len;
	return off;
}

static bool span_push(struct span **v, size_t *n, size_t *cap, size_t off, size_t len)
{
	if (len == 0)
		return true;
	if (!grow((void **)v, cap, *n + 1, sizeof **v))
		return false;
	(*v)[(*n)++] = (struct span){off, len};
	return true;
}

/* min-heap of (rank, pos) */
static void heap_push(struct tok_ctx *c, size_t *n, uint32_t rank, uint32_t pos)
{
	size_t i = (*n)++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (c->heap_rank[p] < rank || (c->heap_rank[p] == rank && c->heap_pos[p] < pos))
			break;
		c->heap_rank[i] = c->heap_rank[p];
		c->heap_pos[i] = c->heap_pos[p];
		i = p;
	}
	c->heap_rank[i] = rank;
	c->heap_pos[i] = pos;
}

static void heap_pop(struct tok_ctx *c, size_t *n, uint32_t *rank, uint32_t *pos)
{
	*rank = c->heap_rank[0];
	*pos = c->heap_pos[0];
	uint32_t r = c->heap_rank[--*n], p = c->heap_pos[*n];
	size_t i = 0;
	for (;;) {
		size_t l = 2 * i + 1, m = i;
		uint32_t mr = r, mp = p;
		for (size_t k = l; k <= l + 1 && k < *n; k++) {
			if (c->heap_rank[k] < mr || (c->heap_rank[k] == mr && c->heap_pos[k] < mp)) {
				m = k;
				mr = c->heap_rank[k];
				mp = c->heap_pos[k];
			}
		}
		if (m == i)
			break;
		c->heap_rank[i] = c->heap_rank[m];
		c->heap_pos[i] = c->heap_pos[m];
		i = m;
	}
	c->heap_rank[i] = r;
	c->heap_pos[i] = p;
}

static void push_pair(struct tok_ctx *c, size_t *hn, int32_t left)
{
	if (left < 0 || c->next[left] < 0)
		return;
	const struct merge *m = merge_get(&c->t->merges, c->sym[left], c->sym[c->next[left]]);
	if (m)
		heap_push(c, hn, (uint32_t)m->rank, (uint32_t)left);
}

/* BPE of one word of raw bytes into ids. */
static int bpe_word(struct tok_ctx *c, const char *w, size_t len, int32_t **ids, size_t *n,
		    size_t *cap)
{
	const struct tokenizer *t = c->t;
	uint64_t h = 0;
	struct cache_entry *ce = NULL;
	if (len <= CACHE_MAX_WORD) {
		h = hash_bytes(w, len);
		ce = &c->cache[h & (CACHE_SLOTS - 1)];
		if (ce->len == len && ce->hash == h && memcmp(ce->word, w, len) == 0)
			return push_ids(ids, n, cap, ce->ids, ce->n_ids) ? 0 : -ENOMEM;
	}
	if (t->ignore_merges && len <= t->longest) {
		if (!grow((void **)&c->word, &c->word_cap, 3 * len, 1))
			return -ENOMEM;
		int32_t id = whole_word(t, w, len, c->word);
		if (id >= 0)
			return push_ids(ids, n, cap, &id, 1) ? 0 : -ENOMEM;
	}
	if (len > c->sym_cap) {
		size_t cap = len < 64 ? 64 : len;
		int32_t *sym = realloc(c->sym, cap * sizeof *sym);
		if (sym)
			c->sym = sym;
		int32_t *prev = realloc(c->prev, cap * sizeof *prev);
		if (prev)
			c->prev = prev;
		int32_t *next = realloc(c->next, cap * sizeof *next);
		if (next)
			c->next = next;
		uint32_t *hr = realloc(c->heap_rank, 3 * cap * sizeof *hr);
		if (hr)
			c->heap_rank = hr;
		uint32_t *hp = realloc(c->heap_pos, 3 * cap * sizeof *hp);
		if (hp)
			c->heap_pos = hp;
		if (!sym || !prev || !next || !hr || !hp)
			return -ENOMEM;
		c->sym_cap = cap;
	}
	int32_t k = 0;
	for (size_t i = 0; i < len; i++) {
		int32_t id = t->byte_id[(uint8_t)w[i]];
		if (id < 0)
			continue; /* no symbol for this byte and no unk: dropped, as tokenizers does */
		c->sym[k] = id;
		c->prev[k] = k - 1;
		c->next[k] = k + 1;
		k++;
	}
	if (k == 0)
		return 0;
	c->next[k - 1] = -1;
	size_t hn = 0;
	for (int32_t i = 0; i + 1 < k; i++)
		push_pair(c, &hn, i);
	while (hn > 0) {
		uint32_t rank, pos;
		heap_pop(c, &hn, &rank, &pos);
		int32_t p = (int32_t)pos;
		if (c->sym[p] < 0 || c->next[p] < 0)
			continue;
		int32_t nx = c->next[p];
		const struct merge *m = merge_get(&t->merges, c->sym[p], c->sym[nx]);
		if (!m || (uint32_t)m->rank != rank)
			continue; /* stale: one side was merged since */
		c->sym[p] = m->id;
		c->sym[nx] = -1;
		c->next[p] = c->next[nx];
		if (c->next[nx] >= 0)
			c->prev[c->next[nx]] = p;
		push_pair(c, &hn, c->prev[p]);
		push_pair(c, &hn, p);
	}
	size_t start = *n;
	for (int32_t i = 0; i >= 0; i = c->next[i])
		if (!push_ids(ids, n, cap, &c->sym[i], 1))
			return -ENOMEM;
	if (ce && *n - start <= CACHE_MAX_WORD) {
		ce->hash = h;
		ce->len = (uint8_t)len;
		ce->n_ids = (uint8_t)(*n - start);
		memcpy(ce->word, w, len);
		memcpy(ce->ids, *ids + start, (*n - start) * sizeof **ids);
	}
	return 0;
}

/* Cuts each span of c->a with one pre-tokenizer into c->b. */
static int pretokenize(struct tok_ctx *c, const struct pretok *pt, size_t n_in, size_t *n_out)
{
	size_t nb = 0;
	for (size_t s = 0; s < n_in; s++) {
		size_t off = c->a[s].off, len = c->a[s].len;
		if (pt->kind == PT_BYTELEVEL && pt->prefix_space && c->arena[off] != ' ') {
			/* A copy of the span after a space; the arena may move. */
			if (!grow((void **)&c->arena, &c->arena_cap, c->arena_len + len + 2, 1))
				return -ENOMEM;
			c->arena[c->arena_len] = ' ';
			memcpy(c->arena + c->arena_len + 1, c->arena + off, len);
			off = c->arena_len;
			c->arena_len += len + 1;
			len++;
		}
		if (!pt->re) {
			if (!span_push(&c->b, &nb, &c->cap_b, off, len))
				return -ENOMEM;
			continue;
		}
		/* Segments alternate gap, match, gap, ...; a match is a delimiter
		 * unless the pattern is inverted. An empty match is a boundary
		 * between gaps, as in tokenizers. */
		size_t pos = 0, gap = 0;
		bool have = false, cur_delim = false, cur_merged = false;
		size_t pend_off = 0, pend_len = 0;
		bool pend = false;
		for (;;) {
			size_t ms = len, me = len;
			int rc = pos <= len ? pcre2_match(pt->re, (PCRE2_SPTR)(c->arena + off), len, pos,
							  PCRE2_NO_UTF_CHECK, c->md, NULL)
					    : PCRE2_ERROR_NOMATCH;
			if (rc >= 0) {
				PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
				ms = ov[0];
				me = ov[1];
				if (ms < gap || me < ms || me > len)
					return -EINVAL; /* \K can move a start back: not ours */
			} else if (rc != PCRE2_ERROR_NOMATCH) {
				return -EINVAL;
			}
			/* Two segments: the gap [gap, ms) and the match [ms, me). */
			struct {
				size_t o, l;
				bool delim;
			} seg[2] = {{gap, ms - gap, pt->invert}, {ms, me - ms, !pt->invert}};
			for (int k = 0; k < 2; k++) {
				if (seg[k].l == 0)
					continue;
				size_t so = off + seg[k].o, sl = seg[k].l;
				bool d = seg[k].delim;
				switch (pt->behavior) {
				case SB_REMOVED:
					if (!d && !span_push(&c->b, &nb, &c->cap_b, so, sl))
						return -ENOMEM;
					break;
				case SB_ISOLATED:
					if (!span_push(&c->b, &nb, &c->cap_b, so, sl))
						return -ENOMEM;
					break;
				case SB_CONTIGUOUS:
					if (have && d && cur_delim) {
						c->b[nb - 1].len += sl;
					} else if (!span_push(&c->b, &nb, &c->cap_b, so, sl)) {
						return -ENOMEM;
					}
					have = true, cur_delim = d;
					break;
				case SB_PREVIOUS:
					if (have && d && !cur_delim && !cur_merged) {
						c->b[nb - 1].len += sl;
						cur_merged = true;
					} else {
						if (!span_push(&c->b, &nb, &c->cap_b, so, sl))
							return -ENOMEM;
						cur_merged = false;
					}
					have = true, cur_delim = d;
					break;
				case SB_NEXT:
					if (d) {
						if (pend && !span_push(&c->b, &nb, &c->cap_b, pend_off, pend_len))
							return -ENOMEM;
						pend = true, pend_off = so, pend_len = sl;
					} else if (pend) {
						if (!span_push(&c->b, &nb, &c->cap_b, pend_off, pend_len + sl))
							return -ENOMEM;
						pend = false;
					} else if (!span_push(&c->b, &nb, &c->cap_b, so, sl)) {
						return -ENOMEM;
					}
					break;
				}
			}
			if (rc < 0 || me >= len)
				break;
			gap = me;
			if (me > ms) {
				pos = me;
			} else { /* empty: search again one character on */
				pos = ms + 1;
				while (pos < len && ((uint8_t)c->arena[off + pos] & 0xc0) == 0x80)
					pos++;
			}
		}
		if (pend && !span_push(&c->b, &nb, &c->cap_b, pend_off, pend_len))
			return -ENOMEM;
	}
	*n_out = nb;
	return 0;
}

static int normalize_into_arena(struct tok_ctx *c, const char *s, size_t len, long *off, size_t *out_len)
{
	const struct tokenizer *t = c->t;
	bool ascii = true;
	for (size_t i = 0; i < len && ascii; i++)
		ascii = (uint8_t)s[i] < 0x80;
	if (ascii || t->n_norm == 0) {
		*off = arena_put(c, s, len);
		*out_len = len;
		return *off < 0 ? -ENOMEM : 0;
	}
	uint8_t *cur = NULL;
	utf8proc_ssize_t cur_len = (utf8proc_ssize_t)len;
	for (int i = 0; i < t->n_norm; i++) {
		static const utf8proc_option_t opts[] = {
			[NORM_NFC] = UTF8PROC_STABLE | UTF8PROC_COMPOSE,
			[NORM_NFD] = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE,
			[NORM_NFKC] = UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT,
			[NORM_NFKD] = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT,
		};
		uint8_t *next = NULL;
		utf8proc_ssize_t r = utf8proc_map(cur ? cur : (const uint8_t *)s, cur_len, &next, opts[t->norm[i]]);
		free(cur);
		if (r < 0)
			return r == UTF8PROC_ERROR_NOMEM ? -ENOMEM : -EILSEQ;
		cur = next;
		cur_len = r;
	}
	*off = arena_put(c, (const char *)cur, (size_t)cur_len);
	*out_len = (size_t)cur_len;
	free(cur);
	return *off < 0 ? -ENOMEM : 0;
}

/* A segment of text between added tokens. */
static int encode_segment(struct tok_ctx *c, const char *s, size_t len, int32_t **ids, size_t *n,
			  size_t *cap)
{
	if (len == 0)
		return 0;
	c->arena_len = 0;
	long off;
	size_t nlen;
	int rc = normalize_into_arena(c, s, len, &off, &nlen);
	if (rc < 0)
		return rc;
	size_t na = 0;
	if (!span_push(&c->a, &na, &c->cap_a, (size_t)off, nlen))
		return -ENOMEM;
	for (int i = 0; i < c->t->n_pretok; i++) {
		size_t nb;
		if ((rc = pretokenize(c, &c->t->pretok[i], na, &nb)) < 0)
			return rc;
		struct span *tmp = c->a;
		size_t tcap = c->cap_a;
		c->a = c->b, c->cap_a = c->cap_b;
		c->b = tmp, c->cap_b = tcap;
		na = nb;
	}
	for (size_t i = 0; i < na; i++)
		if ((rc = bpe_word(c, c->arena + c->a[i].off, c->a[i].len, ids, n, cap)) < 0)
			return rc;
	return 0;
}

static bool is_word_byte(uint8_t b)
{
	return (b >= '0' && b <= '9') || (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || b == '_' ||
	       b >= 0x80;
}

/* The leftmost, then longest, added token in text[from..len). */
static const struct added *find_added(const struct tokenizer *t, const char *text, size_t len,
				      size_t from, size_t *at)
{
	for (size_t i = from; i < len; i++) {
		uint8_t b = (uint8_t)text[i];
		for (uint32_t k = t->added_at[b]; k < t->added_at[b + 1]; k++) {
			const struct added *a = &t->added[k];
			if (a->len > len - i || memcmp(a->text, text + i, a->len) != 0)
				continue;
			if (a->single_word && ((i > 0 && is_word_byte((uint8_t)text[i - 1])) ||
					       (i + a->len < len && is_word_byte((uint8_t)text[i + a->len]))))
				continue;
			*at = i;
			return a;
		}
	}
	return NULL;
}

static bool is_space(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

int tok_encode(const struct tokenizer *t, struct tok_ctx *c, const char *text, size_t len,
	       bool add_special, int32_t **ids, size_t *n, size_t *cap, char *err)
{
	size_t ok = utf8_valid_prefix((const uint8_t *)text, len);
	if (ok != len)
		return ember_err(err, -EILSEQ, "invalid UTF-8 at byte %zu", ok);
	if (add_special && !push_ids(ids, n, cap, t->prefix, (size_t)t->n_prefix))
		return ember_err(err, -ENOMEM, "out of memory");
	size_t pos = 0;
	int rc;
	while (pos <= len) {
		size_t at = len;
		const struct added *a = find_added(t, text, len, pos, &at);
		size_t seg_end = at, next = len + 1;
		if (a) {
			next = at + a->len;
			if (a->lstrip)
				while (seg_end > pos && is_space(text[seg_end - 1]))
					seg_end--;
			if (a->rstrip)
				while (next < len && is_space(text[next]))
					next++;
		}
		if ((rc = encode_segment(c, text + pos, seg_end - pos, ids, n, cap)) < 0)
			return ember_err(err, rc, rc == -ENOMEM ? "out of memory"
						 : rc == -EILSEQ ? "text could not be normalized"
								  : "the pre-tokenizer's regex failed");
		if (!a)
			break;
		if (!push_ids(ids, n, cap, &a->id, 1))
			return ember_err(err, -ENOMEM, "out of memory");
		pos = next;
	}
	if (add_special && !push_ids(ids, n, cap, t->suffix, (size_t)t->n_suffix))
		return ember_err(err, -ENOMEM, "out of memory");
	return 0;
}
