/* The tokenizer's test runner: ids identical to @lenml/tokenizers (a port of
 * Hugging Face's tokenizers, run under node) on tests/tokenizer/corpus.jsonl
 * for the Qwen, DeepSeek-V3 and Llama-3 tokenizers, decoding back to the NFC text,
 * streaming decoding that never emits invalid UTF-8, load errors, and chat
 * templates against transformers' renderings. Runs
 * from the repository root after `make models`:
 *
 *   build/test-tokenizer [--only NAME] [--models DIR] [--worker PATH]
 */
#include "../engine/chat.h"
#include "../engine/modelfiles.h"
#include "../engine/pyjson.h"
#include "../engine/reasoning.h"
#include "../engine/sha256.h"
#include "../engine/tokenizer.h"
#include "../engine/toolcall.h"
#include "../engine/tokjson.h"
#include "runner.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <utf8proc.h>

static const char *models_dir = "build/models";
static const char *worker_path = "build/ember-worker";

struct corpus {
	char **s;
	size_t *len;
	size_t n;
};

static int load_corpus(struct corpus *c)
{
	FILE *f = fopen("tests/tokenizer/corpus.jsonl", "r");
	if (!f)
		return fail("tests/tokenizer/corpus.jsonl: %s", strerror(errno));
	memset(c, 0, sizeof *c);
	char *line = NULL;
	size_t cap = 0;
	ssize_t r;
	while ((r = getline(&line, &cap, f)) > 0) {
		json_error_t je;
		json_t *j = json_loadb(line, (size_t)r, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
		if (!json_is_string(j))
			return fail("corpus line %zu: %s", c->n + 1, je.text);
		c->s = realloc(c->s, (c->n + 1) * sizeof *c->s);
		c->len = realloc(c->len, (c->n + 1) * sizeof *c->len);
		c->len[c->n] = json_string_length(j);
		c->s[c->n] = malloc(c->len[c->n] + 1);
		memcpy(c->s[c->n], json_string_value(j), c->len[c->n] + 1);
		c->n++;
		json_decref(j);
	}
	free(line);
	fclose(f);
	return 0;
}

static void free_corpus(struct corpus *c)
{
	for (size_t i = 0; i < c->n; i++)
		free(c->s[i]);
	free(c->s);
	free(c->len);
}

static int open_tok(const char *model, struct tokenizer **t)
{
	char dir[512], err[EMBER_ERR_LEN];
	snprintf(dir, sizeof dir, "%s/%s", models_dir, model);
	struct mfiles *mf;
	if (mf_open_dir(dir, &mf, err) < 0)
		return fail("%s", err);
	int rc = tok_load(mf, t, err);
	mf_close(mf);
	if (rc < 0)
		return fail("%s", err);
	return 0;
}

/* Our ids for every corpus string against the reference's, run now. */
static int check_identity(const char *model)
{
	struct corpus c;
	struct tokenizer *t;
	if (load_corpus(&c) || open_tok(model, &t))
		return 1;
	char cmd[1024];
	snprintf(cmd, sizeof cmd, "node tests/tokenizer/encode.mjs %s/%s tests/tokenizer/corpus.jsonl",
		 models_dir, model);
	FILE *p = popen(cmd, "r");
	CHECK(p, "popen(%s) failed", cmd);
	struct tok_ctx *ctx = tok_ctx_create(t);
	int32_t *ids = NULL;
	size_t n, cap = 0, lines = 0, bad = 0, tokens = 0;
	char *line = NULL;
	size_t lcap = 0;
	char err[EMBER_ERR_LEN];
	while (getline(&line, &lcap, p) > 0 && lines < c.n) {
		json_error_t je;
		json_t *want = json_loads(line, 0, &je);
		n = 0;
		int rc = tok_encode(t, ctx, c.s[lines], c.len[lines], false, &ids, &n, &cap, err);
		bool same = rc == 0 && json_is_array(want) && json_array_size(want) == n;
		for (size_t i = 0; same && i < n; i++)
			same = json_integer_value(json_array_get(want, i)) == ids[i];
		if (!same && bad++ < 5) {
			char *w = json_dumps(want, JSON_COMPACT);
			printf("    string %zu \"%.80s\": reference %.200s, ours (%zu):", lines, c.s[lines],
			       w ? w : "?", n);
			for (size_t i = 0; i < n && i < 30; i++)
				printf(" %d", ids[i]);
			printf("%s\n", rc < 0 ? err : "");
			free(w);
		}
		tokens += n;
		json_decref(want);
		lines++;
	}
	int st = pclose(p);
	free(line);
	free(ids);
	tok_ctx_destroy(ctx);
	tok_free(t);
	size_t total = c.n;
	free_corpus(&c);
	CHECK(st == 0 && lines == total, "the reference gave %zu lines for %zu strings (status %d)",
	      lines, total, st);
	printf("    %s: %zu strings, %zu tokens, %zu different\n", model, total, tokens, bad);
	return bad ? 1 : 0;
}

static int test_identity_qwen(void)
{
	return check_identity("tiny-qwen2");
}

static int test_identity_deepseek(void)
{
	return check_identity("tiny-llama");
}

static int test_identity_llama3(void)
{
	return check_identity("../tokenizers/llama3");
}

/* decode(encode(s)) is the NFC form of s, for a tokenizer whose normalizer
 * is NFC, and s itself for one without; streamed one token at a time, every
 * chunk is valid UTF-8. */
static int check_roundtrip(const char *model, bool nfc)
{
	struct corpus c;
	struct tokenizer *t;
	if (load_corpus(&c) || open_tok(model, &t))
		return 1;
	struct tok_ctx *ctx = tok_ctx_create(t);
	int32_t *ids = NULL;
	size_t cap = 0, bad = 0;
	char err[EMBER_ERR_LEN];
	size_t out_cap = 1 << 20;
	char *out = malloc(out_cap);
	for (size_t k = 0; k < c.n; k++) {
		size_t n = 0;
		if (tok_encode(t, ctx, c.s[k], c.len[k], false, &ids, &n, &cap, err) < 0) {
			bad += fail("string %zu: %s", k, err);
			continue;
		}
		struct tok_stream st = {0};
		size_t w = 0;
		for (size_t i = 0; i < n; i++) {
			long r = tok_stream_push(t, &st, ids[i], out + w, out_cap - w);
			if (r < 0 || utf8_valid_prefix((uint8_t *)out + w, (size_t)r) != (size_t)r) {
				bad += fail("string %zu: token %zu gave invalid UTF-8", k, i);
				break;
			}
			w += (size_t)r;
		}
		w += (size_t)tok_stream_flush(&st, out + w, out_cap - w);
		uint8_t *want = nfc ? utf8proc_NFC((const uint8_t *)c.s[k]) : (uint8_t *)strdup(c.s[k]);
		if (w != strlen((char *)want) || memcmp(out, want, w) != 0)
			if (bad++ < 5)
				printf("    string %zu \"%.60s\" decodes to \"%.*s\"\n", k, c.s[k],
				       (int)(w < 60 ? w : 60), out);
		free(want);
	}
	free(out);
	free(ids);
	tok_ctx_destroy(ctx);
	tok_free(t);
	free_corpus(&c);
	return bad ? 1 : 0;
}

static int test_roundtrip_qwen(void)
{
	return check_roundtrip("tiny-qwen2", true);
}

static int test_roundtrip_deepseek(void)
{
	return check_roundtrip("tiny-llama", false);
}

static int test_roundtrip_llama3(void)
{
	return check_roundtrip("../tokenizers/llama3", false);
}

/* Tokens that split a character between them: the stream holds the first
 * bytes back, and bytes that can never form a character come out as U+FFFD. */
static int test_stream_holds_partial_utf8(void)
{
	struct tokenizer *t;
	if (open_tok("tiny-qwen2", &t))
		return 1;
	/* Byte-level tokens for single bytes: the alphabet's symbols. */
	int32_t e4 = tok_find(t, "\xc3\xa4"), b8 = tok_find(t, "\xc2\xb8"), ad = tok_find(t, "\xc5\x83"); /* byte 0xAD is U+0143 in the alphabet */
	int32_t a = tok_find(t, "a");
	CHECK(e4 >= 0 && b8 >= 0 && ad >= 0 && a >= 0, "byte tokens not found");
	struct tok_stream st = {0};
	char out[64];
	/* 0xE4 0xB8 0xAD is U+4E2D. */
	CHECK(tok_stream_push(t, &st, e4, out, sizeof out) == 0, "lead byte alone was emitted");
	CHECK(tok_stream_push(t, &st, b8, out, sizeof out) == 0, "two of three bytes were emitted");
	CHECK(tok_stream_push(t, &st, ad, out, sizeof out) == 3 && memcmp(out, "\xe4\xb8\xad", 3) == 0,
	      "the completed character did not come out");
	CHECK(tok_stream_push(t, &st, e4, out, sizeof out) == 0, "lead byte alone was emitted");
	long r = tok_stream_push(t, &st, a, out, sizeof out);
	CHECK(r == 4 && memcmp(out, "\xef\xbf\xbd" "a", 4) == 0, "a broken sequence gave %ld bytes", r);
	CHECK(tok_stream_push(t, &st, b8, out, sizeof out) == 3, "a stray continuation byte");
	CHECK(tok_stream_push(t, &st, e4, out, sizeof out) == 0 && tok_stream_flush(&st, out, sizeof out) == 3,
	      "flush of a held byte");
	tok_free(t);
	return 0;
}

static int test_encode_rejects_invalid_utf8(void)
{
	struct tokenizer *t;
	if (open_tok("tiny-qwen2", &t))
		return 1;
	struct tok_ctx *ctx = tok_ctx_create(t);
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	char err[EMBER_ERR_LEN];
	static const char *bad[] = {"ab\xff", "\xc3", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\xaf"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		CHECK(tok_encode(t, ctx, bad[i], strlen(bad[i]), false, &ids, &n, &cap, err) == -EILSEQ &&
			      strstr(err, "invalid UTF-8"),
		      "invalid input %zu accepted", i);
	/* With special tokens: the template's BOS for the DeepSeek tokenizer. */
	tok_ctx_destroy(ctx);
	tok_free(t);
	if (open_tok("tiny-llama", &t))
		return 1;
	ctx = tok_ctx_create(t);
	n = 0;
	CHECK(tok_encode(t, ctx, "hi", 2, true, &ids, &n, &cap, err) == 0 && n >= 2 && ids[0] == 0,
	      "DeepSeek's BOS was not added");
	CHECK(tok_bos(t) == 0 && tok_eos(t) == 1, "bos %d eos %d", tok_bos(t), tok_eos(t));
	free(ids);
	tok_ctx_destroy(ctx);
	tok_free(t);
	return 0;
}

/* Split with a pattern that matches empty: every empty match is a
 * boundary, as in tokenizers ("abxab" by x* isolated is a, b, x, a, b). */
static int test_split_empty_matches(void)
{
	const char *json =
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"x\":2,\"ab\":3},"
		"\"merges\":[\"a b\"]},"
		"\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x*\"},"
		"\"behavior\":\"Isolated\",\"invert\":false}}";
	struct tokenizer *t;
	char err[EMBER_ERR_LEN];
	CHECK(tok_load_json((const uint8_t *)json, strlen(json), NULL, 0, &t, err) == 0, "%s", err);
	struct tok_ctx *c = tok_ctx_create(t);
	int32_t *ids = NULL;
	size_t n = 0, cap = 0;
	CHECK(tok_encode(t, c, "abxab", 5, false, &ids, &n, &cap, err) == 0, "%s", err);
	CHECK(n == 5 && ids[0] == 0 && ids[1] == 1 && ids[2] == 2 && ids[3] == 0 && ids[4] == 1,
	      "%zu ids: %d %d %d", n, n > 0 ? ids[0] : -1, n > 1 ? ids[1] : -1, n > 2 ? ids[2] : -1);
	free(ids);
	tok_ctx_destroy(c);
	tok_free(t);
	return 0;
}

static int count_vocab(void *arg, const char *text, size_t len, long id)
{
	(void)text, (void)len, (void)id;
	++*(size_t *)arg;
	return 0;
}

static int count_merge(void *arg, const char *a, size_t la, const char *b, size_t lb)
{
	(void)a, (void)la, (void)b, (void)lb;
	++*(size_t *)arg;
	return 0;
}

/* A real tokenizer.json read the fast way (tokjson.h: vocab and merges
 * straight from the bytes) and, with one more top-level key too long for
 * that reader (which sends it to jansson whole), the slow way: the same
 * pieces for every id, the same ids for every corpus string. And the fast
 * reader does take the real files. */
static int check_fast_path(const char *model)
{
	char dir[512], err[EMBER_ERR_LEN];
	snprintf(dir, sizeof dir, "%s/%s", models_dir, model);
	struct mfiles *mf;
	CHECK(mf_open_dir(dir, &mf, err) == 0, "%s", err);
	const uint8_t *j, *cfg;
	size_t jl, cl;
	CHECK(mf_get(mf, "tokenizer.json", &j, &jl, err) == 0, "%s", err);
	CHECK(mf_get(mf, "tokenizer_config.json", &cfg, &cl, err) == 0, "%s", err);
	struct tj_sections sec;
	size_t nv = 0, nm = 0;
	CHECK(tj_find((const char *)j, jl, &sec) == 0, "%s: the fast reader refuses it", model);
	CHECK(tj_vocab((const char *)j, sec.vocab_at, sec.vocab_end, count_vocab, &nv) == 0 &&
		      tj_merges((const char *)j, sec.merges_at, sec.merges_end, count_merge, &nm) == 0,
	      "%s: the fast reader stops in the vocab or the merges", model);
	CHECK(nv == sec.n_vocab && nm == sec.n_merges && nv > 100000 && nm > 100000,
	      "%s: %zu entries and %zu merges read, %zu and %zu counted", model, nv, nm, sec.n_vocab,
	      sec.n_merges);
	const char *brace = memchr(j, '{', jl);
	CHECK(brace, "no object");
	size_t pre = (size_t)(brace - (const char *)j) + 1, key = 5000;
	char *slow = malloc(jl + key + 16);
	memcpy(slow, j, pre);
	size_t n = pre;
	slow[n++] = '"';
	memset(slow + n, 'x', key);
	n += key;
	memcpy(slow + n, "\":0,", 4);
	n += 4;
	memcpy(slow + n, j + pre, jl - pre);
	n += jl - pre;
	struct tj_sections no;
	struct tokenizer *fast, *whole;
	int bad = tj_find(slow, n, &no) == 0;
	if (bad)
		printf("    the fast reader took a key of %zu bytes\n", key);
	CHECK(tok_load_json(j, jl, cfg, cl, &fast, err) == 0, "%s", err);
	CHECK(tok_load_json((const uint8_t *)slow, n, cfg, cl, &whole, err) == 0, "%s", err);
	free(slow);
	mf_close(mf);
	bad += tok_n_ids(fast) != tok_n_ids(whole) || tok_bos(fast) != tok_bos(whole) ||
	       tok_eos(fast) != tok_eos(whole);
	for (int32_t id = 0; !bad && id < tok_n_ids(fast); id++) {
		size_t la = 0, lb = 0;
		const char *a = tok_piece(fast, id, &la), *b = tok_piece(whole, id, &lb);
		bad += (a == NULL) != (b == NULL) || la != lb || (a && memcmp(a, b, la) != 0) ||
		       tok_is_special(fast, id) != tok_is_special(whole, id);
	}
	struct corpus c;
	if (!bad && load_corpus(&c) == 0) {
		struct tok_ctx *ca = tok_ctx_create(fast), *cb = tok_ctx_create(whole);
		int32_t *ia = NULL, *ib = NULL;
		size_t na, nb, capa = 0, capb = 0;
		for (size_t i = 0; i < c.n && !bad; i++) {
			na = nb = 0;
			int ra = tok_encode(fast, ca, c.s[i], c.len[i], false, &ia, &na, &capa, err);
			int rb = tok_encode(whole, cb, c.s[i], c.len[i], false, &ib, &nb, &capb, err);
			bad += ra != rb || na != nb || memcmp(ia, ib, na * sizeof *ia) != 0;
		}
		free(ia), free(ib);
		tok_ctx_destroy(ca), tok_ctx_destroy(cb);
		free_corpus(&c);
	}
	tok_free(fast);
	tok_free(whole);
	CHECK(!bad, "%s: the fast and the whole reading differ", model);
	printf("    %s: %zu entries and %zu merges read the fast way; the same as jansson's\n", model,
	       nv, nm);
	return 0;
}

static int test_fast_path_qwen(void)
{
	return check_fast_path("tiny-qwen2");
}

static int test_fast_path_deepseek(void)
{
	return check_fast_path("tiny-llama");
}

static int test_fast_path_llama3(void)
{
	return check_fast_path("../tokenizers/llama3");
}

/* What the fast reader leaves to jansson is read as jansson reads it: a
 * vocab key given twice (the last id wins), escapes and surrogate pairs,
 * merges as pairs. */
static int test_fast_path_corners(void)
{
	const char *json =
		"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"a\":3,"
		"\"\\u00e9\":4,\"\\ud83d\\ude00\":5,\"\\\"\\n\\/\":6},\"merges\":[[\"a\",\"b\"]]}}";
	struct tokenizer *t;
	char err[EMBER_ERR_LEN];
	CHECK(tok_load_json((const uint8_t *)json, strlen(json), NULL, 0, &t, err) == 0, "%s", err);
	int32_t a = tok_find(t, "a"), e = tok_find(t, "\xc3\xa9"), smile = tok_find(t, "\xf0\x9f\x98\x80"),
		q = tok_find(t, "\"\n/");
	tok_free(t);
	CHECK(a == 3, "\"a\" given twice: id %d, jansson's last is 3", a);
	CHECK(e == 4 && smile == 5 && q == 6, "escapes: %d %d %d", e, smile, q);
	/* A key whose first id is another's, given again with its own. */
	const char *again = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"x\":0,\"b\":1,\"x\":2},"
			    "\"merges\":[]}}";
	CHECK(tok_load_json((const uint8_t *)again, strlen(again), NULL, 0, &t, err) == 0, "%s", err);
	int32_t x = tok_find(t, "x"), a0 = tok_find(t, "a");
	tok_free(t);
	CHECK(x == 2 && a0 == 0, "\"x\" first with a's id, then its own: x %d, a %d", x, a0);
	const char *fast = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"\\u00e9\":0,\"\\ud83d\\ude00\":1},"
			   "\"merges\":[[\"a\",\"b\"]]}}";
	struct tj_sections sec;
	CHECK(tj_find(fast, strlen(fast), &sec) == 0 && sec.n_vocab == 2 && sec.n_merges == 1,
	      "escapes and pairs refused by the fast reader");
	const char *refused[] = {
		"{\"model\":{\"vocab\":{\"\\ud83d\":0},\"merges\":[]}}",  /* a lone surrogate */
		"{\"model\":{\"vocab\":{\"\\u0000\":0},\"merges\":[]}}",  /* NUL */
		"{\"model\":{\"vocab\":{\"\xc3\":0},\"merges\":[]}}",      /* cut UTF-8 */
		"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}} x",        /* after the end */
		"{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},\"model\":{}}", /* twice */
		"{\"model\":{\"vocab\":{\"a\":01},\"merges\":[]}}",         /* not JSON */
	};
	for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
		struct tj_sections s2;
		size_t nv = 0;
		int rc = tj_find(refused[i], strlen(refused[i]), &s2);
		if (rc == 0)
			rc = tj_vocab(refused[i], s2.vocab_at, s2.vocab_end, count_vocab, &nv);
		CHECK(rc != 0, "the fast reader took case %zu", i);
	}
	return 0;
}

