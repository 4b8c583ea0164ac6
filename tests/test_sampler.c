/* The sampler's test runner: each filter keeps what it should, a seed
 * reproduces, penalties and log-probabilities come out as defined, and stop
 * strings are caught across token boundaries.
 *   build/test-sampler [--only NAME] */
#include "../engine/sampler.h"
#include "../engine/stop.h"
#include "runner.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#define V 8

/* logits whose softmax is probs (natural log of each). */
static void from_probs(float *logits, const double *probs)
{
	for (int i = 0; i < V; i++)
		logits[i] = probs[i] > 0 ? (float)log(probs[i]) : -INFINITY;
}

static const double P[V] = {0.05, 0.5, 0.15, 0.3, 0, 0, 0, 0};

/* Draws n tokens with params p from the distribution P, counting them. */
static int draw(const struct sampler_params *p, int n, int counts[V])
{
	struct sampler_scratch *sc = sampler_scratch_create(V);
	struct sampler_seq *s = sampler_seq_create(p, V, (size_t)n + 1);
	if (!sc || !s)
		return fail("out of memory");
	memset(counts, 0, V * sizeof *counts);
	for (int i = 0; i < n; i++) {
		float l[V];
		from_probs(l, P);
		struct sampler_result r;
		sampler_sample(s, sc, l, &r);
		if (r.token < 0 || r.token >= V)
			return fail("token %d out of range", r.token);
		counts[r.token]++;
	}
	sampler_seq_destroy(s);
	sampler_scratch_destroy(sc);
	return 0;
}

static int test_rng(void)
{
	struct sampler_rng a, b, c;
	sampler_rng_seed(&a, 42);
	sampler_rng_seed(&b, 42);
	sampler_rng_seed(&c, 43);
	int same = 0;
	double sum = 0;
	for (int i = 0; i < 10000; i++) {
		double x = sampler_rng_uniform(&a), y = sampler_rng_uniform(&b), z = sampler_rng_uniform(&c);
		CHECK(x == y, "the same seed gave different draws at %d", i);
		CHECK(x >= 0 && x < 1, "draw %g outside [0, 1)", x);
		same += x == z;
		sum += x;
	}
	CHECK(same < 5, "seeds 42 and 43 agree %d times in 10000", same);
	CHECK(fabs(sum / 10000 - 0.5) < 0.02, "mean of draws %g", sum / 10000);
	return 0;
}

static int test_greedy(void)
{
	struct sampler_params p;
	sampler_params_default(&p);
	p.temperature = 0;
	int c[V];
	if (draw(&p, 50, c))
		return 1;
	CHECK(c[1] == 50, "greedy chose other than the most likely token");
	/* Ties go to the lower id; NaN and -inf are never chosen. */
	float l[V] = {NAN, 1, 3, 3, -INFINITY, 0, 0, 0};
	struct sampler_scratch *sc = sampler_scratch_create(V);
	struct sampler_seq *s = sampler_seq_create(&p, V, 4);
	struct sampler_result r;
	sampler_sample(s, sc, l, &r);
	CHECK(r.token == 2, "tie broken to %d", r.token);
	sampler_seq_destroy(s);
	p.temperature = 1;
	p.top_k = 1;
	s = sampler_seq_create(&p, V, 4);
	float l2[V] = {NAN, 1, 3, 3, -INFINITY, 0, 0, 0};
	sampler_sample(s, sc, l2, &r);
	CHECK(r.token == 2, "top_k 1 is not greedy: %d", r.token);
	sampler_seq_destroy(s);
	sampler_scratch_destroy(sc);
	return 0;
}

/* Frequencies within 4 standard deviations of the expected ones. */
static int check_freq(const int c[V], int n, const double want[V])
{
	for (int i = 0; i < V; i++) {
		double f = (double)c[i] / n, sd = sqrt(want[i] * (1 - want[i]) / n);
		if (want[i] == 0 && c[i] != 0)
			return fail("token %d drawn %d times, should never be", i, c[i]);
		if (fabs(f - want[i]) > 4 * sd + 1e-9)
			return fail("token %d: frequency %.4f, expected %.4f", i, f, want[i]);
	}
	return 0;
}

