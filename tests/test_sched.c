/* The scheduler's test runner, on the tiny models: greedy decoding through
 * the scheduler gives transformers' tokens; a sampled sequence gives the
 * same tokens and log-probabilities alone or among 15 others; preemption
 * and recomputation change nothing; cancelling returns every block.
 *   build/test-sched [--only NAME] [--models DIR] */
#include "../engine/generate.h"
#include "../engine/model.h"
#include "../engine/sched.h"
#include "../engine/device.h"
#include "runner.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>

static const char *models_dir = "build/models";
/* --device cuda: the same tests on the CUDA backend (make test-gpu). */
static const char *device_arg = "cpu";

#define MAX_OUT 512

struct collected {
	char text[8192];
	size_t n_text;
	int32_t tokens[MAX_OUT];
	float logprobs[MAX_OUT];
	float top[MAX_OUT][3];
	int n;
	enum finish_reason why;
	bool done;
};

static void add_text(struct collected *c, const char *text, size_t len)
{
	if (text && c->n_text + len < sizeof c->text) {
		memcpy(c->text + c->n_text, text, len);
		c->n_text += len;
		c->text[c->n_text] = 0;
	}
}

static void on_token(void *arg, const struct sampler_result *r, const char *text, size_t len)
{
	struct collected *c = arg;
	add_text(c, text, len);
	if (c->n < MAX_OUT) {
		c->tokens[c->n] = r->token;
		c->logprobs[c->n] = r->logprob;
		for (int i = 0; i < 3; i++)
			c->top[c->n][i] = i < r->n_top ? r->top_logprob[i] : 0;
		c->n++;
	}
}

static void on_finish(void *arg, enum finish_reason why, const char *text, size_t len)
{
	struct collected *c = arg;
	add_text(c, text, len);
	c->why = why;
	c->done = true;
}

struct rig {
	struct model *m;
	struct backend *b;
	struct sched *s;
	struct tokenizer *tok;
};

static int rig_open_tok(struct rig *r, const char *model, int seqs, int blocks, int batch,
			bool with_tok);

static int rig_open(struct rig *r, const char *model, int seqs, int blocks, int batch)
{
	return rig_open_tok(r, model, seqs, blocks, batch, false);
}

static int rig_open_tok(struct rig *r, const char *model, int seqs, int blocks, int batch,
			bool with_tok)
{
	char dir[512], err[EMBER_ERR_LEN];
	snprintf(dir, sizeof dir, "%s/%s", models_dir, model);
	memset(r, 0, sizeof *r);
	if (model_open_dir(dir, &r->m, err) < 0)
		return fail("%s", err);
	const struct device *dev;
	if (device_parse(device_arg, &dev, err) < 0)
		return fail("%s", err);
	struct device_opts o = {.threads = 2, .max_tokens = 512, .max_seqs = seqs,
				.max_ctx = 512, .kv_blocks = blocks};
	if (device_backend_create(dev, r->m, &o, &r->b, err) < 0)
		return fail("%s", err);
	if (with_tok && tok_load(r->m->files, &r->tok, err) < 0)
		return fail("%s", err);
	struct sched_opts so = {.max_batch_tokens = batch, .tok = r->tok};
	if (sched_create(r->b, &so, &r->s, err) < 0)
		return fail("%s", err);
	return 0;
}

static void rig_close(struct rig *r)
{
	sched_destroy(r->s);
	tok_free(r->tok);
	be_destroy(r->b);
	model_close(r->m);
}

static int run_all(struct rig *r)
{
	char err[EMBER_ERR_LEN];
	int left, steps = 0;
	while ((left = sched_step(r->s, err)) > 0)
		if (++steps > 100000)
			return fail("no end after %d steps", steps);
	if (left < 0)
		return fail("step: %s", err);
	return 0;
}

static struct sched_request request(const int32_t *prompt, int n, int max_tokens, float temp,
				    uint64_t seed, struct collected *c)
{
	struct sched_request q = {.prompt = prompt, .n_prompt = n, .max_tokens = max_tokens,
				  .on_token = on_token, .on_finish = on_finish, .arg = c};
	sampler_params_default(&q.sampling);
	q.sampling.temperature = temp;
	q.sampling.seed = seed;
	q.sampling.top_logprobs = 3;
	memset(c, 0, sizeof *c);
	return q;
}

static json_t *reference(const char *model)
{
	char path[512];
	snprintf(path, sizeof path, "tests/fixtures/%s/reference.json", model);
	return json_load_file(path, 0, NULL);
}