static int test_load_rejects(void)
{
	static const struct {
		const char *json, *why;
	} cases[] = {
		{"[]", "no model"},
		{"{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "'Unigram' is not supported"},
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}", "empty vocabulary"},
		{"{\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{\"a\":0},\"merges\":[]}}",
		 "byte_fallback"},
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}}", "not in 0..2^24"},
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}",
		 "not in the vocabulary"},
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a\"]}}", "is not \"a b\""},
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
		 "\"normalizer\":{\"type\":\"Lowercase\"}}",
		 "'Lowercase' is not supported"},
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
		 "\"pre_tokenizer\":{\"type\":\"Metaspace\"}}",
		 "'Metaspace' is not supported"},
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
		 "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\"}}",
		 "regex"},
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
		 "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Sideways\"}}",
		 "behavior 'Sideways'"},
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
		 "\"decoder\":{\"type\":\"WordPiece\"}}",
		 "decoder 'WordPiece'"},
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
		 "\"added_tokens\":[{\"id\":5,\"content\":\"<x>\"},{\"id\":5,\"content\":\"<y>\"}]}",
		 "given twice"},
		{"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
		 "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}}]}}",
		 "'<s>' is unknown"},
	};
	char err[EMBER_ERR_LEN];
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct tokenizer *t;
		err[0] = 0;
		int rc = tok_load_json((const uint8_t *)cases[i].json, strlen(cases[i].json), NULL, 0, &t, err);
		CHECK(rc < 0 && t == NULL, "case %zu accepted", i);
		CHECK(strstr(err, cases[i].why), "case %zu: '%s' does not say '%s'", i, err, cases[i].why);
	}
	return 0;
}

