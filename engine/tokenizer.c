/* Byte-level BPE as Hugging Face's tokenizers library does it. An input is
 * split on added tokens first; each remaining segment is normalized, cut by
 * the pre-tokenizers into words, and each word is mapped to byte-level
 * symbols and merged by rank (lowest first, leftmost on ties, with a heap as
 * in tokenizers' Word::merge_all). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"
#include "tokjson.h"

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <utf8proc.h>

#define MAX_PRETOK 16
#define MAX_NORM 8
#define MAX_TEMPLATE 8
#define CACHE_MAX_WORD 64      /* longer words are not cached */
#define CACHE_SLOTS (1 << 16)

/* ---- hash maps ---------------------------------------------------------- */

static uint64_t hash_bytes(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
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

static bool strmap_init(struct strmap *m, size_t n)
{
	size_t cap = 16;
	while (cap < 2 * n)
		cap <<= 1;
	m->slots = calloc(cap, sizeof *m->slots);
	m->mask = cap - 1;
	return m->slots != NULL;
}

static int32_t strmap_get(const struct tokenizer *t, const char *s, size_t len)
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

/* Inserts id under its text (text_len set); an existing entry keeps its id
 * (added tokens that repeat a vocabulary entry point to the same id in
 * practice). */
static void strmap_put(struct tokenizer *t, int32_t id)
{
	const char *s = t->text[id];
	size_t len = t->text_len[id];
	uint64_t h = hash_bytes(s, len);
	for (size_t i = h & t->vocab.mask;; i = (i + 1) & t->vocab.mask) {
		struct strslot e = t->vocab.slots[i];
		if (e.id == 0) {
			t->vocab.slots[i] = (struct strslot){id + 1, (uint32_t)(h >> 32)};
			return;
		}
		if (e.tag == (uint32_t)(h >> 32) && t->text_len[e.id - 1] == len &&
		    memcmp(t->text[e.id - 1], s, len) == 0)
			return;
	}
}

static const struct merge *merge_get(const struct mergemap *m, int32_t a, int32_t b)
{
	uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
	for (size_t i = hash_u64(key) & m->mask;; i = (i + 1) & m->mask) {
		if (m->slots[i].key == key)
			return &m->slots[i];
		if (m->slots[i].key == 0)
			return NULL;
	}
}

static void merge_put(struct mergemap *m, int32_t a, int32_t b, int32_t rank, int32_t id)
{
	uint64_t key = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1;
	for (size_t i = hash_u64(key) & m->mask;; i = (i + 1) & m->mask) {
		if (m->slots[i].key == key)
			return; /* the first (lowest) rank wins, as in tokenizers */
		if (m->slots[i].key == 0) {
			m->slots[i] = (struct merge){key, rank, id};
			return;
		}
	}
}

static void byte_alphabet(uint32_t cp_of[256])
{
	uint32_t extra = 256;
	for (int b = 0; b < 256; b++) {
		bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
		cp_of[b] = printable ? (uint32_t)b : extra++;
	}
}

/* ---- loading ------------------------------------------------------------- */

static int compile_re(const char *pattern, size_t len, pcre2_code **out, char *err)
{
	int ec;
	PCRE2_SIZE eo;
	*out = pcre2_compile((PCRE2_SPTR)pattern, len, PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK,
			     &ec, &eo, NULL);
	if (!*out) {
		PCRE2_UCHAR msg[128];
		pcre2_get_error_message(ec, msg, sizeof msg);
		return ember_err(err, -EINVAL, "tokenizer.json: regex /%.60s/ at %zu: %s", pattern,
				 (size_t)eo, (const char *)msg);
	}
	pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
	return 0;
}

static const char GPT2_PATTERN[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int add_pretok(struct tokenizer *t, json_t *p, char *err)
{
	const char *type = json_string_value(json_object_get(p, "type"));
	if (!type)
		return ember_err(err, -EINVAL, "tokenizer.json: a pre_tokenizer has no type");
	if (strcmp(type, "Sequence") == 0) {
		json_t *list = json_object_get(p, "pretokenizers");
		if (!json_is_array(list))
			return ember_err(err, -EINVAL, "tokenizer.json: Sequence has no pretokenizers");
		for (size_t i = 0; i < json_array_size(list); i++) {
			int rc = add_pretok(t, json_array_get(list, i), err);
			if (rc < 0)
				return rc;
		}
		return 0;
	}
	if (t->n_pretok == MAX_PRETOK)
		return ember_err(err, -EINVAL, "tokenizer.json: more than %d pre-tokenizers", MAX_PRETOK);
	struct pretok *pt = &t->pretok[t->n_pretok];
	memset(pt, 0, sizeof *pt);
	int rc;
	if (strcmp(type, "Split") == 0) {
		json_t *pat = json_object_get(p, "pattern");
		json_t *re = json_object_get(pat, "Regex"), *str = json_object_get(pat, "String");
		const char *beh = json_string_value(json_object_get(p, "behavior"));
		if (json_is_string(re)) {
			rc = compile_re(json_string_value(re), json_string_length(re), &pt->re, err);
		} else if (json_is_string(str)) {
			/* A literal: quote it with \Q...\E unless it holds \E itself. */
			const char *s = json_string_value(str);
			if (strstr(s, "\\E"))
				return ember_err(err, -EINVAL, "tokenizer.json: Split string holds \\E");
			char *q = malloc(json_string_length(str) + 5);
			if (!q)
				return ember_err(err, -ENOMEM, "out of memory");
			sprintf(q, "\\Q%s\\E", s);
			rc = compile_re(q, strlen(q), &pt->re, err);
			free(q);
		} else {
			return ember_err(err, -EINVAL, "tokenizer.json: Split needs a Regex or String pattern");
		}
		if (rc < 0)
			return rc;
		t->n_pretok++; /* owned from here, freed with the tokenizer */
		static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious",
					      "MergedWithNext", "Contiguous"};
		int b = -1;
		for (int i = 0; beh && i < 5; i++)
			if (strcmp(beh, names[i]) == 0)
				b = i;
		if (b < 0)
			return ember_err(err, -EINVAL, "tokenizer.json: Split behavior '%s' is not known",
					 beh ? beh : "(none)");
		pt->behavior = (enum split_behavior)b;
		pt->invert = json_is_true(json_object_get(p, "invert"));
		return 0;
	}
	if (strcmp(type, "ByteLevel") == 0) {
		pt->kind = PT_BYTELEVEL;
		pt->prefix_space = json_is_true(json_object_get(p, "add_prefix_space"));
		json_t *ur = json_object_get(p, "use_regex");
		if (!ur || json_is_true(ur)) {
			if ((rc = compile_re(GPT2_PATTERN, sizeof GPT2_PATTERN - 1, &pt->re, err)) < 0)
				return rc;
			pt->behavior = SB_ISOLATED;
		}
		t->n_pretok++;
		return 0;
	}
	if (strcmp(type, "Digits") == 0) {
		bool each = json_is_true(json_object_get(p, "individual_digits"));
		if ((rc = compile_re("\\p{N}", 5, &pt->re, err)) < 0)
			return rc;
		t->n_pretok++;
		pt->behavior = each ? SB_ISOLATED : SB_CONTIGUOUS;
		return 0;
	}
	return ember_err(err, -EINVAL, "tokenizer.json: pre_tokenizer '%s' is not supported "
				       "(Sequence, Split, ByteLevel, Digits are)", type);
}

static int add_normalizer(struct tokenizer *t, json_t *n, char *err)
{
	if (!n || json_is_null(n))
		return 0;
	const char *type = json_string_value(json_object_get(n, "type"));
	if (!type)
		return ember_err(err, -EINVAL, "tokenizer.json: a normalizer has no type");
	if (strcmp(type, "Sequence") == 0) {
		json_t *list = json_object_get(n, "normalizers");
		if (!json_is_array(list))
			return ember_err(err, -EINVAL, "tokenizer.json: Sequence has no normalizers");
		for (size_t i = 0; i < json_array_size(list); i++) {
			int rc = add_normalizer(t, json_array_get(list, i), err);
			if (rc < 0)
				return rc;
		}
		return 0;
	}
	static const char *names[] = {"NFC", "NFD", "NFKC", "NFKD"};
	for (int i = 0; i < 4; i++) {
		if (strcmp(type, names[i]) == 0) {
			if (t->n_norm == MAX_NORM)
				return ember_err(err, -EINVAL, "tokenizer.json: more than %d normalizers",
						 MAX_NORM);
			t->norm[t->n_norm++] = (enum norm_kind)i;
			return 0;
		}
	}
	return ember_err(err, -EINVAL, "tokenizer.json: normalizer '%s' is not supported "
				       "(Sequence, NFC, NFD, NFKC, NFKD are)", type);
}

static int add_post_processor(struct tokenizer *t, json_t *p, char *err)
{
	if (!p || json_is_null(p))
		return 0;
	const char *type = json_string_value(json_object_get(p, "type"));
	if (!type)
		return ember_err(err, -EINVAL, "tokenizer.json: the post_processor has no type");
	if (strcmp(type, "ByteLevel") == 0)
		return 0; /* offsets only */
	if (strcmp(type, "Sequence") == 0) {
		json_t *list = json_object_get(p, "processors");
		for (size_t i = 0; i < json_array_size(list); i++) {
			int rc = add_post_processor(t, json_array_get(list, i), err);
			if (rc < 0)
				return rc;
		}
		return 0;
	}
	if (strcmp(type, "TemplateProcessing") != 0)
		return ember_err(err, -EINVAL, "tokenizer.json: post_processor '%s' is not supported "
					       "(TemplateProcessing, ByteLevel, Sequence are)", type);
	json_t *single = json_object_get(p, "single");
	if (!json_is_array(single))
		return ember_err(err, -EINVAL, "tokenizer.json: TemplateProcessing has no single");
	bool after = false;
	t->n_prefix = t->n_suffix = 0;
	for (size_t i = 0; i < json_array_size(single); i++) {
		json_t *it = json_array_get(single, i);
		json_t *sp = json_object_get(it, "SpecialToken");
		if (json_object_get(it, "Sequence")) {
			after = true;
			continue;
		}
		const char *name = json_string_value(json_object_get(sp, "id"));
		int32_t id = name ? strmap_get(t, name, strlen(name)) : -1;
		if (id < 0)
			return ember_err(err, -EINVAL, "tokenizer.json: template token '%s' is unknown",
					 name ? name : "(none)");
		if ((after ? t->n_suffix : t->n_prefix) == MAX_TEMPLATE)
			return ember_err(err, -EINVAL, "tokenizer.json: template too long");
		if (after)
			t->suffix[t->n_suffix++] = id;
		else
			t->prefix[t->n_prefix++] = id;
	}
	return 0;
}

/* The raw bytes a vocabulary entry stands for: each character mapped back
 * through the byte-level alphabet. An entry with a character outside the
 * alphabet is kept as its own UTF-8. */
static int set_piece(struct tokenizer *t, int32_t id, const char *text, const int16_t *byte_of)
{
	size_t len = strlen(text);
	char *p = malloc(len + 1);
	if (!p)
		return -ENOMEM;
	size_t n = 0;
	utf8proc_ssize_t i = 0;
	bool mapped = true;
	while ((size_t)i < len) {
		utf8proc_int32_t cp;
		utf8proc_ssize_t k = utf8proc_iterate((const uint8_t *)text + i, (utf8proc_ssize_t)(len - i), &cp);
		if (k <= 0 || cp >= 0x144 || byte_of[cp] < 0) {
			mapped = false;
			break;
		}
		p[n++] = (char)byte_of[cp];
		i += k;
	}
	if (!mapped) {
		memcpy(p, text, len);
		n = len;
	}
	p[n] = 0;
	free(t->piece[id]);
	t->piece[id] = p;
	t->piece_len[id] = (uint32_t)n;
	return 0;
}

static int token_id_of(json_t *cfg, const char *key, const struct tokenizer *t)
{
	json_t *v = json_object_get(cfg, key);
	if (json_is_object(v))
		v = json_object_get(v, "content");
	if (!json_is_string(v))
		return -1;
	return strmap_get(t, json_string_value(v), json_string_length(v));
}

static int cmp_added(const void *x, const void *y)
{
	const struct added *a = x, *b = y;
	uint8_t fa = (uint8_t)a->text[0], fb = (uint8_t)b->text[0];
	if (fa != fb)
		return fa < fb ? -1 : 1;
	if (a->len != b->len)
		return a->len > b->len ? -1 : 1;
	return a->id < b->id ? -1 : a->id > b->id;
}

/* The vocabulary comes in two passes over its entries, from jansson's tree
 * or straight from the file (tokjson.h): the largest id, then each entry.
 * FAST_PATH_NO: the file's bytes hold what the fast path leaves to
 * jansson (here, a text given twice, of which jansson keeps the last). */
#define FAST_PATH_NO (-1)

struct vocab_pass {
	struct tokenizer *t;
	int max_id;
	const int16_t *byte_of;
	bool fast;
	char *err;
};

static int vocab_max(void *arg, const char *text, size_t len, long id)
{
	struct vocab_pass *vp = arg;
	(void)len;
	if (id < 0 || id >= (1 << 24))
		return vp->fast ? FAST_PATH_NO
				: ember_err(vp->err, -EINVAL,
					    "tokenizer.json: vocab id of '%.40s' is not in 0..2^24", text);
	if (id > vp->max_id)
		vp->max_id = (int)id;
	return 0;
}

static int vocab_add(void *arg, const char *text, size_t len, long id)
{
	struct vocab_pass *vp = arg;
	struct tokenizer *t = vp->t;
	/* A key given twice: jansson keeps its last id (no NUL gets through
	 * either path, so len is strlen(text)). And an id given twice may be
	 * one such key's first id, which jansson would not see: jansson's
	 * path says which. */
	if (vp->fast && (strmap_get(t, text, len) >= 0 || t->text[id]))
		return FAST_PATH_NO;
	if (t->text[id])
		return ember_err(vp->err, -EINVAL, "tokenizer.json: id %ld is given twice in the vocab", id);
	if (!(t->text[id] = strdup(text)) || set_piece(t, (int32_t)id, text, vp->byte_of) < 0)
		return ember_err(vp->err, -ENOMEM, "out of memory");
	t->text_len[id] = (uint32_t)len;
	if (t->piece_len[id] > t->longest)
		t->longest = t->piece_len[id];
	strmap_put(t, (int32_t)id);
	return 0;
}

/* Runs fn over every entry of model.vocab: from the file when json is not
 * NULL (a range that tj_find found), else from jansson's object. */
static int vocab_each(json_t *vocab, const char *json, const struct tj_sections *sec,
		      int (*fn)(void *, const char *, size_t, long), struct vocab_pass *vp)
{
	if (json)
		return tj_vocab(json, sec->vocab_at, sec->vocab_end, fn, vp);
	const char *key;
	json_t *v;
	json_object_foreach(vocab, key, v) {
		if (!json_is_integer(v))
			return ember_err(vp->err, -EINVAL,
					 "tokenizer.json: vocab id of '%.40s' is not in 0..2^24", key);
		int rc = fn(vp, key, strlen(key), (long)json_integer_value(v));
		if (rc)
			return rc;
	}
	return 0;
}

static int load_vocab(struct tokenizer *t, json_t *model, const char *json,
		      const struct tj_sections *sec, json_t *added, char *err)
{
	json_t *vocab = json_object_get(model, "vocab");
	if (!json && !json_is_object(vocab))
		return ember_err(err, -EINVAL, "tokenizer.json: model.vocab is not an object");
	uint32_t cp_of[256];
	int16_t byte_of[0x144];
	struct vocab_pass vp = {t, -1, byte_of, json != NULL, err};
	int rc = vocab_each(vocab, json, sec, vocab_max, &vp);
	if (rc)
		return rc;
	int max_id = vp.max_id;
	for (size_t i = 0; i < json_array_size(added); i++) {
		json_t *id = json_object_get(json_array_get(added, i), "id");
		if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= (1 << 24))
			return ember_err(err, -EINVAL, "tokenizer.json: added_tokens[%zu] has no valid id", i);
		if (json_integer_value(id) > max_id)
			max_id = (int)json_integer_value(id);
	}
	if (max_id < 0)
		return ember_err(err, -EINVAL, "tokenizer.json: empty vocabulary");
	t->n_ids = max_id + 1;
	t->piece = calloc((size_t)t->n_ids, sizeof *t->piece);
	t->piece_len = calloc((size_t)t->n_ids, sizeof *t->piece_len);
	t->text = calloc((size_t)t->n_ids, sizeof *t->text);
	t->text_len = calloc((size_t)t->n_ids, sizeof *t->text_len);
	t->special = calloc((size_t)t->n_ids, sizeof *t->special);
	t->added = calloc(json_array_size(added) + 1, sizeof *t->added);
	if (!t->piece || !t->piece_len || !t->text || !t->text_len || !t->special || !t->added ||
	    !strmap_init(&t->vocab, (size_t)t->n_ids))
		return ember_err(err, -ENOMEM, "out of memory for the vocabulary");
	byte_alphabet(cp_of);
	for (int i = 0; i < 0x144; i++)
		byte_of[i] = -1;
	for (int b = 0; b < 256; b++)
		byte_of[cp_of[b]] = (int16_t)b;
	if ((rc = vocab_each(vocab, json, sec, vocab_add, &vp)) != 0)
		return rc;
	for (size_t i = 0; i < json_array_size(added); i++) {
		json_t *a = json_array_get(added, i);
		json_t *content = json_object_get(a, "content");
		if (!json_is_string(content) || json_string_length(content) == 0 ||
		    strlen(json_string_value(content)) != json_string_length(content))
			return ember_err(err, -EINVAL, "tokenizer.json: added_tokens[%zu] has no content", i);
		int32_t id = (int32_t)json_integer_value(json_object_get(a, "id"));
		const char *s = json_string_value(content);
		for (size_t k = 0; k < t->n_added; k++)
			if (t->added[k].id == id)
				return ember_err(err, -EINVAL, "tokenizer.json: added token id %d is given twice", id);
		if (!t->text[id]) {
			if (!(t->text[id] = strdup(s)))
				return ember_err(err, -ENOMEM, "out of memory");
			t->text_len[id] = (uint32_t)strlen(s);
		}
		/* An added token's bytes are its text, not byte-level symbols. */
		free(t->piece[id]);
		if (!(t->piece[id] = strdup(s)))
			return ember_err(err, -ENOMEM, "out of memory");
		t->piece_len[id] = (uint32_t)strlen(s);
		strmap_put(t, id);
		struct added *ad = &t->added[t->n_added++];
		ad->text = t->piece[id];
		ad->len = t->piece_len[id];
		ad->id = id;
		ad->special = json_is_true(json_object_get(a, "special"));
		ad->lstrip = json_is_true(json_object_get(a, "lstrip"));
		ad->rstrip = json_is_true(json_object_get(a, "rstrip"));
		ad->single_word = json_is_true(json_object_get(a, "single_word"));
		t->special[id] = ad->special;
	}
	for (int b = 0; b < 256; b++) {
		size_t n = utf8_put(cp_of[b], t->byte_text[b]);
		t->byte_text_len[b] = (uint8_t)n;
		t->byte_id[b] = strmap_get(t, t->byte_text[b], n);
	}
	qsort(t->added, t->n_added, sizeof *t->added, cmp_added);
	for (size_t i = 0, b = 0; b <= 256; b++) {
		while (i < t->n_added && (uint8_t)t->added[i].text[0] < b)
			i++;
		t->added_at[b] = (uint32_t)i;
	}
	return 0;
}