static int test_temperature_one(void)
{
	struct sampler_params p;
	sampler_params_default(&p);
	p.seed = 7;
	int c[V], n = 20000;
	if (draw(&p, n, c))
		return 1;
	return check_freq(c, n, P);
}

/* top_p keeps the smallest set, best first, whose mass reaches p. */
static int test_top_p(void)
{
	struct sampler_params p;
	sampler_params_default(&p);
	p.seed = 8;
	p.top_p = 0.79f; /* 0.5 + 0.3 reach it */
	int c[V], n = 20000;
	if (draw(&p, n, c))
		return 1;
	const double want[V] = {0, 0.5 / 0.8, 0, 0.3 / 0.8};
	if (check_freq(c, n, want))
		return 1;
	p.top_p = 0.81f; /* 0.15 more is needed to reach 0.81 */
	if (draw(&p, n, c))
		return 1;
	const double want2[V] = {0, 0.5 / 0.95, 0.15 / 0.95, 0.3 / 0.95};
	return check_freq(c, n, want2);
}

/* top_k past the small-k path (a heap of the whole vocabulary): with a
 * vocabulary of 100 and k = 40, only the 40 best are ever drawn. */
static int test_top_k_large(void)
{
	enum { W = 100 };
	struct sampler_params p;
	sampler_params_default(&p);
	p.top_k = 40;
	p.temperature = 5; /* flat enough that the 40th comes up */
	p.seed = 3;
	struct sampler_scratch *sc = sampler_scratch_create(W);
	struct sampler_seq *s = sampler_seq_create(&p, W, 5001);
	int seen[W] = {0};
	for (int i = 0; i < 5000; i++) {
		float l[W];
		for (int k = 0; k < W; k++)
			l[k] = (float)((k * 37) % W) / 10.0f; /* a permutation of 0..9.9 */
		struct sampler_result r;
		sampler_sample(s, sc, l, &r);
		seen[r.token]++;
	}
	int drawn = 0;
	for (int k = 0; k < W; k++) {
		int rank = W - 1 - (k * 37) % W; /* 0 is the best */
		if (seen[k] && rank >= 40)
			return fail("token of rank %d drawn", rank);
		drawn += seen[k] > 0;
	}
	CHECK(drawn == 40, "%d distinct tokens drawn, want 40", drawn);
	sampler_seq_destroy(s);
	sampler_scratch_destroy(sc);
	return 0;
}

static int test_top_k(void)
{
	struct sampler_params p;
	sampler_params_default(&p);
	p.seed = 9;
	p.top_k = 2;
	int c[V], n = 20000;
	if (draw(&p, n, c))
		return 1;
	const double want[V] = {0, 0.5 / 0.8, 0, 0.3 / 0.8};
	return check_freq(c, n, want);
}

/* min_p keeps tokens at least min_p times as likely as the best. */
static int test_min_p(void)
{
	struct sampler_params p;
	sampler_params_default(&p);
	p.seed = 10;
	p.min_p = 0.3f; /* 0.15 and 0.05 are under 0.3 * 0.5 */
	int c[V], n = 20000;
	if (draw(&p, n, c))
		return 1;
	const double want[V] = {0, 0.5 / 0.8, 0, 0.3 / 0.8};
	return check_freq(c, n, want);
}

/* Temperature 0.5 squares the probabilities before renormalising. */
static int test_temperature_half(void)
{
	struct sampler_params p;
	sampler_params_default(&p);
	p.seed = 11;
	p.temperature = 0.5f;
	int c[V], n = 20000;
	if (draw(&p, n, c))
		return 1;
	double want[V], z = 0;
	for (int i = 0; i < V; i++)
		z += P[i] * P[i];
	for (int i = 0; i < V; i++)
		want[i] = P[i] * P[i] / z;
	return check_freq(c, n, want);
}