/* The command-line tool tokenizes --prompt with the model's tokenizer: the
 * ids the reference gives, after DeepSeek's BOS. */
static int test_worker_prompt(void)
{
	char cmd[1024], out[4096];
	snprintf(cmd, sizeof cmd,
		 "%s --model %s/tiny-llama --prompt 'Hello, world!' --print-ids --max-tokens 3 2>&1",
		 worker_path, models_dir);
	int st = run_capture(cmd, out, sizeof out);
	CHECK(st == 0, "ember-worker failed: %s", out);
	CHECK(strstr(out, "prompt ids: 0,19923,14,2058,3\n"), "ember-worker printed: %s", out);
	snprintf(cmd, sizeof cmd, "%s --model %s/tiny-llama --prompt $(printf 'a\\377') 2>&1",
		 worker_path, models_dir);
	st = run_capture(cmd, out, sizeof out);
	CHECK(st != 0 && strstr(out, "invalid UTF-8"), "invalid UTF-8 prompt: %s", out);
	/* --chat: BOS, <｜User｜>, the text, <｜Assistant｜> */
	snprintf(cmd, sizeof cmd,
		 "%s --model %s/tiny-llama --chat 'Hello, world!' --print-ids --max-tokens 1 2>&1",
		 worker_path, models_dir);
	st = run_capture(cmd, out, sizeof out);
	CHECK(st == 0 && strstr(out, "prompt ids: 0,128803,19923,14,2058,3,128804\n"), "--chat printed: %s", out);
	snprintf(cmd, sizeof cmd, "%s --model %s/tiny-llama --chat hi --chat-template nope 2>&1",
		 worker_path, models_dir);
	st = run_capture(cmd, out, sizeof out);
	CHECK(st != 0 && strstr(out, "--chat-template nope"), "a bad template name: %s", out);
	return 0;
}