struct merge_pass {
	struct tokenizer *t;
	size_t i;
	char *err;
};

static int merge_add(void *arg, const char *a, size_t la, const char *b, size_t lb)
{
	struct merge_pass *mp = arg;
	struct tokenizer *t = mp->t;
	size_t i = mp->i++;
	char buf[1024];
	if (la + lb >= sizeof buf)
		return ember_err(mp->err, -EINVAL, "tokenizer.json: merge %zu is too long", i);
	int32_t ia = strmap_get(t, a, la), ib = strmap_get(t, b, lb);
	memcpy(buf, a, la);
	memcpy(buf + la, b, lb);
	int32_t iab = strmap_get(t, buf, la + lb);
	if (ia < 0 || ib < 0 || iab < 0)
		return ember_err(mp->err, -EINVAL, "tokenizer.json: merge %zu (%.*s %.*s) names a token "
						   "not in the vocabulary", i, (int)la, a, (int)lb, b);
	merge_put(&t->merges, ia, ib, (int32_t)i, iab);
	return 0;
}

/* The merges, in rank order: from the file when json is not NULL (a range
 * that tj_find found), else from jansson's array. */
static int load_merges(struct tokenizer *t, json_t *merges, const char *json,
		       const struct tj_sections *sec, char *err)
{
	if (!json && !json_is_array(merges))
		return ember_err(err, -EINVAL, "tokenizer.json: model.merges is not a list");
	size_t n = json ? sec->n_merges : json_array_size(merges), cap = 16;
	while (cap < 2 * n)
		cap <<= 1;
	t->merges.slots = calloc(cap, sizeof *t->merges.slots);
	t->merges.mask = cap - 1;
	if (!t->merges.slots)
		return ember_err(err, -ENOMEM, "out of memory for %zu merges", n);
	struct merge_pass mp = {t, 0, err};
	if (json)
		return tj_merges(json, sec->merges_at, sec->merges_end, merge_add, &mp);
	for (size_t i = 0; i < json_array_size(merges); i++) {
		json_t *m = json_array_get(merges, i);
		const char *a, *b;
		size_t la, lb;
		if (json_is_string(m)) {
			const char *s = json_string_value(m), *sp = strchr(s, ' ');
			if (!sp || strchr(sp + 1, ' '))
				return ember_err(err, -EINVAL, "tokenizer.json: merge %zu is not \"a b\"", i);
			a = s, la = (size_t)(sp - s), b = sp + 1, lb = strlen(sp + 1);
		} else if (json_is_array(m) && json_array_size(m) == 2 &&
			   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
			a = json_string_value(json_array_get(m, 0));
			b = json_string_value(json_array_get(m, 1));
			la = strlen(a), lb = strlen(b);
		} else {
			return ember_err(err, -EINVAL, "tokenizer.json: merge %zu is not a pair", i);
		}
		int rc = merge_add(&mp, a, la, b, lb);
		if (rc)
			return rc;
	}
	return 0;
}