static int test_seed_reproduces(void)
{
	struct sampler_params p;
	sampler_params_default(&p);
	p.temperature = 0.8f;
	p.top_p = 0.95f;
	p.seed = 1234;
	struct sampler_scratch *sc = sampler_scratch_create(V);
	struct sampler_seq *s1 = sampler_seq_create(&p, V, 300), *s2 = sampler_seq_create(&p, V, 300);
	p.seed = 1235;
	struct sampler_seq *s3 = sampler_seq_create(&p, V, 300);
	int differ = 0;
	for (int i = 0; i < 200; i++) {
		float l1[V], l2[V], l3[V];
		from_probs(l1, P);
		from_probs(l2, P);
		from_probs(l3, P);
		struct sampler_result r1, r2, r3;
		sampler_sample(s1, sc, l1, &r1);
		sampler_sample(s3, sc, l3, &r3); /* interleaved: must not disturb s1 or s2 */
		sampler_sample(s2, sc, l2, &r2);
		CHECK(r1.token == r2.token, "the same seed diverged at step %d", i);
		differ += r1.token != r3.token;
	}
	CHECK(differ > 20, "another seed gave nearly the same tokens (%d differ)", differ);
	sampler_seq_destroy(s1);
	sampler_seq_destroy(s2);
	sampler_seq_destroy(s3);
	sampler_scratch_destroy(sc);
	return 0;
}

static int test_penalties(void)
{
	struct sampler_params p;
	sampler_params_default(&p);
	p.temperature = 0;
	struct sampler_scratch *sc = sampler_scratch_create(V);
	struct sampler_result r;
	/* repetition: a prompt token's positive logit is divided, a negative one
	 * multiplied. */
	p.repetition_penalty = 1.2f;
	struct sampler_seq *s = sampler_seq_create(&p, V, 16);
	sampler_seq_add(s, 0, false);
	sampler_seq_add(s, 2, false);
	float l[V] = {2.0f, 1.9f, -1.0f, -1.1f, -5, -5, -5, -5};
	sampler_sample(s, sc, l, &r);
	CHECK(r.token == 1 && fabsf(l[0] - 2.0f / 1.2f) < 1e-6 && fabsf(l[2] + 1.2f) < 1e-6,
	      "repetition penalty: token %d, logits %g %g", r.token, l[0], l[2]);
	sampler_seq_destroy(s);
	/* frequency and presence: only generated tokens, by count. */
	sampler_params_default(&p);
	p.temperature = 0;
	p.frequency_penalty = 0.5f;
	p.presence_penalty = 0.25f;
	s = sampler_seq_create(&p, V, 16);
	sampler_seq_add(s, 3, false); /* a prompt token: not penalised */
	float l1[V] = {3, 0, 0, 2.9f, 0, 0, 0, 0};
	sampler_sample(s, sc, l1, &r); /* 0, now generated once */
	CHECK(r.token == 0, "first pick %d", r.token);
	float l2[V] = {3, 0, 0, 2.9f, 0, 0, 0, 0};
	sampler_sample(s, sc, l2, &r);
	CHECK(r.token == 3 && fabsf(l2[0] - (3 - 0.5f - 0.25f)) < 1e-6 && l2[3] == 2.9f,
	      "after one use: token %d, logits %g %g", r.token, l2[0], l2[3]);
	sampler_seq_destroy(s);
	sampler_scratch_destroy(sc);
	return 0;
}