/* Every conversation of fixture tests/fixtures/chat/NAME.json of family,
 * rendered as transformers' apply_chat_template rendered it (made by
 * scripts/chat_reference.py): its tools and tool calls through pyjson.h as
 * the server hands them over. */
static int check_chat_file(const char *family, const char *name)
{
	char path[256], err[EMBER_ERR_LEN];
	snprintf(path, sizeof path, "tests/fixtures/chat/%s.json", name);
	json_error_t je;
	json_t *root = json_load_file(path, 0, &je);
	CHECK(root, "%s: %s", path, je.text);
	int f = chat_family_from_name(family);
	CHECK(f >= 0, "no family %s", family);
	const char *bos = json_string_value(json_object_get(root, "bos_token"));
	json_t *cases = json_object_get(root, "cases");
	int bad = 0;
	for (size_t i = 0; i < json_array_size(cases); i++) {
		json_t *c = json_array_get(cases, i), *msgs = json_object_get(c, "messages");
		json_t *tl = json_object_get(c, "tools");
		struct chat_msg m[16];
		struct chat_tool_call calls[16][4];
		char *py[64];
		size_t n = json_array_size(msgs), n_py = 0;
		for (size_t k = 0; k < n && k < 16; k++) {
			json_t *mk = json_array_get(msgs, k), *tc = json_object_get(mk, "tool_calls");
			m[k] = (struct chat_msg){json_string_value(json_object_get(mk, "role")),
						 json_string_value(json_object_get(mk, "content")), calls[k],
						 json_array_size(tc) < 4 ? json_array_size(tc) : 4};
			for (size_t t = 0; t < m[k].n_tool_calls; t++) {
				json_t *fn = json_object_get(json_array_get(tc, t), "function");
				const char *args = json_string_value(json_object_get(fn, "arguments"));
				calls[k][t] = (struct chat_tool_call){
					json_string_value(json_object_get(fn, "name")), args,
					py[n_py++] = py_json_of_text(args)};
			}
		}
		const char *tpy[8];
		struct sbuf tb[8];
		struct chat_tools tools = {tpy, json_array_size(tl) < 8 ? json_array_size(tl) : 8};
		for (size_t t = 0; t < tools.n; t++) {
			tb[t] = (struct sbuf){0};
			py_json_dump(&tb[t], json_array_get(tl, t));
			sbuf_put(&tb[t], "", 1);
			tpy[t] = tb[t].p;
		}
		char *out;
		const char *want = json_string_value(json_object_get(c, "rendered"));
		int rc = chat_render((enum chat_family)f, m, n, tl ? &tools : NULL,
				     json_is_true(json_object_get(c, "add_generation_prompt")),
				     json_is_true(json_object_get(c, "thinking")), bos, &out, err);
		for (size_t t = 0; t < tools.n; t++)
			sbuf_free(&tb[t]);
		for (size_t k = 0; k < n_py; k++)
			free(py[k]);
		if (rc < 0) {
			bad += fail("case %zu: %s", i, err);
			continue;
		}
		if (strcmp(out, want) != 0)
			bad += fail("case %zu: rendered\n%s\n    transformers:\n%s", i, out, want);
		free(out);
	}
	size_t n_cases = json_array_size(cases);
	json_decref(root);
	CHECK(n_cases >= 12, "only %zu conversations", n_cases);
	printf("    %s: %zu conversations\n", name, n_cases);
	return bad ? 1 : 0;
}