static int check_model(json_t *model, char *err)
{
	const char *type = json_string_value(json_object_get(model, "type"));
	if (!type || strcmp(type, "BPE") != 0)
		return ember_err(err, -EINVAL, "tokenizer.json: model type '%s' is not supported (BPE is)",
				 type ? type : "(none)");
	if (json_is_true(json_object_get(model, "byte_fallback")))
		return ember_err(err, -EINVAL, "tokenizer.json: byte_fallback BPE is not supported");
	json_t *d = json_object_get(model, "dropout");
	if (d && !json_is_null(d) && json_number_value(d) != 0)
		return ember_err(err, -EINVAL, "tokenizer.json: BPE dropout is not supported");
	const char *pre = json_string_value(json_object_get(model, "continuing_subword_prefix"));
	const char *suf = json_string_value(json_object_get(model, "end_of_word_suffix"));
	if ((pre && *pre) || (suf && *suf))
		return ember_err(err, -EINVAL, "tokenizer.json: subword prefixes and suffixes are not supported");
	return 0;
}

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

static int check_decoder(json_t *d, char *err)
{
	if (!d || json_is_null(d))
		return 0;
	const char *type = json_string_value(json_object_get(d, "type"));
	if (type && strcmp(type, "ByteLevel") == 0)
		return 0;
	return ember_err(err, -EINVAL, "tokenizer.json: decoder '%s' is not supported (ByteLevel is)",
			 type ? type : "(none)");
}