static int test_logprobs(void)
{
	struct sampler_params p;
	sampler_params_default(&p);
	p.temperature = 0;
	p.top_logprobs = 3;
	p.repetition_penalty = 2; /* changes the choice, not the reported logprobs */
	struct sampler_scratch *sc = sampler_scratch_create(V);
	struct sampler_seq *s = sampler_seq_create(&p, V, 8);
	sampler_seq_add(s, 1, false);
	float l[V];
	from_probs(l, P);
	struct sampler_result r;
	sampler_sample(s, sc, l, &r);
	CHECK(r.token == 3, "chose %d", r.token);
	CHECK(fabs(r.logprob - log(0.3)) < 1e-5, "logprob %g, want %g", r.logprob, log(0.3));
	CHECK(r.n_top == 3 && r.top_token[0] == 1 && r.top_token[1] == 3 && r.top_token[2] == 2,
	      "top tokens %d %d %d", r.top_token[0], r.top_token[1], r.top_token[2]);
	CHECK(fabs(r.top_logprob[0] - log(0.5)) < 1e-5 && fabs(r.top_logprob[2] - log(0.15)) < 1e-5,
	      "top logprobs %g %g", r.top_logprob[0], r.top_logprob[2]);
	sampler_seq_destroy(s);
	sampler_scratch_destroy(sc);
	return 0;
}

static int test_params_check(void)
{
	struct sampler_params p;
	char err[EMBER_ERR_LEN];
	sampler_params_default(&p);
	CHECK(sampler_params_check(&p, err) == 0, "defaults rejected: %s", err);
	p.temperature = -1;
	CHECK(sampler_params_check(&p, err) == -EINVAL && strstr(err, "temperature"), "temperature -1");
	sampler_params_default(&p);
	p.top_p = 0;
	CHECK(sampler_params_check(&p, err) == -EINVAL && strstr(err, "top_p"), "top_p 0");
	sampler_params_default(&p);
	p.top_p = NAN;
	CHECK(sampler_params_check(&p, err) == -EINVAL, "top_p NaN");
	sampler_params_default(&p);
	p.min_p = 1.5f;
	CHECK(sampler_params_check(&p, err) == -EINVAL && strstr(err, "min_p"), "min_p 1.5");
	sampler_params_default(&p);
	p.presence_penalty = 3;
	CHECK(sampler_params_check(&p, err) == -EINVAL && strstr(err, "presence"), "presence 3");
	sampler_params_default(&p);
	p.frequency_penalty = -2.5f;
	CHECK(sampler_params_check(&p, err) == -EINVAL && strstr(err, "frequency"), "frequency -2.5");
	sampler_params_default(&p);
	p.repetition_penalty = 0;
	CHECK(sampler_params_check(&p, err) == -EINVAL && strstr(err, "repetition"), "repetition 0");
	sampler_params_default(&p);
	p.top_logprobs = 21;
	CHECK(sampler_params_check(&p, err) == -EINVAL && strstr(err, "top_logprobs"), "top_logprobs 21");
	sampler_params_default(&p);
	p.top_k = -1;
	CHECK(sampler_params_check(&p, err) == -EINVAL && strstr(err, "top_k"), "top_k -1");
	/* A sequence's table is bounded. */
	sampler_params_default(&p);
	struct sampler_seq *s = sampler_seq_create(&p, V, 2);
	CHECK(sampler_seq_add(s, 1, false) == 0 && sampler_seq_add(s, 2, true) == 0 &&
		      sampler_seq_add(s, 1, true) == 0 && sampler_seq_add(s, 3, false) == -ENOSPC,
	      "distinct tokens past the bound accepted");
	sampler_seq_destroy(s);
	return 0;
}

/* Feeds the pieces one at a time and returns what came out, joined. */
static const char *feed_all(struct stop_matcher *m, const char *const *pieces, int n,
			    bool flush)
{
	static char all[4096];
	char out[2048];
	size_t w = 0;
	for (int i = 0; i < n; i++) {
		size_t k = stop_feed(m, pieces[i], strlen(pieces[i]), out);
		memcpy(all + w, out, k);
		w += k;
	}
	if (flush) {
		size_t k = stop_flush(m, out);
		memcpy(all + w, out, k);
		w += k;
	}
	all[w] = 0;
	return all;
}