static int check_chat(const char *family)
{
	return check_chat_file(family, family);
}

/* The tool conversations of family: rendered as transformers did, from the
 * same template text as its plain fixture. */
static int check_chat_tools(const char *family)
{
	char a[256], b[256];
	snprintf(a, sizeof a, "tests/fixtures/chat/%s.json", family);
	snprintf(b, sizeof b, "tests/fixtures/chat/%s-tools.json", family);
	json_error_t je;
	json_t *ja = json_load_file(a, 0, &je), *jb = json_load_file(b, 0, &je);
	bool same = ja && jb &&
		    json_equal(json_object_get(ja, "template_sha256"), json_object_get(jb, "template_sha256"));
	json_decref(ja), json_decref(jb);
	CHECK(same, "%s and %s were rendered from different templates", a, b);
	snprintf(b, sizeof b, "%s-tools", family);
	return check_chat_file(family, b);
}

static int test_chat_tools_deepseek_r1(void)
{
	return check_chat_tools("deepseek-r1");
}

static int test_chat_tools_qwen25(void)
{
	return check_chat_tools("qwen2.5");
}

static int test_chat_tools_deepseek_v31(void)
{
	return check_chat_tools("deepseek-v3.1");
}

static int test_chat_deepseek_v3(void)
{
	return check_chat("deepseek-v3");
}

static int test_chat_qwen3(void)
{
	return check_chat("qwen3");
}

static int test_chat_llama3(void)
{
	return check_chat("llama3");
}

static int test_chat_deepseek_r1(void)
{
	return check_chat("deepseek-r1");
}

static int test_chat_qwen25(void)
{
	return check_chat("qwen2.5");
}

static int test_chat_deepseek_v31(void)
{
	return check_chat("deepseek-v3.1");
}

/* The template file build/templates/NAME.jinja (make models fetches it) is
 * recognised as family f, and is the text its fixture was rendered from. */
static int detect_file(const char *name, int f)
{
	char path[512], err[EMBER_ERR_LEN];
	snprintf(path, sizeof path, "%s/../templates/%s.jinja", models_dir, name);
	FILE *fp = fopen(path, "rb");
	CHECK(fp, "%s: %s", path, strerror(errno));
	static char text[1 << 16];
	size_t n = fread(text, 1, sizeof text - 1, fp);
	fclose(fp);
	text[n] = 0;
	int got = chat_detect(text, err);
	CHECK(got == f, "%s detected as %d (%s)", name, got, got < 0 ? err : chat_family_name(got));
	char hex[65], fixture[256];
	sha256_hex(text, n, hex);
	snprintf(fixture, sizeof fixture, "tests/fixtures/chat/%s.json", name);
	json_error_t je;
	json_t *root = json_load_file(fixture, 0, &je);
	CHECK(root, "%s: %s", fixture, je.text);
	const char *want = json_string_value(json_object_get(root, "template_sha256"));
	bool same = want && strcmp(want, hex) == 0;
	json_decref(root);
	CHECK(same, "%s is not the template %s was rendered from (sha256 %s)", path, fixture, hex);
	return 0;
}

/* --chat on a model directory whose tokenizer_config.json carries the
 * template build/templates/NAME.jinja (a copy of model's directory, its
 * other files linked): the worker recognises it and prompts with the ids
 * of chat_render's text. */