/* tokenizer.json with jansson's tree for all but model.vocab and
 * model.merges when sec is not NULL (they are read from the file's bytes
 * at sec, and jansson parses a copy with {} and [] in their place): then
 * FAST_PATH_NO when the bytes hold what only jansson reads right. */
static int load_json(const uint8_t *json, size_t len, const struct tj_sections *sec,
		     const uint8_t *cfgb, size_t cfg_len, struct tokenizer **out, char *err)
{
	*out = NULL;
	json_error_t je;
	json_t *root, *cfg = NULL;
	if (sec) {
		size_t cut[2][2] = {{sec->vocab_at, sec->vocab_end}, {sec->merges_at, sec->merges_end}};
		const char *put[2] = {"{}", "[]"};
		int first = sec->vocab_at < sec->merges_at ? 0 : 1;
		char *rest = malloc(len);
		if (!rest)
			return ember_err(err, -ENOMEM, "out of memory");
		size_t n = 0, from = 0;
		for (int k = 0; k < 2; k++) {
			int i = k == 0 ? first : 1 - first;
			memcpy(rest + n, json + from, cut[i][0] - from);
			n += cut[i][0] - from;
			memcpy(rest + n, put[i], 2);
			n += 2;
			from = cut[i][1];
		}
		memcpy(rest + n, json + from, len - from);
		n += len - from;
		root = json_loadb(rest, n, 0, &je);
		free(rest);
		if (!root)
			return FAST_PATH_NO;
	} else if (!(root = json_loadb((const char *)json, len, 0, &je))) {
		return ember_err(err, -EINVAL, "tokenizer.json: %s (line %d)", je.text, je.line);
	}
	/* Integers as reals: tokenizer_config.json often holds a
	 * model_max_length past 2^64, and no integer of it is used. */
	if (cfgb && !(cfg = json_loadb((const char *)cfgb, cfg_len, JSON_DECODE_INT_AS_REAL, &je))) {
		json_decref(root);
		return ember_err(err, -EINVAL, "tokenizer_config.json: %s (line %d)", je.text, je.line);
	}
	struct tokenizer *t = calloc(1, sizeof *t);
	int rc = -ENOMEM;
	if (!t) {
		ember_err(err, rc, "out of memory");
		goto fail;
	}
	t->bos = t->eos = -1;
	json_t *model = json_object_get(root, "model");
	json_t *added = json_object_get(root, "added_tokens");
	if (!json_is_object(root) || !json_is_object(model)) {
		rc = ember_err(err, -EINVAL, "tokenizer.json: no model object");
		goto fail;
	}
	if (added && !json_is_array(added)) {
		rc = ember_err(err, -EINVAL, "tokenizer.json: added_tokens is not a list");
		goto fail;
	}
	t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
	if ((rc = check_model(model, err)) < 0 || (rc = check_decoder(json_object_get(root, "decoder"), err)) < 0 ||
	    (rc = load_vocab(t, model, sec ? (const char *)json : NULL, sec, added, err)) < 0 ||
	    (rc = load_merges(t, json_object_get(model, "merges"), sec ? (const char *)json : NULL,
			      sec, err)) < 0 ||
	    (rc = add_normalizer(t, json_object_get(root, "normalizer"), err)) < 0)
		goto fail;
	json_t *pre = json_object_get(root, "pre_tokenizer");
	if (pre && !json_is_null(pre) && (rc = add_pretok(t, pre, err)) < 0)
		goto fail;
	if ((rc = add_post_processor(t, json_object_get(root, "post_processor"), err)) < 0)
		goto fail;
	if (cfg) {
		t->bos = token_id_of(cfg, "bos_token", t);
		t->eos = token_id_of(cfg, "eos_token", t);
		/* Without a TemplateProcessing, transformers' Llama tokenizers build
		 * one from add_bos_token / add_eos_token. */
		if (t->n_prefix == 0 && t->n_suffix == 0) {
			if (json_is_true(json_object_get(cfg, "add_bos_token")) && t->bos >= 0)
				t->prefix[t->n_prefix++] = t->bos;
			if (json_is_true(json_object_get(cfg, "add_eos_token")) && t->eos >= 0)
				t->suffix[t->n_suffix++] = t->eos;
		}
		json_t *ct = json_object_get(cfg, "chat_template");
		if (json_is_string(ct) && !(t->chat_template = strdup(json_string_value(ct)))) {
			rc = ember_err(err, -ENOMEM, "out of memory");
			goto fail;
		}
	}
	json_decref(root);
	json_decref(cfg);
	*out = t;
	return 0;
fail:
	json_decref(root);
	json_decref(cfg);
	tok_free(t);
	return rc;
}

