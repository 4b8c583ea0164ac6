/* Sampling. The order is the one transformers' logits processors use:
 * penalties, temperature, top-k, top-p, min-p, then one draw from what is
 * left. Candidates are ranked by probability, then by lower id, so a draw
 * depends only on the logits and the sequence's random state. */
#include "sampler.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

void sampler_params_default(struct sampler_params *p)
{
	*p = (struct sampler_params){
		.temperature = 1.0f,
		.top_p = 1.0f,
		.repetition_penalty = 1.0f,
	};
}

int sampler_params_check(const struct sampler_params *p, char *err)
{
	if (!(p->temperature >= 0 && p->temperature <= 100))
		return ember_err(err, -EINVAL, "temperature must be in [0, 100]");
	if (p->top_k < 0)
		return ember_err(err, -EINVAL, "top_k must be 0 (off) or positive");
	if (!(p->top_p > 0 && p->top_p <= 1))
		return ember_err(err, -EINVAL, "top_p must be in (0, 1]");
	if (!(p->min_p >= 0 && p->min_p <= 1))
		return ember_err(err, -EINVAL, "min_p must be in [0, 1]");
	if (!(p->presence_penalty >= -2 && p->presence_penalty <= 2))
		return ember_err(err, -EINVAL, "presence_penalty must be in [-2, 2]");
	if (!(p->frequency_penalty >= -2 && p->frequency_penalty <= 2))
		return ember_err(err, -EINVAL, "frequency_penalty must be in [-2, 2]");
	if (!(p->repetition_penalty > 0 && p->repetition_penalty <= 100))
		return ember_err(err, -EINVAL, "repetition_penalty must be in (0, 100]");
	if (p->top_logprobs < 0 || p->top_logprobs > SAMPLER_MAX_TOP_LOGPROBS)
		return ember_err(err, -EINVAL, "top_logprobs must be in [0, %d]", SAMPLER_MAX_TOP_LOGPROBS);
	return 0;
}

/* ---- random numbers: splitmix64 to seed, xoshiro256** to draw ----------- */