static int chat_cli(const char *model, const char *name, int family)
{
	char src[512], dir[] = "/tmp/ember-chat-XXXXXX", path[1024], err[EMBER_ERR_LEN];
	snprintf(src, sizeof src, "%s/%s", models_dir, model);
	CHECK(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	CHECK(realpath(src, path), "%s: %s", src, strerror(errno));
	DIR *d = opendir(path);
	CHECK(d, "%s: %s", path, strerror(errno));
	struct dirent *de;
	int linked = 0;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || strcmp(de->d_name, "tokenizer_config.json") == 0)
			continue;
		char from[2048], to[1024];
		snprintf(from, sizeof from, "%s/%s", path, de->d_name);
		snprintf(to, sizeof to, "%s/%s", dir, de->d_name);
		linked += symlink(from, to) == 0;
	}
	closedir(d);
	CHECK(linked >= 3, "linked %d files of %s", linked, path);
	snprintf(path, sizeof path, "%s/../templates/%s.jinja", models_dir, name);
	json_error_t je;
	FILE *fp = fopen(path, "rb");
	CHECK(fp, "%s: %s", path, strerror(errno));
	static char text[1 << 16];
	size_t n = fread(text, 1, sizeof text - 1, fp);
	fclose(fp);
	text[n] = 0;
	snprintf(path, sizeof path, "%s/tokenizer_config.json", src);
	json_t *cfg = json_load_file(path, 0, &je);
	CHECK(cfg, "%s: %s", path, je.text);
	json_object_set_new(cfg, "chat_template", json_string(text));
	snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
	CHECK(json_dump_file(cfg, path, 0) == 0, "writing %s", path);
	json_decref(cfg);
	/* what the worker should prompt with */
	struct mfiles *mf;
	struct tokenizer *t;
	CHECK(mf_open_dir(dir, &mf, err) == 0, "%s", err);
	CHECK(tok_load(mf, &t, err) == 0, "%s", err);
	mf_close(mf);
	CHECK(chat_detect(tok_chat_template(t), err) == family, "%s: %s", name, err);
	size_t blen = 0;
	const char *bos = tok_bos(t) >= 0 ? tok_piece(t, tok_bos(t), &blen) : "";
	char bos_text[256], *rendered;
	snprintf(bos_text, sizeof bos_text, "%.*s", (int)blen, bos ? bos : "");
	struct chat_msg m = {.role = "user", .content = "Hello, world!"};
	CHECK(chat_render((enum chat_family)family, &m, 1, NULL, true, false, bos_text, &rendered, err) == 0,
	      "%s", err);
	struct tok_ctx *ctx = tok_ctx_create(t);
	int32_t *ids = NULL;
	size_t nn = 0, cap = 0;
	int rc = tok_encode(t, ctx, rendered, strlen(rendered), false, &ids, &nn, &cap, err);
	free(rendered);
	tok_ctx_destroy(ctx);
	tok_free(t);
	CHECK(rc == 0, "%s", err);
	static char want[8192], out[65536];
	size_t w = (size_t)snprintf(want, sizeof want, "prompt ids:");
	for (size_t i = 0; i < nn && w < sizeof want - 16; i++)
		w += (size_t)snprintf(want + w, sizeof want - w, "%s%d", i ? "," : " ", ids[i]);
	snprintf(want + w, sizeof want - w, "\n");
	free(ids);
	char cmd[2048];
	snprintf(cmd, sizeof cmd, "%s --model %s --chat 'Hello, world!' --print-ids --max-tokens 1 2>&1",
		 worker_path, dir);
	int st = run_capture(cmd, out, sizeof out);
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	CHECK(system(cmd) == 0, "%s", cmd);
	CHECK(st == 0 && strstr(out, want), "%s: --chat printed %s, not %s", name, out, want);
	return 0;
}

static int test_chat_cli_templates(void)
{
	return chat_cli("tiny-llama", "deepseek-r1", CHAT_DEEPSEEK_R1) ||
	       chat_cli("tiny-llama", "deepseek-v3.1", CHAT_DEEPSEEK_V31) ||
	       chat_cli("tiny-qwen2", "qwen2.5", CHAT_QWEN25);
}

/* The models' own templates are recognised; anything else is an error that
 * names the flag; bad conversations are refused. */
static int test_chat_detect(void)
{
	if (detect_file("deepseek-r1", CHAT_DEEPSEEK_R1) || detect_file("qwen2.5", CHAT_QWEN25) ||
	    detect_file("deepseek-v3.1", CHAT_DEEPSEEK_V31))
		return 1;
	struct tokenizer *t;
	char err[EMBER_ERR_LEN];
	if (open_tok("tiny-qwen2", &t))
		return 1;
	int f = chat_detect(tok_chat_template(t), err);
	tok_free(t);
	CHECK(f == CHAT_QWEN3, "tiny-qwen2's template detected as %d", f);
	if (open_tok("tiny-llama", &t))
		return 1;
	f = chat_detect(tok_chat_template(t), err);
	tok_free(t);
	CHECK(f == CHAT_DEEPSEEK_V3, "tiny-llama's template detected as %d", f);
	if (open_tok("../tokenizers/llama3", &t))
		return 1;
	f = chat_detect(tok_chat_template(t), err);
	tok_free(t);
	CHECK(f == CHAT_LLAMA3, "Llama 3's template detected as %d", f);
	CHECK(chat_detect("{{ messages }}", err) == -ENOENT && strstr(err, "--chat-template"),
	      "an unknown template: %s", err);
	CHECK(chat_detect(NULL, err) == -ENOENT && strstr(err, "no chat template"), "no template: %s", err);
	/* R1's template prompts with <think>: not taken for V3's. llama.cpp's
	 * copy with an enable_thinking switch is not the model's: refused. */
	CHECK(chat_detect("<｜User｜>{{c}}<｜Assistant｜><think>\n", err) == -ENOENT, "R1 taken for V3");
	CHECK(chat_detect("<｜User｜>{% set content = content.split('</think>')[-1] %}"
			  "{{'<｜Assistant｜><think>\\n'}}{% if not enable_thinking %}</think>{% endif %}",
			  err) == -ENOENT,
	      "R1 with llama.cpp's enable_thinking taken");
	char *out;
	struct chat_msg tool = {.role = "tool", .content = "x"}, none = {.role = "user"};
	CHECK(chat_render(CHAT_QWEN3, &tool, 1, NULL, true, false, "", &out, err) == -EINVAL && strstr(err, "tool"),
	      "role tool: %s", err);
	CHECK(chat_render(CHAT_QWEN3, &none, 1, NULL, true, false, "", &out, err) == -EINVAL, "no content accepted");
	CHECK(chat_render(CHAT_DEEPSEEK_V3, &tool, 0, NULL, true, false, "", &out, err) == -EINVAL, "no messages accepted");
	CHECK(chat_family_from_name("qwen3") == CHAT_QWEN3 && chat_family_from_name("llama2") == -1,
	      "family names");
	return 0;
}

