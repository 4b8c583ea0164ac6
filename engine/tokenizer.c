/* Loading a byte-level BPE tokenizer (tokenizer.h) from tokenizer.json and
 * tokenizer_config.json: the vocabulary and merges (from the file's bytes
 * when they are plain, else through jansson), added tokens, normalizers,
 * pre-tokenizers and the post-processor; and the loaded tokenizer's
 * accessors. Encoding is tokencode.c's, streaming decoding tokstream.c's. */
#include "tokint.h"
#include "tokjson.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <utf8proc.h>

static bool strmap_init(struct strmap *m, size_t n)
{
	size_t cap = 16;
	while (cap < 2 * n)
		cap <<= 1;
	m->slots = calloc(cap, sizeof *m->slots);
	m->mask = cap - 1;
	return m->slots != NULL;
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