static uint64_t splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void sampler_rng_seed(struct sampler_rng *r, uint64_t seed)
{
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix(&seed);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

double sampler_rng_uniform(struct sampler_rng *r)
{
	uint64_t *s = r->s;
	uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return (double)(out >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- what a sequence has seen -------------------------------------------- */

struct sampler_seq {
	struct sampler_params p;
	struct sampler_rng rng;
	int vocab;
	int32_t *table;      /* (mask + 1) open addressing: an index into order, or -1 */
	size_t mask;
	int32_t *order;      /* (max) the distinct tokens, in first-seen order */
	uint32_t *generated; /* (max) times each of them was generated */
	size_t n, max;
};

struct sampler_seq *sampler_seq_create(const struct sampler_params *p, int vocab,
				       size_t max_tokens)
{
	struct sampler_seq *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->p = *p;
	s->vocab = vocab;
	sampler_rng_seed(&s->rng, p->seed);
	size_t cap = 16;
	while (cap < 2 * max_tokens && cap < ((size_t)1 << 40))
		cap <<= 1;
	size_t max = max_tokens ? max_tokens : 1;
	s->table = malloc(cap * sizeof *s->table);
	s->order = malloc(max * sizeof *s->order);
	s->generated = malloc(max * sizeof *s->generated);
	if (!s->table || !s->order || !s->generated || max_tokens > INT32_MAX) {
		sampler_seq_destroy(s);
		return NULL;
	}
	for (size_t i = 0; i < cap; i++)
		s->table[i] = -1;
	s->mask = cap - 1;
	s->max = max_tokens;
	return s;
}

void sampler_seq_destroy(struct sampler_seq *s)
{
	if (!s)
		return;
	free(s->table);
	free(s->order);
	free(s->generated);
	free(s);
}

/* The table slot of token: the one holding it, or the empty one where it
 * would go. */
static int32_t *seen_slot(struct sampler_seq *s, int32_t token)
{
	size_t i = ((uint64_t)(uint32_t)token * 0x9e3779b97f4a7c15ull) >> 20 & s->mask;
	while (s->table[i] != -1 && s->order[s->table[i]] != token)
		i = (i + 1) & s->mask;
	return &s->table[i];
}

int sampler_seq_add(struct sampler_seq *s, int32_t token, bool generated)
{
	int32_t *e = seen_slot(s, token);
	if (*e == -1) {
		if (s->n == s->max)
			return -ENOSPC;
		*e = (int32_t)s->n;
		s->order[s->n] = token;
		s->generated[s->n++] = 0;
	}
	if (generated)
		s->generated[*e]++;
	return 0;
}

/* ---- scratch ------------------------------------------------------------- */

struct sampler_scratch {
	int vocab;
	float *raw;     /* (vocab) the logits as the model gave them */
	float *prob;    /* (vocab) unnormalised probabilities of candidates */
	int32_t *heap;  /* (vocab) candidate ids */
};

struct sampler_scratch *sampler_scratch_create(int vocab)
{
	struct sampler_scratch *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->vocab = vocab;
	s->raw = malloc((size_t)vocab * sizeof *s->raw);
	s->prob = malloc((size_t)vocab * sizeof *s->prob);
	s->heap = malloc((size_t)vocab * sizeof *s->heap);
	if (!s->raw || !s->prob || !s->heap) {
		sampler_scratch_destroy(s);
		return NULL;
	}
	return s;
}

void sampler_scratch_destroy(struct sampler_scratch *s)
{
	if (!s)
		return;
	free(s->raw);
	free(s->prob);
	free(s->heap);
	free(s);
}

/* ---- sampling ------------------------------------------------------------ */

/* a ranks before b: higher value, then lower id. */
static inline bool before(const float *v, int32_t a, int32_t b)
{
	return v[a] > v[b] || (v[a] == v[b] && a < b);
}

/* Heap of ids, best (by before()) at the top when max_first, else worst. */
static void sift_down(int32_t *h, size_t n, size_t i, const float *v, bool max_first)
{
	for (;;) {
		size_t l = 2 * i + 1, m = i;
		for (size_t k = l; k < l + 2 && k < n; k++)
			if (max_first ? before(v, h[k], h[m]) : before(v, h[m], h[k]))
				m = k;
		if (m == i)
			return;
		int32_t t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

static int32_t heap_pop(int32_t *h, size_t *n, const float *v)
{
	int32_t top = h[0];
	h[0] = h[--*n];
	sift_down(h, *n, 0, v, true);
	return top;
}

static bool usable(float x)
{
	return !isnan(x) && x != -INFINITY;
}

/* The k best ids of v by before(), best first, into out (room for k). A
 * few by insertion; many by popping a heap of every usable id built in
 * heap (room for vocab), which may be out itself. */
static int top_ids(const float *v, int vocab, int k, int32_t *out, int32_t *heap)
{
	int n = 0;
	if (k > 32) {
		size_t hn = 0;
		for (int32_t i = 0; i < vocab; i++)
			if (usable(v[i]))
				heap[hn++] = i;
		for (size_t i = hn / 2; i-- > 0;)
			sift_down(heap, hn, i, v, true);
		/* Popped ids go to the heap's free end; then into out in order. */
		size_t total = hn;
		while (n < k && hn > 0) {
			int32_t id = heap_pop(heap, &hn, v);
			heap[total - 1 - (size_t)n] = id;
			n++;
		}
		/* heap[total - n, total) holds them worst first: reverse it, then
		 * move it (out may be heap itself). */
		int32_t *blk = heap + total - (size_t)n;
		for (int i = 0, j = n - 1; i < j; i++, j--) {
			int32_t t = blk[i];
			blk[i] = blk[j];
			blk[j] = t;
		}
		memmove(out, blk, (size_t)n * sizeof *out);
		return n;
	}
	for (int32_t i = 0; i < vocab; i++) {
		if (!usable(v[i]))
			continue;
		if (n < k) {
			int j = n++;
			while (j > 0 && before(v, i, out[j - 1])) {
				out[j] = out[j - 1];
				j--;
			}
			out[j] = i;
		} else if (before(v, i, out[k - 1])) {
			int j = k - 1;
			while (j > 0 && before(v, i, out[j - 1])) {
				out[j] = out[j - 1];
				j--;
			}
			out[j] = i;
		}
	}
	return n;
}

static bool penalised(const struct sampler_params *p)
{
	return p->repetition_penalty != 1 || p->presence_penalty != 0 || p->frequency_penalty != 0;
}

static void apply_penalties(const struct sampler_row *row, float *logits, int vocab)
{
	const struct sampler_params *p = &row->p;
	for (int i = 0; i < row->n_seen; i++) {
		int32_t t = row->seen[i];
		if (t < 0 || t >= vocab)
			continue;
		float *l = &logits[t];
		if (p->repetition_penalty != 1)
			*l = *l > 0 ? *l / p->repetition_penalty : *l * p->repetition_penalty;
		if (row->generated[i]) {
			*l -= p->frequency_penalty * (float)row->generated[i];
			*l -= p->presence_penalty;
		}
	}
}

/* A probability (at most 1, the best's) in 32.32 fixed point: the weight of
 * a candidate in a draw. Sums of weights are exact in any order, so that
 * the GPU's sampler (kernels/sample.cu), which adds them in parallel,
 * draws the same token; the ones below 2^-33 of the best are never drawn. */
static uint64_t fixed_weight(float p)
{
	return (uint64_t)llrint((double)p * 4294967296.0);
}

/* The point of a draw in [0, mass): u scaled, kept below mass (which is
 * more than 0) when rounding reaches it. */
static uint64_t draw_point(double u, uint64_t mass)
{
	uint64_t t = (uint64_t)(u * (double)mass);
	return t < mass ? t : mass - 1;
}

/* Draws from the candidates, taken best first out of a max-heap of all
 * usable ids, keeping the smallest set whose weight reaches top_p of the
 * total and whose members reach min_p of the best (which has 1). */
static int32_t draw_nucleus(const struct sampler_row *row, struct sampler_scratch *sc, size_t n,
			    uint64_t total)
{
	const float *prob = sc->prob;
	int32_t *h = sc->heap;
	for (size_t i = n / 2; i-- > 0;)
		sift_down(h, n, i, prob, true);
	/* Pop the kept set to the end of the array, in order. */
	uint64_t kept = 0, want = (uint64_t)ceil((double)row->p.top_p * (double)total);
	size_t n_kept = 0, left = n;
	while (left > 0) {
		int32_t id = heap_pop(h, &left, prob);
		if (n_kept > 0 && prob[id] < row->p.min_p)
			break;
		h[n - 1 - n_kept++] = id;
		kept += fixed_weight(prob[id]);
		if (kept >= want)
			break;
	}
	uint64_t t = draw_point(row->u, kept), acc = 0;
	for (size_t i = 0; i < n_kept; i++) {
		int32_t id = h[n - 1 - i];
		acc += fixed_weight(prob[id]);
		if (t < acc)
			return id;
	}
	return h[n - n_kept]; /* not reached: t < kept */
}

/* The index of the largest usable logit (the first on ties), or 0. */
static int32_t argmax(const float *v, int n)
{
	int32_t best = -1;
	for (int32_t i = 0; i < n; i++)
		if (usable(v[i]) && (best < 0 || v[i] > v[best]))
			best = i;
	return best < 0 ? 0 : best;
}

/* The draw from temperature-scaled logits whose largest usable value is m2
 * (finite; -inf when none is usable, NaN when the scaling made 0 times
 * infinity of the best). */
static int32_t draw(const struct sampler_row *row, struct sampler_scratch *sc, float *logits,
		    float m2)
{
	const struct sampler_params *p = &row->p;
	int V = sc->vocab;
	/* Candidates and their unnormalised probabilities exp(l - max). */
	size_t n = 0;
	uint64_t total = 0;
	if (p->top_k > 0 && p->top_k < V) {
		n = (size_t)top_ids(logits, V, p->top_k, sc->heap, sc->heap);
		for (size_t i = 0; i < n; i++) {
			int32_t id = sc->heap[i];
			sc->prob[id] = (float)exp((double)logits[id] - m2);
			total += fixed_weight(sc->prob[id]);
		}
	} else {
		for (int32_t i = 0; i < V; i++) {
			if (!usable(logits[i]))
				continue;
			sc->prob[i] = (float)exp((double)logits[i] - m2);
			sc->heap[n++] = i;
			total += fixed_weight(sc->prob[i]);
		}
	}
	if (n == 0 || total == 0)
		return argmax(logits, V);
	if (p->top_p < 1 || p->min_p > 0)
		return draw_nucleus(row, sc, n, total);
	/* Everything stays: one pass over the candidates. */
	uint64_t t = draw_point(row->u, total), acc = 0;
	for (size_t i = 0; i < n; i++) {
		acc += fixed_weight(sc->prob[sc->heap[i]]);
		if (t < acc)
			return sc->heap[i];
	}
	return sc->heap[n - 1]; /* not reached: t < total */
}

bool sampler_row_greedy(const struct sampler_params *p)
{
	return p->temperature == 0 || p->top_k == 1;
}

void sampler_prepare(struct sampler_seq *s, struct sampler_row *row)
{
	row->p = s->p;
	row->u = sampler_row_greedy(&s->p) ? 0 : sampler_rng_uniform(&s->rng);
	bool pen = penalised(&s->p);
	row->seen = pen ? s->order : NULL;
	row->generated = pen ? s->generated : NULL;
	row->n_seen = pen ? (int)s->n : 0;
}

void sampler_accept(struct sampler_seq *s, int32_t token)
{
	sampler_seq_add(s, token, true);
}

void sampler_sample(struct sampler_seq *s, struct sampler_scratch *sc, float *logits,
		    struct sampler_result *out)
{
	struct sampler_row row;
	sampler_prepare(s, &row);
	sampler_sample_row(&row, sc, logits, out);
	sampler_accept(s, out->token);
}

void sampler_sample_row(const struct sampler_row *row, struct sampler_scratch *sc, float *logits,
			struct sampler_result *out)
{
	const struct sampler_params *p = &row->p;
	int V = sc->vocab;
	/* The model's own log-probabilities, before anything changes the logits. */
	memcpy(sc->raw, logits, (size_t)V * sizeof *sc->raw);
	float mx = logits[argmax(logits, V)];
	double sum = 0;
	for (int i = 0; i < V; i++)
		if (usable(logits[i]))
			sum += exp((double)logits[i] - mx);
	float lse = mx + (float)log(sum > 0 ? sum : 1);
	out->n_top = 0;
	if (p->top_logprobs > 0) {
		out->n_top = top_ids(logits, V, p->top_logprobs, out->top_token, NULL);
		for (int i = 0; i < out->n_top; i++)
			out->top_logprob[i] = logits[out->top_token[i]] - lse;
	}

	apply_penalties(row, logits, V);
	int32_t tok = argmax(logits, V);
	if (!sampler_row_greedy(p)) {
		float inv_t = 1.0f / p->temperature;
		for (int i = 0; i < V; i++)
			logits[i] *= inv_t;
		float m2 = logits[argmax(logits, V)];
		/* An infinite logit, or a temperature so small that the scaling
		 * overflowed, leaves no distribution to draw from: the limit of a
		 * falling temperature, greedy, stays. */
		if (m2 != INFINITY)
			tok = draw(row, sc, logits, m2);
	}
	out->token = tok;
	out->logprob = usable(sc->raw[tok]) ? sc->raw[tok] - lse : -INFINITY;
}