struct two_parts {
	char think[128], answer[128];
	size_t nt, na;
};

static void two_parts_out(void *arg, bool think, const char *p, size_t n)
{
	struct two_parts *t = arg;
	char *dst = think ? t->think : t->answer;
	size_t *len = think ? &t->nt : &t->na;
	if (*len + n < sizeof t->think) {
		memcpy(dst + *len, p, n);
		*len += n;
	}
}

/* The reasoning split on outputs a reasoning model writes, fed whole and a
 * byte at a time (the same parts either way), and which rendered prompts
 * open a reasoning block. */
static int test_reasoning_split(void)
{
	static const struct {
		const char *out, *think, *answer;
		bool closed;
	} cases[] = {
		{"Let me see.\n</think>\n\nIt is 4.", "Let me see.\n", "\n\nIt is 4.", true},
		{"<think>\nagain</think>ok", "\nagain", "ok", true},
		{"</think>at once", "", "at once", true},
		{"no end, cut by max_tokens", "no end, cut by max_tokens", "", false},
		{"a </thin and </thinking> are text</think>", "a </thin and </thinking> are text", "",
		 true},
		{"ends on <", "ends on <", "", false},
		{"<thin", "<thin", "", false},
		{"<<</think>>", "<<", ">", true},
		{"2 < 3 </think> </think> twice", "2 < 3 ", " </think> twice", true},
		{"caf\xc3\xa9</think>na\xc3\xafve", "caf\xc3\xa9", "na\xc3\xafve", true},
	};
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		const char *o = cases[c].out;
		size_t n = strlen(o);
		for (int bytewise = 0; bytewise < 2; bytewise++) {
			struct two_parts t = {.nt = 0, .na = 0};
			struct reason_split r;
			reason_init(&r);
			if (bytewise)
				for (size_t i = 0; i < n; i++)
					reason_feed(&r, o + i, 1, false, two_parts_out, &t);
			else
				reason_feed(&r, o, n, false, two_parts_out, &t);
			reason_feed(&r, "", 0, true, two_parts_out, &t);
			CHECK(t.nt == strlen(cases[c].think) && memcmp(t.think, cases[c].think, t.nt) == 0 &&
				      t.na == strlen(cases[c].answer) &&
				      memcmp(t.answer, cases[c].answer, t.na) == 0 &&
				      (r.state == REASON_ANSWER) == cases[c].closed,
			      "%s%s: reasoning '%.*s', answer '%.*s'", o, bytewise ? " (bytewise)" : "",
			      (int)t.nt, t.think, (int)t.na, t.answer);
		}
	}
	static const struct {
		const char *prompt;
		bool opens;
	} prompts[] = {
		{"<｜User｜>hi<｜Assistant｜><think>\n", true},
		{"<｜Assistant｜><think>", true},
		{"<｜Assistant｜></think>", false},
		{"<|im_start|>assistant\n", false},
		{"<think>", true},
		{"", false},
	};
	for (size_t i = 0; i < sizeof prompts / sizeof prompts[0]; i++)
		CHECK(reason_prompt_opens(prompts[i].prompt, strlen(prompts[i].prompt)) ==
			      prompts[i].opens,
		      "prompt %zu: opens %d", i, !prompts[i].opens);
	/* the R1 template's own rendering opens it; Qwen2.5's does not */
	struct chat_msg m = {.role = "user", .content = "What is 2 + 2?"};
	char *r1 = NULL, *qw = NULL, err[EMBER_ERR_LEN];
	CHECK(chat_render(CHAT_DEEPSEEK_R1, &m, 1, NULL, true, false, "", &r1, err) == 0 &&
		      chat_render(CHAT_QWEN25, &m, 1, NULL, true, false, "", &qw, err) == 0,
	      "%s", err);
	bool ok = reason_prompt_opens(r1, strlen(r1)) && !reason_prompt_opens(qw, strlen(qw));
	free(r1), free(qw);
	CHECK(ok, "R1's prompt opens a reasoning block, Qwen2.5's does not");
	return 0;
}

struct calls_seen {
	char text[512], calls[512];
	size_t nt, nc;
};

static void seen_text(void *arg, const char *p, size_t n)
{
	struct calls_seen *c = arg;
	if (c->nt + n < sizeof c->text)
		memcpy(c->text + c->nt, p, n), c->nt += n;
	c->text[c->nt] = 0;
}

static void seen_call(void *arg, int index, const char *name, const char *args)
{
	struct calls_seen *c = arg;
	int k = snprintf(c->calls + c->nc, sizeof c->calls - c->nc, "%d:%s(%s);", index, name, args);
	if (k > 0 && c->nc + (size_t)k < sizeof c->calls)
		c->nc += (size_t)k;
}

struct calls_count {
	int n, last;
};

static void count_call(void *arg, int index, const char *name, const char *args)
{
	struct calls_count *c = arg;
	(void)name, (void)args;
	c->n++;
	c->last = index;
}