static int32_t *ids_of(json_t *a, int *n)
{
	*n = (int)json_array_size(a);
	int32_t *ids = malloc((size_t)*n * sizeof *ids);
	for (int i = 0; i < *n; i++)
		ids[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
	return ids;
}

/* All reference prompts at once, prefilled in chunks of 48 tokens beside
 * each other's decoding: every greedy continuation is transformers'. On
 * a GPU, whose BF16 rounding may break a near tie the other way (test-engine
 * checks the model against transformers with that tolerance), each is
 * instead the same sequence's greedy continuation run alone. */
static int check_greedy(const char *model)
{
	json_t *ref = reference(model);
	CHECK(ref, "no reference for %s", model);
	json_t *prompts = json_object_get(ref, "prompts");
	struct rig r;
	if (rig_open(&r, model, 8, 256, 48))
		return 1;
	struct collected c[8];
	int32_t *ids[8];
	char err[EMBER_ERR_LEN];
	size_t np = json_array_size(prompts);
	for (size_t i = 0; i < np; i++) {
		int n;
		ids[i] = ids_of(json_object_get(json_array_get(prompts, i), "ids"), &n);
		struct sched_request q = request(ids[i], n, 48, 0, 0, &c[i]);
		CHECK(sched_submit(r.s, &q, NULL, err) == 0, "%s", err);
	}
	if (run_all(&r))
		return 1;
	int bad = 0;
	const struct device *dev = &cpu_device;
	struct backend *alone = NULL;
	if (device_parse(device_arg, &dev, err) == 0)
		dev = device_resolve(dev);
	if (dev != &cpu_device) {
		struct device_opts o = {.max_tokens = 512, .max_ctx = 512};
		CHECK(device_backend_create(dev, r.m, &o, &alone, err) == 0, "%s", err);
	}
	float *l = malloc((size_t)r.m->cfg.vocab * sizeof *l);
	for (size_t i = 0; i < np; i++) {
		int n;
		int32_t *want = ids_of(json_object_get(json_array_get(prompts, i), "greedy"), &n);
		if (alone) {
			int np_;
			int32_t *p = ids_of(json_object_get(json_array_get(prompts, i), "ids"), &np_);
			if (gen_greedy(alone, 0, p, np_, n, want, l, NULL, NULL, err) != n)
				bad += fail("alone: %s", err);
			free(p);
		}
		if (c[i].n != n || c[i].why != FINISH_LENGTH || memcmp(c[i].tokens, want, (size_t)n * 4))
			bad += fail("prompt %zu: %d tokens (%s), not the reference's", i, c[i].n,
				    finish_reason_name(c[i].why));
		free(want);
		free(ids[i]);
	}
	free(l);
	be_destroy(alone);
	CHECK(sched_free_blocks(r.s) == sched_total_blocks(r.s), "blocks left in use");
	rig_close(&r);
	json_decref(ref);
	return bad ? 1 : 0;
}

static int test_greedy_qwen2(void)
{
	return check_greedy("tiny-qwen2");
}

static int test_greedy_llama(void)
{
	return check_greedy("tiny-llama");
}

static void random_prompt(int32_t *p, int n, uint64_t *x)
{
	for (int i = 0; i < n; i++) {
		*x = *x * 6364136223846793005ull + 1442695040888963407ull;
		p[i] = (int32_t)((*x >> 33) % 100000);
	}
}

/* One sampled sequence (temperature 0.8, a fixed seed), alone and then
 * among 15 others of other lengths that join and leave at other steps:
 * bit-identical tokens and log-probabilities. */
static int test_batch_invariance(void)
{
	char err[EMBER_ERR_LEN];
	int32_t target[40];
	uint64_t x = 99;
	random_prompt(target, 40, &x);
	struct rig r;
	if (rig_open(&r, "tiny-llama", 16, 512, 64))
		return 1;
	struct collected alone, with;
	struct sched_request q = request(target, 40, 60, 0.8f, 4242, &alone);
	CHECK(sched_submit(r.s, &q, NULL, err) == 0, "%s", err);
	if (run_all(&r))
		return 1;
	static struct collected others[15];
	int32_t prompts[15][200];
	/* Seven start before the target, eight join while it runs. */
	for (int i = 0; i < 7; i++) {
		int n = 5 + 27 * i;
		random_prompt(prompts[i], n, &x);
		struct sched_request o = request(prompts[i], n, 10 + 13 * i, 0.7f + 0.05f * i, i, &others[i]);
		CHECK(sched_submit(r.s, &o, NULL, err) == 0, "%s", err);
	}
	sched_step(r.s, err);
	q = request(target, 40, 60, 0.8f, 4242, &with);
	CHECK(sched_submit(r.s, &q, NULL, err) == 0, "%s", err);
	for (int i = 7; i < 15; i++) {
		sched_step(r.s, err);
		sched_step(r.s, err);
		int n = 3 + 23 * (i - 7);
		random_prompt(prompts[i], n, &x);
		struct sched_request o = request(prompts[i], n, 5 + 9 * (i - 7), 1.0f, 100 + i, &others[i]);
		CHECK(sched_submit(r.s, &o, NULL, err) == 0, "%s", err);
	}
	if (run_all(&r))
		return 1;
	CHECK(alone.n == 60 && with.n == 60, "%d and %d tokens", alone.n, with.n);
	CHECK(memcmp(alone.tokens, with.tokens, sizeof alone.tokens) == 0, "tokens differ in a batch");
	CHECK(memcmp(alone.logprobs, with.logprobs, sizeof alone.logprobs) == 0 &&
		      memcmp(alone.top, with.top, sizeof alone.top) == 0,
	      "log-probabilities differ in a batch");
	for (int i = 0; i < 15; i++)
		CHECK(others[i].done && others[i].why == FINISH_LENGTH, "sequence %d did not finish", i);
	CHECK(sched_free_blocks(r.s) == sched_total_blocks(r.s), "blocks left in use");
	rig_close(&r);
	return 0;
}

/* A pool too small for four sequences at once: preemption, recomputation,
 * and the same tokens as with a large pool. */
static int test_preemption(void)
{
	char err[EMBER_ERR_LEN];
	int32_t p[4][70];
	uint64_t x = 7;
	struct collected big[4], small[4];
	for (int pass = 0; pass < 2; pass++) {
		struct rig r;
		if (rig_open(&r, "tiny-qwen2", 4, pass == 0 ? 64 : 12, 512))
			return 1;
		for (int i = 0; i < 4; i++) {
			if (pass == 0)
				random_prompt(p[i], 70, &x);
			struct collected *c = pass == 0 ? &big[i] : &small[i];
			struct sched_request q = request(p[i], 70, 50, 0.9f, 77 + i, c);
			CHECK(sched_submit(r.s, &q, NULL, err) == 0, "%s", err);
		}
		if (run_all(&r))
			return 1;
		if (pass == 0)
			CHECK(sched_preemptions(r.s) == 0, "preempted with a large pool");
		else
			CHECK(sched_preemptions(r.s) > 0, "no preemption with 12 blocks");
		printf("    pool of %d blocks: %llu preemptions\n", sched_total_blocks(r.s),
		       (unsigned long long)sched_preemptions(r.s));
		CHECK(sched_free_blocks(r.s) == sched_total_blocks(r.s), "blocks left in use");
		rig_close(&r);
	}
	for (int i = 0; i < 4; i++)
		CHECK(big[i].n == 50 && small[i].n == 50 &&
			      !memcmp(big[i].tokens, small[i].tokens, sizeof big[i].tokens) &&
			      !memcmp(big[i].logprobs, small[i].logprobs, sizeof big[i].logprobs),
		      "sequence %d differs after preemption", i);
	return 0;
}

/* A pool that holds one prompt at a time: prompts take turns instead of
 * each holding half of it for ever; a request the pool can never hold is
 * refused. */
static int test_small_pool(void)
{
	char err[EMBER_ERR_LEN];
	struct rig r;
	if (rig_open(&r, "tiny-qwen2", 4, 4, 64))
		return 1;
	int32_t p[2][60];
	uint64_t x = 11;
	struct collected c[2];
	for (int i = 0; i < 2; i++) {
		random_prompt(p[i], 60, &x);
		struct sched_request q = request(p[i], 60, 4, 0, 0, &c[i]);
		CHECK(sched_submit(r.s, &q, NULL, err) == 0, "%s", err);
	}
	int steps = 0;
	while (sched_step(r.s, err) > 0)
		CHECK(++steps < 1000, "no progress after %d steps", steps);
	CHECK(c[0].why == FINISH_LENGTH && c[1].why == FINISH_LENGTH && c[0].n == 4 && c[1].n == 4,
	      "%s, %s", finish_reason_name(c[0].why), finish_reason_name(c[1].why));
	struct sched_request q = request(p[0], 60, 5, 0, 0, &c[0]);
	CHECK(sched_submit(r.s, &q, NULL, err) == -EINVAL && strstr(err, "blocks"),
	      "a request larger than the pool: %s", err);
	CHECK(sched_free_blocks(r.s) == 4, "blocks left in use");
	rig_close(&r);
	return 0;
}

/* Cancelling in the middle of a prefill and of a decode returns all blocks. */
static int test_cancel(void)
{
	char err[EMBER_ERR_LEN];
	struct rig r;
	if (rig_open(&r, "tiny-llama", 4, 64, 32))
		return 1;
	int32_t p[300];
	uint64_t x = 3;
	random_prompt(p, 300, &x);
	struct collected a, b;
	uint64_t ida, idb;
	struct sched_request q = request(p, 300, 100, 0.5f, 1, &a);
	CHECK(sched_submit(r.s, &q, &ida, err) == 0, "%s", err);
	q = request(p, 20, 100, 0.5f, 2, &b);
	CHECK(sched_submit(r.s, &q, &idb, err) == 0, "%s", err);
	for (int i = 0; i < 4; i++)
		sched_step(r.s, err);
	CHECK(a.n == 0 && sched_free_blocks(r.s) < sched_total_blocks(r.s), "not mid-prefill");
	sched_cancel(r.s, ida);
	sched_step(r.s, err);
	CHECK(a.done && a.why == FINISH_CANCELLED, "the prefilling sequence was not cancelled");
	for (int i = 0; i < 5; i++)
		sched_step(r.s, err);
	CHECK(b.n > 0 && !b.done, "not mid-decode (%d tokens)", b.n);
	sched_cancel(r.s, idb);
	sched_cancel(r.s, 12345); /* unknown: ignored */
	CHECK(sched_step(r.s, err) == 0, "sequences left");
	CHECK(b.done && b.why == FINISH_CANCELLED, "the decoding sequence was not cancelled");
	CHECK(sched_free_blocks(r.s) == sched_total_blocks(r.s), "%d of %d blocks free",
	      sched_free_blocks(r.s), sched_total_blocks(r.s));
	/* A deadline already past, and a stop token. */
	struct collected d, e;
	q = request(p, 10, 100, 0, 0, &d);
	q.deadline = 1;
	CHECK(sched_submit(r.s, &q, NULL, err) == 0, "%s", err);
	struct collected g;
	q = request(p, 10, 8, 0, 0, &g);
	CHECK(sched_submit(r.s, &q, NULL, err) == 0, "%s", err);
	if (run_all(&r))
		return 1;
	CHECK(d.done && d.why == FINISH_DEADLINE, "deadline: %s", finish_reason_name(d.why));
	q = request(p, 10, 8, 0, 0, &e);
	q.stop_ids[0] = g.tokens[3];
	q.n_stop_ids = 1;
	CHECK(sched_submit(r.s, &q, NULL, err) == 0, "%s", err);
	if (run_all(&r))
		return 1;
	CHECK(e.why == FINISH_STOP && e.n == 3 && !memcmp(e.tokens, g.tokens, 3 * sizeof(int32_t)),
	      "stop token: %s after %d tokens", finish_reason_name(e.why), e.n);
	/* Refused at submission. */
	q = request(p, 300, 10, 0, 0, &e);
	q.n_prompt = 600;
	CHECK(sched_submit(r.s, &q, NULL, err) == -EINVAL && strstr(err, "does not fit"), "long prompt");
	int32_t bad = 1 << 24;
	q = request(&bad, 1, 10, 0, 0, &e);
	CHECK(sched_submit(r.s, &q, NULL, err) == -EINVAL && strstr(err, "vocabulary"), "bad token");
	q = request(p, 5, 10, -1, 0, &e);
	CHECK(sched_submit(r.s, &q, NULL, err) == -EINVAL && strstr(err, "temperature"), "bad sampling");
	rig_close(&r);
	return 0;
}

/* Stop strings on the decoded text, across token boundaries: the text ends
 * just before the first one, which is not emitted. */
/* The tests' seam: forced tokens come out in order whatever the model
 * says, for every sequence, then the end; stop strings and max_tokens
 * still apply; a token outside the vocabulary is refused. */
static int test_forced_output(void)
{
	char err[EMBER_ERR_LEN];
	struct rig r;
	if (rig_open_tok(&r, "tiny-llama", 4, 64, 64, true))
		return 1;
	sched_destroy(r.s);
	static const int32_t forced[] = {100, 200, 300, 400, 500, 600};
	struct sched_opts so = {.max_batch_tokens = 64, .tok = r.tok, .forced = forced, .n_forced = 6};
	CHECK(sched_create(r.b, &so, &r.s, err) == 0, "%s", err);
	int32_t p[8];
	uint64_t x = 9;
	random_prompt(p, 8, &x);
	struct collected a, b, c;
	struct sched_request qa = request(p, 8, 30, 1.0f, 1, &a), qb = request(p + 2, 6, 30, 0, 0, &b),
			     qc = request(p, 8, 4, 1.0f, 2, &c);
	CHECK(sched_submit(r.s, &qa, NULL, err) == 0 && sched_submit(r.s, &qb, NULL, err) == 0 &&
		      sched_submit(r.s, &qc, NULL, err) == 0,
	      "%s", err);
	if (run_all(&r))
		return 1;
	CHECK(a.why == FINISH_STOP && b.why == FINISH_STOP && a.n == 6 && b.n == 6 &&
		      !memcmp(a.tokens, forced, sizeof forced) && !memcmp(b.tokens, forced, sizeof forced),
	      "forced: %s after %d, %s after %d", finish_reason_name(a.why), a.n,
	      finish_reason_name(b.why), b.n);
	CHECK(c.why == FINISH_LENGTH && c.n == 4 && !memcmp(c.tokens, forced, 4 * sizeof *forced),
	      "max_tokens 4: %s after %d", finish_reason_name(c.why), c.n);
	sched_destroy(r.s);
	static const int32_t bad[] = {1, -1};
	so.forced = bad, so.n_forced = 2;
	CHECK(sched_create(r.b, &so, &r.s, err) == -EINVAL && strstr(err, "vocabulary"),
	      "a forced token outside the vocabulary: %s", err);
	so.forced = NULL, so.n_forced = 0;
	CHECK(sched_create(r.b, &so, &r.s, err) == 0, "%s", err);
	rig_close(&r);
	return 0;
}

static int test_stop_strings(void)
{
	char err[EMBER_ERR_LEN];
	struct rig r;
	if (rig_open_tok(&r, "tiny-llama", 4, 64, 64, true))
		return 1;
	int32_t p[12];
	uint64_t x = 5;
	random_prompt(p, 12, &x);
	struct collected full, cut;
	struct sched_request q = request(p, 12, 30, 0, 0, &full);
	CHECK(sched_submit(r.s, &q, NULL, err) == 0, "%s", err);
	if (run_all(&r))
		return 1;
	CHECK(full.why == FINISH_LENGTH && full.n_text > 24, "%zu bytes of text", full.n_text);
	/* A stop string from the middle of the text, on character boundaries. */
	size_t a = full.n_text / 3, z;
	while (a > 0 && ((uint8_t)full.text[a] & 0xc0) == 0x80)
		a--;
	z = a + 8;
	while (z < full.n_text && ((uint8_t)full.text[z] & 0xc0) == 0x80)
		z++;
	char stop[64];
	snprintf(stop, sizeof stop, "%.*s", (int)(z - a), full.text + a);
	size_t first = (size_t)(strstr(full.text, stop) - full.text);
	q = request(p, 12, 30, 0, 0, &cut);
	q.stop[0] = stop;
	q.n_stop = 1;
	CHECK(sched_submit(r.s, &q, NULL, err) == 0, "%s", err);
	if (run_all(&r))
		return 1;
	CHECK(cut.why == FINISH_STOP && cut.n_text == first && !memcmp(cut.text, full.text, first),
	      "with stop '%s': %s, %zu bytes (want %zu)", stop, finish_reason_name(cut.why), cut.n_text,
	      first);
	CHECK(cut.n < full.n, "no fewer tokens");
	/* Without a tokenizer, stop strings are refused. */
	struct rig plain;
	if (rig_open(&plain, "tiny-llama", 2, 16, 64))
		return 1;
	CHECK(sched_submit(plain.s, &q, NULL, err) == -EINVAL && strstr(err, "tokenizer"),
	      "stop strings without a tokenizer: %s", err);
	rig_close(&plain);
	rig_close(&r);
	return 0;
}

static const struct test tests[] = {
	{"greedy_qwen2", test_greedy_qwen2},
	{"greedy_llama", test_greedy_llama},
	{"batch_invariance", test_batch_invariance},
	{"preemption", test_preemption},
	{"small_pool", test_small_pool},
	{"cancel", test_cancel},
	{"stop_strings", test_stop_strings},
	{"forced_output", test_forced_output},
};

int main(int argc, char **argv)
{
	const char *only;
	const struct runner_opt opts[] = {{"--models", &models_dir}, {"--device", &device_arg}};
	if (runner_args(argc, argv, "test-sched", opts, 2, &only) < 0)
		return 2;
	printf("test-sched: fixed seeds in each test\n");
	return run_tests(tests, sizeof tests / sizeof tests[0], only, NULL);
}