int tok_load_json(const uint8_t *json, size_t len, const uint8_t *cfgb, size_t cfg_len,
		  struct tokenizer **out, char *err)
{
	struct tj_sections sec;
	if (tj_find((const char *)json, len, &sec) == 0) {
		int rc = load_json(json, len, &sec, cfgb, cfg_len, out, err);
		if (rc != FAST_PATH_NO)
			return rc;
	}
	return load_json(json, len, NULL, cfgb, cfg_len, out, err);
}

int tok_load(struct mfiles *mf, struct tokenizer **out, char *err)
{
	const uint8_t *j, *c = NULL;
	size_t jl, cl = 0;
	int rc = mf_get(mf, "tokenizer.json", &j, &jl, err);
	if (rc < 0)
		return rc;
	char why[EMBER_ERR_LEN];
	rc = mf_get(mf, "tokenizer_config.json", &c, &cl, why);
	if (rc < 0 && rc != -ENOENT)
		return ember_err(err, rc, "%s", why);
	if (rc == -ENOENT)
		c = NULL;
	if ((rc = tok_load_json(j, jl, c, cl, out, why)) < 0)
		return ember_err(err, rc, "%s/%s", mf_origin(mf), why);
	return 0;
}

void tok_free(struct tokenizer *t)
{
	if (!t)
		return;
	for (int i = 0; i < t->n_ids; i++) {
		if (t->piece)
			free(t->piece[i]);
		if (t->text)
			free(t->text[i]);
	}
	for (int i = 0; i < t->n_pretok; i++)
		pcre2_code_free(t->pretok[i].re);
	free(t->piece);
	free(t->piece_len);
	free(t->text);
	free(t->text_len);
	free(t->special);
	free(t->added);
	free(t->vocab.slots);
	free(t->merges.slots);
	free(t->chat_template);
	free(t);
}

