/* Tests of the CUDA kernels against their CPU references (engine/cpu.h) on
 * random inputs, and of a sequence's tokens alone and in a batch of 32.
 * Needs a GPU: without one every test says SKIP. The whole model against
 * transformers' fixtures and the scheduler's tests on the GPU are
 * test-engine and test-sched with --device cuda (make test-gpu runs all).
 *
 * Tolerances: the kernels write BF16 (8 bits of mantissa), so an output is
 * right within one BF16 rounding of the CPU's float32 value, 2^-8 of it;
 * attention sums BF16 keys and values in float32 in another order than
 * the CPU, and is held to 1% of the output plus 2e-3. */
#include "../engine/cpu.h"
#include "../engine/generate.h"
#include "../engine/model.h"
#include "../kernels/cuda.h"
#include "../kernels/ops.h"
#include "runner.h"

#include <math.h>
#include <stdlib.h>

static const char *models_dir = "build/models";
static uint64_t rng = 88172645463325252ull;

static float frand(void) /* uniform in [-1, 1) */
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((rng >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static uint16_t bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	u += 0x7fff + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* A device copy of n bytes of p. */
static void *dev(const void *p, size_t n)
{
	void *d = NULL;
	if (cudaMalloc(&d, n ? n : 1) != cudaSuccess)
		return NULL;
	if (p)
		cudaMemcpy(d, p, n, cudaMemcpyHostToDevice);
	else
		cudaMemset(d, 0, n);
	return d;
}

static void back(void *h, const void *d, size_t n)
{
	cudaDeviceSynchronize();
	cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost);
}

/* Counts values of got (bf16) off by more than one BF16 rounding of want. */
static int bf16_misses(const uint16_t *got, const float *want, size_t n, size_t *first)
{
	int bad = 0;
	for (size_t i = 0; i < n; i++)
		if (fabsf(from_bf16(got[i]) - want[i]) > ldexpf(fabsf(want[i]), -8) + 1e-30f) {
			if (!bad)
				*first = i;
			bad++;
		}
	return bad;
}

#define NEED_GPU()                                                                                \
	do {                                                                                      \
		if (cuda_device_count() == 0) {                                                   \
			printf("    no CUDA device\n");                                           \
			return SKIP;                                                              \
		}                                                                                 \
	} while (0)

static int test_embed(void)
{
	NEED_GPU();
	int V = 1000, H = 96, n = 9;
	uint16_t *table = malloc((size_t)V * H * 2);
	for (int i = 0; i < V * H; i++)
		table[i] = bf16(frand());
	struct be_entry e[9];
	for (int t = 0; t < n; t++)
		e[t] = (struct be_entry){0, t, (t * 379) % V, -1};
	uint16_t *dt = dev(table, (size_t)V * H * 2);
	struct be_entry *de = dev(e, sizeof e);
	float *dx = dev(NULL, (size_t)n * H * 4), *x = malloc((size_t)n * H * 4), *want = malloc(H * 4);
	cuda_embed(dx, dt, H, de, n, 0);
	back(x, dx, (size_t)n * H * 4);
	struct tview tv = {DT_BF16, table, V, H};
	int bad = 0;
	for (int t = 0; t < n && !bad; t++) {
		cpu_embed(want, &tv, e[t].token);
		bad = memcmp(want, x + (size_t)t * H, H * 4) != 0;
	}
	cudaFree(dt), cudaFree(de), cudaFree(dx), free(table), free(x), free(want);
	CHECK(!bad, "an embedded row differs from cpu_embed");
	return 0;
}

static int test_add_rmsnorm(void)
{
	NEED_GPU();
	int H = 1536, n = 7;
	size_t sz = (size_t)n * H;
	float *x = malloc(sz * 4), *add = malloc(sz * 4), *w = malloc(H * 4), *want = malloc(sz * 4);
	float *v = malloc(sz * 4), *xg = malloc(sz * 4);
	uint16_t *out = malloc(sz * 2);
	for (size_t i = 0; i < sz; i++)
		x[i] = 3 * frand(), add[i] = frand();
	for (int i = 0; i < H; i++)
		w[i] = 1 + frand() / 4;
	float *dx = dev(x, sz * 4), *dadd = dev(add, sz * 4), *dw = dev(w, H * 4);
	uint16_t *dout = dev(NULL, sz * 2);
	cuda_add_rmsnorm(dx, dadd, dout, dw, H, 1e-6f, NULL, n, 0);
	back(out, dout, sz * 2);
	back(xg, dx, sz * 4);
	for (size_t i = 0; i < sz; i++)
		v[i] = x[i] + add[i];
	for (int t = 0; t < n; t++)
		cpu_rmsnorm(want + (size_t)t * H, v + (size_t)t * H, w, H, 1e-6f);
	size_t first = 0;
	int bad = bf16_misses(out, want, sz, &first);
	int xbad = memcmp(xg, v, sz * 4) != 0;
	/* Gathered rows (the final norm), x left alone: rows 5 and 2. */
	int32_t rows[2] = {5, 2};
	int32_t *drows = dev(rows, sizeof rows);
	cudaMemcpy(dx, x, sz * 4, cudaMemcpyHostToDevice);
	cuda_add_rmsnorm(dx, dadd, dout, dw, H, 1e-6f, drows, 2, 0);
	back(out, dout, 2 * (size_t)H * 2);
	back(xg, dx, sz * 4);
	int gbad = bf16_misses(out, want + 5 * (size_t)H, H, &first) +
		   bf16_misses(out + H, want + 2 * (size_t)H, H, &first);
	int gx = memcmp(xg, x, sz * 4) != 0;
	cudaFree(dx), cudaFree(dadd), cudaFree(dw), cudaFree(dout), cudaFree(drows);
	free(x), free(add), free(w), free(want), free(v), free(xg), free(out);
	CHECK(!bad && !xbad, "%d outputs off by more than a BF16 rounding (first %zu); x %s", bad,
	      first, xbad ? "differs from x + add" : "right");
	CHECK(!gbad && !gx, "gathered rows: %d off; x %s", gbad, gx ? "changed" : "kept");
	return 0;
}

static int test_swiglu(void)
{
	NEED_GPU();
	int I = 8960, n = 3;
	size_t sz = (size_t)n * I;
	float *gu = malloc(2 * sz * 4), *g = malloc(sz * 4), *u = malloc(sz * 4);
	uint16_t *out = malloc(sz * 2);
	for (size_t i = 0; i < 2 * sz; i++)
		gu[i] = 6 * frand();
	for (int t = 0; t < n; t++)
		for (int i = 0; i < I; i++) {
			g[(size_t)t * I + i] = gu[(size_t)t * 2 * I + i];
			u[(size_t)t * I + i] = gu[(size_t)t * 2 * I + I + i];
		}
	cpu_swiglu(g, u, (int)sz);
	float *dgu = dev(gu, 2 * sz * 4);
	uint16_t *dout = dev(NULL, sz * 2);
	cuda_swiglu(dout, dgu, I, n, 0);
	back(out, dout, sz * 2);
	size_t first = 0;
	int bad = bf16_misses(out, g, sz, &first);
	cudaFree(dgu), cudaFree(dout), free(gu), free(g), free(u), free(out);
	CHECK(!bad, "%d of %zu off by more than a BF16 rounding (first %zu)", bad, sz, first);
	return 0;
}

/* A paged cache of `blocks` blocks with tables that scatter each sequence
 * over them, for rope_kv and attention. */
struct paged {
	int blocks, max_blocks, n;
	int32_t *tables, *tab;
	struct be_entry *e;
};

static void paged_init(struct paged *p, int n, const int *pos, int max_ctx)
{
	p->n = n;
	p->max_blocks = (max_ctx + KV_BLOCK - 1) / KV_BLOCK;
	p->blocks = n * p->max_blocks;
	p->tables = malloc((size_t)p->blocks * 4);
	p->tab = malloc((size_t)n * 4);
	p->e = malloc((size_t)n * sizeof *p->e);
	for (int i = 0; i < p->blocks; i++) /* a permutation: 7919 is prime to blocks */
		p->tables[i] = (int32_t)(((long)i * 7919) % p->blocks);
	for (int t = 0; t < n; t++) {
		p->tab[t] = t;
		p->e[t] = (struct be_entry){t, pos[t], 0, -1};
	}
}

static size_t paged_row(const struct paged *p, int t, int pos, int kv_dim)
{
	int32_t b = p->tables[(size_t)p->tab[t] * p->max_blocks + pos / KV_BLOCK];
	return ((size_t)b * KV_BLOCK + pos % KV_BLOCK) * (size_t)kv_dim;
}

static int test_rope_kv(void)
{
	NEED_GPU();
	int nh = 12, nkv = 2, hd = 128, half = hd / 2, qd = nh * hd, kvd = nkv * hd, ctx = 300;
	int pos[5] = {0, 1, 17, 255, 299}, n = 5;
	struct paged p;
	paged_init(&p, n, pos, ctx);
	size_t row = (size_t)qd + 2 * kvd, cache = (size_t)p.blocks * KV_BLOCK * kvd;
	float *qkv = malloc(n * row * 4), *cs = malloc((size_t)ctx * half * 4),
	      *sn = malloc((size_t)ctx * half * 4), *got = malloc(n * row * 4);
	for (size_t i = 0; i < n * row; i++)
		qkv[i] = frand();
	struct model_config c = {.head_dim = hd, .rope_theta = 10000, .rope = ROPE_DEFAULT};
	cfg_rope_tables(&c, ctx, cs, sn);
	float *dqkv = dev(qkv, n * row * 4), *dcs = dev(cs, (size_t)ctx * half * 4),
	      *dsn = dev(sn, (size_t)ctx * half * 4);
	uint16_t *dk = dev(NULL, cache * 2), *dv = dev(NULL, cache * 2);
	uint16_t *k = malloc(cache * 2), *v = malloc(cache * 2);
	struct cuda_kv kv = {dk, dv, dev(p.tables, (size_t)p.blocks * 4), dev(p.tab, (size_t)n * 4),
			     p.max_blocks};
	struct be_entry *de = dev(p.e, (size_t)n * sizeof *p.e);
	cuda_rope_kv(dqkv, nh, nkv, hd, dcs, dsn, de, n, &kv, 0);
	back(got, dqkv, n * row * 4);
	back(k, dk, cache * 2);
	back(v, dv, cache * 2);
	int bad = 0;
	size_t first = 0;
	for (int t = 0; t < n; t++) {
		float *r = qkv + t * row;
		cpu_rope(r, nh, hd, cs + (size_t)pos[t] * half, sn + (size_t)pos[t] * half);
		cpu_rope(r + qd, nkv, hd, cs + (size_t)pos[t] * half, sn + (size_t)pos[t] * half);
		for (int i = 0; i < qd; i++)
			if (fabsf(got[t * row + i] - r[i]) > 1e-6f * (1 + fabsf(r[i])))
				bad++;
		size_t at = paged_row(&p, t, pos[t], kvd);
		bad += bf16_misses(k + at, r + qd, (size_t)kvd, &first);
		bad += bf16_misses(v + at, r + qd + kvd, (size_t)kvd, &first);
	}
	cudaFree(dqkv), cudaFree(dcs), cudaFree(dsn), cudaFree(dk), cudaFree(dv), cudaFree(de);
	cudaFree((void *)kv.tables), cudaFree((void *)kv.tab);
	free(qkv), free(cs), free(sn), free(got), free(k), free(v);
	free(p.tables), free(p.tab), free(p.e);
	CHECK(!bad, "%d values differ from cpu_rope and the cache write", bad);
	return 0;
}

/* Attention over a random paged cache against a float32 reference of
 * attn_worker's arithmetic, with splits 1 and 16, for head sizes 64 and
 * 128 and groups of 6 and 7. */
static int attention_case(int nh, int nkv, int hd)
{
	int qd = nh * hd, kvd = nkv * hd, g = nh / nkv, ctx = 2100;
	int pos[6] = {0, 5, 130, 700, 2049, 2099}, n = 6;
	struct paged p;
	paged_init(&p, n, pos, ctx);
	size_t row = (size_t)qd + 2 * kvd, cache = (size_t)p.blocks * KV_BLOCK * kvd;
	float *qkv = malloc(n * row * 4), *want = malloc((size_t)n * qd * 4), *s = malloc(ctx * 4);
	uint16_t *k = malloc(cache * 2), *v = malloc(cache * 2), *out = malloc((size_t)n * qd * 2);
	for (size_t i = 0; i < n * row; i++)
		qkv[i] = frand();
	for (size_t i = 0; i < cache; i++)
		k[i] = bf16(2 * frand()), v[i] = bf16(frand());
	float scale = 1.0f / sqrtf((float)hd);
	for (int t = 0; t < n; t++)
		for (int h = 0; h < nh; h++) {
			const float *q = qkv + t * row + (size_t)h * hd;
			size_t off = (size_t)(h / g) * hd;
			float mx = -INFINITY;
			for (int j = 0; j <= pos[t]; j++) {
				const uint16_t *kr = k + paged_row(&p, t, j, kvd) + off;
				float d = 0;
				for (int i = 0; i < hd; i++)
					d += q[i] * from_bf16(kr[i]);
				s[j] = d * scale;
				mx = fmaxf(mx, s[j]);
			}
			double sum = 0;
			for (int j = 0; j <= pos[t]; j++)
				sum += s[j] = expf(s[j] - mx);
			float *o = want + (size_t)t * qd + (size_t)h * hd;
			for (int i = 0; i < hd; i++) {
				double a = 0;
				for (int j = 0; j <= pos[t]; j++)
					a += s[j] * from_bf16(v[paged_row(&p, t, j, kvd) + off + i]);
				o[i] = (float)(a / sum);
			}
		}
	float *dqkv = dev(qkv, n * row * 4);
	uint16_t *dk = dev(k, cache * 2), *dv = dev(v, cache * 2), *dout = dev(NULL, (size_t)n * qd * 2);
	struct cuda_kv kv = {dk, dv, dev(p.tables, (size_t)p.blocks * 4), dev(p.tab, (size_t)n * 4),
			     p.max_blocks};
	struct be_entry *de = dev(p.e, (size_t)n * sizeof *p.e);
	float *work = dev(NULL, cuda_attention_work(n, nh, hd, 16) * 4);
	int bad = 0;
	double worst = 0;
	for (int splits = 1; splits <= 16; splits += 15) {
		cudaMemset(dout, 0, (size_t)n * qd * 2);
		bad += cuda_attention(dout, dqkv, nh, nkv, hd, de, n, pos[n - 1], &kv, work, splits, 0) != 0;
		back(out, dout, (size_t)n * qd * 2);
		for (int i = 0; i < n * qd; i++) {
			double d = fabs(from_bf16(out[i]) - want[i]);
			if (d - 0.01 * fabs(want[i]) > worst)
				worst = d - 0.01 * fabs(want[i]);
			bad += d > 2e-3 + 0.01 * fabs(want[i]);
		}
	}
	printf("    heads %d/%d of %d: largest difference %.2e beyond 1%% of the value\n", nh, nkv, hd,
	       worst);
	cudaFree(dqkv), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(de), cudaFree(work);
	cudaFree((void *)kv.tables), cudaFree((void *)kv.tab);
	free(qkv), free(want), free(s), free(k), free(v), free(out);
	free(p.tables), free(p.tab), free(p.e);
	return bad;
}

static int test_attention(void)
{
	NEED_GPU();
	int bad = attention_case(12, 2, 128) + attention_case(28, 4, 128) + attention_case(14, 2, 64) +
		  attention_case(4, 2, 16);
	CHECK(!bad, "%d attention outputs off", bad);
	return 0;
}

/* A sequence's greedy tokens alone and as one of a batch of 32 that decode
 * together. The batch changes the matrix products' shapes, so cuBLAS may
 * sum in another order: tokens may differ where the alone run's top two
 * logits are within GPU rounding. Reports how many are identical; fails
 * only on a difference where the margin was clear. */
static int test_batch_invariance(void)
{
	NEED_GPU();
	char dir[512], err[EMBER_ERR_LEN];
	snprintf(dir, sizeof dir, "%s/tiny-qwen2", models_dir);
	struct model *m;
	CHECK(model_open_dir(dir, &m, err) == 0, "%s", err);
	struct cuda_opts o = {.max_tokens = 512, .max_seqs = 32, .max_ctx = 256};
	struct backend *b;
	CHECK(cuda_backend_create(m, &o, &b, NULL, err) == 0, "%s", err);
	int V = m->cfg.vocab, N = 32, steps = 48, p = 12;
	float *l = malloc((size_t)N * V * sizeof *l), *margin = malloc(steps * sizeof *margin);
	int32_t *alone = malloc(steps * 4), *tok = malloc((size_t)N * 4), prompt[12];
	struct be_entry e[32];
	for (int i = 0; i < p; i++)
		prompt[i] = 1000 + 37 * i;
	int bad = gen_prefill(b, 0, prompt, p, 0, l, err) < 0;
	for (int k = 0; k < steps && !bad; k++) {
		alone[k] = gen_argmax(l, V);
		float second = -INFINITY;
		for (int i = 0; i < V; i++)
			if (i != alone[k] && l[i] > second)
				second = l[i];
		/* a tie at the GPU's precision, as test-engine's tolerance */
		margin[k] = l[alone[k]] - second - (0.02f + 0.01f * fabsf(l[alone[k]]));
		e[0] = (struct be_entry){0, p + k, alone[k], 0};
		bad = be_forward(b, e, 1, l, err) < 0;
	}
	/* The same prompt in slot 5 among 31 others, all decoding together. */
	for (int s = 0; s < N && !bad; s++) {
		int32_t other[12];
		for (int i = 0; i < p; i++)
			other[i] = s == 5 ? prompt[i] : 2000 + 53 * i + 101 * s;
		bad = gen_prefill(b, s, other, p, 0, l, err) < 0;
		tok[s] = gen_argmax(l, V);
	}
	int same = 0, first_diff = -1, clear = 0;
	for (int k = 0; k < steps && !bad; k++) {
		if (tok[5] == alone[k])
			same++;
		else if (first_diff < 0) {
			first_diff = k;
			clear = margin[k] > 0;
		}
		if (first_diff >= 0)
			break;
		for (int s = 0; s < N; s++)
			e[s] = (struct be_entry){s, p + k, tok[s], s};
		bad = be_forward(b, e, N, l, err) < 0;
		for (int s = 0; s < N; s++)
			tok[s] = gen_argmax(l + (size_t)s * V, V);
	}
	if (first_diff < 0)
		printf("    alone and in a batch of 32: all %d greedy tokens identical\n", steps);
	else
		printf("    alone and in a batch of 32: the first %d greedy tokens identical; token %d "
		       "differs, where the top two logits alone were %.4f beyond the tolerance\n",
		       same, first_diff, margin[first_diff]);
	be_destroy(b);
	model_close(m);
	free(l), free(margin), free(alone), free(tok);
	CHECK(!bad, "%s", err);
	CHECK(!clear, "a token differs where the margin was clear");
	return 0;
}

static const struct test tests[] = {
	{"embed", test_embed},
	{"add_rmsnorm", test_add_rmsnorm},
	{"swiglu", test_swiglu},
	{"rope_kv", test_rope_kv},
	{"attention", test_attention},
	{"batch_invariance", test_batch_invariance},
};

int main(int argc, char **argv)
{
	const char *only;
	const struct runner_opt opts[] = {{"--models", &models_dir}};
	if (runner_args(argc, argv, "test-gpu", opts, 1, &only) < 0)
		return 2;
	printf("test-gpu: %d CUDA devices, fixed seed\n", cuda_device_count());
	return run_tests(tests, sizeof tests / sizeof tests[0], only, NULL);
}