/* Tool calls parsed back from answers as the models write them, whole and
 * a byte at a time: the calls, the text beside them, and what is not a
 * call well formed left as text and counted. */
static int test_tool_calls(void)
{
	static const struct {
		enum tool_syntax syn;
		const char *out, *text, *calls;
		int malformed;
	} cases[] = {
		{TOOL_QWEN, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
		 "", "0:get_weather({\"city\":\"Paris\"});", 0},
		{TOOL_QWEN, "Let me look.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n"
			    "<tool_call>\n{\"name\": \"b\", \"arguments\": {\"x\": [1, 2.5]}}\n</tool_call>\n",
		 "Let me look.\n", "0:a({});1:b({\"x\":[1,2.5]});", 0},
		{TOOL_QWEN, "I think <tool_call> is a tag, not a call", "I think <tool_call> is a tag, not a call", "", 1},
		{TOOL_QWEN, "<tool_call>\n{\"name\": \"a\", \"arguments\": 3}\n</tool_call>",
		 "<tool_call>\n{\"name\": \"a\", \"arguments\": 3}\n</tool_call>", "", 1},
		{TOOL_QWEN, "a <tool_ca and <tool_callx> stay", "a <tool_ca and <tool_callx> stay", "", 0},
		{TOOL_DEEPSEEK, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Zürich\"}"
				"<｜tool▁call▁end｜><｜tool▁call▁begin｜>now<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
		 "", "0:get_weather({\"city\": \"Zürich\"});1:now({});", 0},
		{TOOL_DEEPSEEK, "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
				"```json\n{\"city\": \"Rome\"}\n```<｜tool▁call▁end｜>",
		 "Checking.", "0:get_weather({\"city\": \"Rome\"});", 0},
		{TOOL_DEEPSEEK, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{\"a\": ",
		 "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{\"a\": ", "", 1},
		{TOOL_DEEPSEEK, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>not json<｜tool▁call▁end｜>"
				"<｜tool▁calls▁end｜> done",
		 "<｜tool▁call▁begin｜>f<｜tool▁sep｜>not json<｜tool▁call▁end｜> done", "", 1},
		{TOOL_DEEPSEEK, "no calls at all <｜tool", "no calls at all <｜tool", "", 0},
	};
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		const char *o = cases[c].out;
		size_t n = strlen(o);
		for (int bytewise = 0; bytewise < 2; bytewise++) {
			struct calls_seen s = {.nt = 0, .nc = 0};
			struct tool_out out = {seen_text, seen_call, &s};
			struct tool_split t;
			tool_split_init(&t, cases[c].syn);
			if (bytewise)
				for (size_t i = 0; i < n; i++)
					tool_feed(&t, o + i, 1, false, &out);
			else
				tool_feed(&t, o, n, false, &out);
			tool_feed(&t, "", 0, true, &out);
			s.text[s.nt] = 0, s.calls[s.nc] = 0;
			int bad = t.malformed;
			tool_split_free(&t);
			CHECK(strcmp(s.text, cases[c].text) == 0 && strcmp(s.calls, cases[c].calls) == 0 &&
				      bad == cases[c].malformed,
			      "case %zu%s: text '%s', calls '%s', %d malformed", c,
			      bytewise ? " (bytewise)" : "", s.text, s.calls, bad);
		}
	}
	/* many calls in one feed (a whole answer): each one out, in a loop */
	struct sbuf many = {0};
	for (int i = 0; i < 20000; i++)
		sbuf_puts(&many, "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>");
	struct calls_count cc = {0};
	struct tool_out out = {NULL, count_call, &cc};
	struct tool_split t;
	tool_split_init(&t, TOOL_QWEN);
	tool_feed(&t, many.p, many.len, true, &out);
	tool_split_free(&t);
	sbuf_free(&many);
	CHECK(cc.n == 20000 && cc.last == 19999, "%d of 20000 calls, the last %d", cc.n, cc.last);
	return 0;
}

static const struct test tests[] = {
	{"identity_qwen", test_identity_qwen},
	{"identity_deepseek", test_identity_deepseek},
	{"identity_llama3", test_identity_llama3},
	{"roundtrip_qwen", test_roundtrip_qwen},
	{"roundtrip_deepseek", test_roundtrip_deepseek},
	{"roundtrip_llama3", test_roundtrip_llama3},
	{"stream_holds_partial_utf8", test_stream_holds_partial_utf8},
	{"encode_rejects_invalid_utf8", test_encode_rejects_invalid_utf8},
	{"load_rejects", test_load_rejects},
	{"fast_path_qwen", test_fast_path_qwen},
	{"fast_path_deepseek", test_fast_path_deepseek},
	{"fast_path_llama3", test_fast_path_llama3},
	{"fast_path_corners", test_fast_path_corners},
	{"split_empty_matches", test_split_empty_matches},
	{"worker_prompt", test_worker_prompt},
	{"chat_deepseek_v3", test_chat_deepseek_v3},
	{"chat_qwen3", test_chat_qwen3},
	{"chat_llama3", test_chat_llama3},
	{"chat_deepseek_r1", test_chat_deepseek_r1},
	{"chat_qwen25", test_chat_qwen25},
	{"chat_deepseek_v31", test_chat_deepseek_v31},
	{"chat_tools_deepseek_r1", test_chat_tools_deepseek_r1},
	{"chat_tools_qwen25", test_chat_tools_qwen25},
	{"chat_tools_deepseek_v31", test_chat_tools_deepseek_v31},
	{"chat_detect", test_chat_detect},
	{"chat_cli_templates", test_chat_cli_templates},
	{"reasoning_split", test_reasoning_split},
	{"tool_calls", test_tool_calls},
};

int main(int argc, char **argv)
{
	const char *only;
	const struct runner_opt opts[] = {{"--models", &models_dir}, {"--worker", &worker_path}};
	if (runner_args(argc, argv, "test-tokenizer", opts, 2, &only) < 0)
		return 2;
	printf("test-tokenizer: no random inputs (the corpus is fixed)\n");
	return run_tests(tests, sizeof tests / sizeof tests[0], only, NULL);
}