/* ---- small accessors ---------------------------------------------------- */

const char *tok_piece(const struct tokenizer *t, int32_t id, size_t *len)
{
	if (id < 0 || id >= t->n_ids || !t->piece[id])
		return NULL;
	*len = t->piece_len[id];
	return t->piece[id];
}

int tok_n_ids(const struct tokenizer *t)
{
	return t->n_ids;
}

int32_t tok_find(const struct tokenizer *t, const char *text)
{
	return strmap_get(t, text, strlen(text));
}

int32_t tok_bos(const struct tokenizer *t)
{
	return t->bos;
}

int32_t tok_eos(const struct tokenizer *t)
{
	return t->eos;
}

bool tok_is_special(const struct tokenizer *t, int32_t id)
{
	return id >= 0 && id < t->n_ids && t->special[id];
}

const char *tok_chat_template(const struct tokenizer *t)
{
	return t->chat_template;
}

/* ---- encoding ------------------------------------------------------------ */

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

/* ---- streaming decoding ------------------------------------------------- */

/* Length of the UTF-8 sequence a lead byte starts, or 0 for a byte that
 * cannot start one. */
static size_t utf8_need(uint8_t b)
{
	return b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
}

static const char REPLACEMENT[] = "\xef\xbf\xbd";

long tok_stream_push(const struct tokenizer *t, struct tok_stream *s, int32_t id, char *out,
		     size_t cap)
{
	size_t plen;
	const char *p = tok_piece(t, id, &plen);
	if (!p)
		plen = 0;
	if (cap < TOK_STREAM_ROOM(plen))
		return -1;
	size_t w = 0;
	/* Each byte is appended to the held bytes; complete, valid sequences go
	 * out, a sequence that turns out invalid goes out as U+FFFD. */
	for (size_t i = 0; i < plen; i++) {
		uint8_t b = (uint8_t)p[i];
		if (s->n_held > 0 && (b & 0xc0) != 0x80) {
			if (w + 3 > cap)
				return -1;
			memcpy(out + w, REPLACEMENT, 3);
			w += 3;
			s->n_held = 0;
		}
		s->held[s->n_held++] = b;
		size_t need = utf8_need(s->held[0]);
		if (need == 0) {
			if (w + 3 > cap)
				return -1;
			memcpy(out + w, REPLACEMENT, 3);
			w += 3;
			s->n_held = 0;
			continue;
		}
		if (s->n_held < need)
			continue;
		if (utf8_valid_prefix(s->held, need) == need) {
			if (w + need > cap)
				return -1;
			memcpy(out + w, s->held, need);
			w += need;
		} else {
			if (w + 3 > cap)
				return -1;
			memcpy(out + w, REPLACEMENT, 3);
			w += 3;
		}
		s->n_held = 0;
	}
	return (long)w;
}

long tok_stream_flush(struct tok_stream *s, char *out, size_t cap)
{
	if (s->n_held == 0)
		return 0;
	if (cap < 3)
		return -1;
	memcpy(out, REPLACEMENT, 3);
	s->n_held = 0;
	return 3;
}