static int test_stop_strings(void)
{
	struct stop_matcher m;
	char err[EMBER_ERR_LEN];
	const char *world[] = {"world"};
	CHECK(stop_init(&m, world, 1, err) == 0, "%s", err);
	const char *p1[] = {"Hello wo", "rld! more", "ignored"};
	CHECK(!strcmp(feed_all(&m, p1, 3, true), "Hello ") && m.stopped,
	      "a stop split across tokens: '%s'", feed_all(&m, p1, 0, false));
	stop_init(&m, world, 1, err);
	const char *p2[] = {"wo", "nder", "ful"};
	CHECK(!strcmp(feed_all(&m, p2, 3, true), "wonderful") && !m.stopped, "a false start");
	stop_init(&m, world, 1, err);
	char out[512];
	CHECK(stop_feed(&m, "wor", 3, out) == 0 && stop_flush(&m, out) == 3 && !memcmp(out, "wor", 3),
	      "held text at the end comes out");
	/* The first stop string to complete ends the text, as each token comes:
	 * "b" completes before "abc" could. */
	const char *two[] = {"b", "abc"};
	stop_init(&m, two, 2, err);
	const char *p3[] = {"xab", "c"};
	CHECK(!strcmp(feed_all(&m, p3, 2, true), "xa"), "first stop to complete");
	stop_init(&m, two, 2, err);
	const char *p3b[] = {"xa", "bc"};
	CHECK(!strcmp(feed_all(&m, p3b, 2, true), "x"), "two complete at once: the earlier");
	/* Characters of several bytes. */
	const char *cjk[] = {"世界"};
	stop_init(&m, cjk, 1, err);
	const char *p4[] = {"你好世", "纪"};
	CHECK(!strcmp(feed_all(&m, p4, 2, true), "你好世纪"), "multibyte false start");
	stop_init(&m, cjk, 1, err);
	const char *p5[] = {"你好世", "界!"};
	CHECK(!strcmp(feed_all(&m, p5, 2, true), "你好"), "multibyte stop");
	/* A piece longer than a window, with the stop at its end. */
	char longp[1200];
	memset(longp, 'a', 1000);
	strcpy(longp + 1000, "world tail");
	const char *p6[] = {longp};
	stop_init(&m, world, 1, err);
	const char *got = feed_all(&m, p6, 1, true);
	CHECK(strlen(got) == 1000 && m.stopped, "long piece: %zu bytes", strlen(got));
	/* No stop strings: everything passes straight through. */
	stop_init(&m, NULL, 0, err);
	CHECK(!strcmp(feed_all(&m, p1, 3, true), "Hello world! moreignored"), "no stops");
	/* Bad stop strings. */
	const char *five[] = {"a", "b", "c", "d", "e"}, *empty[] = {""}, *bad[] = {"\xff"};
	CHECK(stop_init(&m, five, 5, err) == -EINVAL, "5 stops accepted");
	CHECK(stop_init(&m, empty, 1, err) == -EINVAL, "an empty stop accepted");
	CHECK(stop_init(&m, bad, 1, err) == -EINVAL && strstr(err, "UTF-8"), "invalid UTF-8 accepted");
	char big[STOP_MAX_LEN + 2];
	memset(big, 'z', sizeof big - 1);
	big[sizeof big - 1] = 0;
	const char *toolong[] = {big};
	CHECK(stop_init(&m, toolong, 1, err) == -EINVAL, "a stop of %d bytes accepted", STOP_MAX_LEN + 1);
	return 0;
}

static const struct test tests[] = {
	{"rng", test_rng},
	{"greedy", test_greedy},
	{"temperature_one", test_temperature_one},
	{"temperature_half", test_temperature_half},
	{"top_p", test_top_p},
	{"top_k", test_top_k},
	{"top_k_large", test_top_k_large},
	{"min_p", test_min_p},
	{"seed_reproduces", test_seed_reproduces},
	{"penalties", test_penalties},
	{"logprobs", test_logprobs},
	{"params_check", test_params_check},
	{"stop_strings", test_stop_strings},
};

int main(int argc, char **argv)
{
	const char *only;
	if (runner_args(argc, argv, "test-sampler", NULL, 0, &only) < 0)
		return 2;
	printf("test-sampler: fixed seeds in each test\n");
	return run_tests(tests, sizeof tests / sizeof tests[0], only, NULL);
}
