/* Tests of the CUDA kernels against their CPU references (engine/cpu.h) on
 * random inputs, and of a sequence's logits, bit for bit, alone and in
 * batches of every size and graph bucket.
 * Needs a GPU: without one every test says SKIP. The whole model against
 * transformers' fixtures and the scheduler's tests on the GPU are
 * test-engine and test-sched with --device cuda (make test-gpu runs all).
 *
 * Tolerances: the kernels write BF16 (8 bits of mantissa), so an output is
 * right within one BF16 rounding of the CPU's float32 value, 2^-8 of it;
 * attention sums BF16 keys and values in float32 in another order than
 * the CPU, and is held to 1% of the output plus 2e-3. Sampling chooses the
 * same token as sampler_sample_row, with log-probabilities within 1e-4 (the
 * GPU sums exp in float, the CPU in double). Its sums are exact in 32.32
 * fixed point, which moves top_p's cut and the draw by up to 2^-32 of the
 * best's probability, and CUDA's exp may round a probability to another
 * float than glibc's: a row whose draw falls that near a boundary could
 * differ, about one in a million. */
#include "../engine/cpu.h"
#include "../engine/generate.h"
#include "../engine/model.h"
#include "../engine/sampler.h"
#include "../kernels/cuda.h"
#include "../kernels/ops.h"
#include "runner.h"

#include <errno.h>
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
	struct wdesc tv = {.dtype = DT_BF16, .data = table, .rows = V, .cols = H};
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

/* One cuda_dgemm case: y(t, n) = x . w^T + bias against a double sum of
 * the same BF16 values. An output is right within 1e-5 of the sum of
 * |w x| over k plus 1e-6 of what is added to it (float32 accumulation
 * over k of at most ~9,000 terms is far inside); SwiGLU's BF16 output
 * within one more BF16 rounding. Outputs start poisoned (NaN; for RESID
 * a random residual) and the row after the last must stay so. Row 0 of
 * every t is compared bit for bit with t = 1's (*row0, n values). */
static int dgemm_case(int n, int k, int t, int epi, bool with_bias, float **row0, double *worst)
{
	int on = epi == DGEMM_SWIGLU ? n / 2 : n, rows = t + 1;
	uint16_t *w = malloc((size_t)n * k * 2), *x = malloc((size_t)rows * k * 2);
	float *bias = malloc((size_t)n * 4), *y0 = malloc((size_t)rows * on * 4);
	float *y = malloc((size_t)rows * on * 4);
	uint16_t *act = malloc((size_t)rows * on * 2);
	/* the same values for every t, row by row, so that row 0 can be compared */
	uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(n * 31 + k * 7 + epi + 1);
	rng = seed;
	for (size_t i = 0; i < (size_t)n * k; i++)
		w[i] = bf16(frand() / 8);
	rng = seed ^ 1;
	for (int i = 0; i < n; i++)
		bias[i] = frand();
	rng = seed ^ 2;
	for (size_t i = 0; i < (size_t)rows * k; i++)
		x[i] = bf16(2 * frand());
	rng = seed ^ 3;
	for (size_t i = 0; i < (size_t)rows * on; i++)
		y0[i] = epi == DGEMM_RESID ? 4 * frand() : NAN;
	uint16_t *dw = dev(w, (size_t)n * k * 2), *dx = dev(x, (size_t)rows * k * 2);
	float *db = with_bias ? dev(bias, (size_t)n * 4) : NULL, *dy = dev(y0, (size_t)rows * on * 4);
	uint16_t *da = dev(NULL, (size_t)rows * on * 2);
	cudaMemset(da, 0xff, (size_t)rows * on * 2);
	size_t work_n = cuda_dgemm_work(n, k, t, epi);
	float *dwork = work_n ? dev(NULL, work_n * 4) : NULL;
	cudaError_t ce = cuda_dgemm(epi == DGEMM_SWIGLU ? NULL : dy, da, dx, dw, db, n, k, t, epi,
				    dwork, work_n, 0);
	back(y, dy, (size_t)rows * on * 4);
	back(act, da, (size_t)rows * on * 2);
	int bad = ce != cudaSuccess;
	for (int r = 0; r < t && !bad; r++)
		for (int j = 0; j < on && !bad; j++) {
			double acc[2] = {0, 0}, mag[2] = {0, 0};
			for (int h = 0; h < (epi == DGEMM_SWIGLU ? 2 : 1); h++) {
				const uint16_t *wr = w + (size_t)(j + h * on) * k, *xr = x + (size_t)r * k;
				for (int i = 0; i < k; i++) {
					double v = (double)from_bf16(wr[i]) * from_bf16(xr[i]);
					acc[h] += v;
					mag[h] += fabs(v);
				}
				if (with_bias)
					acc[h] += bias[j + h * on];
			}
			double want, got, tol = 1e-5 * mag[0] + 1e-6;
			size_t at = (size_t)r * on + j;
			if (epi == DGEMM_SWIGLU) {
				double g = acc[0], u = acc[1], sg = g / (1 + exp(-g));
				want = sg * u;
				got = from_bf16(act[at]);
				tol = fabs(want) / 256 + 1e-5 * (mag[0] * fabs(u) + mag[1] * fabs(sg)) + 1e-6;
			} else {
				want = epi == DGEMM_RESID ? y0[at] + acc[0] : acc[0];
				got = y[at];
				if (epi == DGEMM_RESID) /* (y0 is NaN otherwise) */
					tol += 1e-6 * fabs(y0[at]);
			}
			double d = fabs(got - want) / tol;
			if (!(d <= 1)) { /* NaN too */
				printf("    n %d k %d t %d epi %d: row %d col %d %g, want %g\n", n, k, t, epi,
				       r, j, got, want);
				bad = 1;
			}
			if (d > *worst)
				*worst = d;
		}
	for (int j = 0; j < on && !bad; j++) /* the row after the last untouched */
		bad = epi == DGEMM_SWIGLU ? act[(size_t)t * on + j] != 0xffff
					  : memcmp(&y[(size_t)t * on + j], &y0[(size_t)t * on + j], 4) != 0;
	if (!bad && epi != DGEMM_SWIGLU) {
		if (!*row0) {
			*row0 = malloc((size_t)on * 4);
			memcpy(*row0, y, (size_t)on * 4);
		} else if (memcmp(*row0, y, (size_t)on * 4) != 0) {
			printf("    n %d k %d: row 0 at t = %d differs in its bits from row 0 alone\n", n,
			       k, t);
			bad = 1;
		}
	}
	cudaFree(dw), cudaFree(dx), cudaFree(db), cudaFree(dy), cudaFree(da), cudaFree(dwork);
	free(w), free(x), free(bias), free(y0), free(y), free(act);
	if (ce != cudaSuccess)
		printf("    n %d k %d t %d: %s\n", n, k, t, cudaGetErrorString(ce));
	return bad;
}

/* The decode product at the shapes a model has (the tails of n and k,
 * a k long enough to be split across warps) for every way rows are
 * grouped, with each epilogue, and what it refuses. */
static int test_dgemm(void)
{
	NEED_GPU();
	static const int ts[] = {1, 3, 8, 9, 16, 17, 33, 64, 65, 130, CUDA_DGEMM_ROWS};
	struct {
		int n, k, epi;
		bool bias;
		int most; /* largest t tried */
	} cases[] = {
		{1003, 1544, DGEMM_PLAIN, true, 130},
		{256, 1536, DGEMM_PLAIN, false, CUDA_DGEMM_ROWS},
		{1536, 8960, DGEMM_RESID, false, 17},
		{200, 64, DGEMM_RESID, true, 65},
		{2000, 1544, DGEMM_SWIGLU, false, 33},
		{320, 64, DGEMM_SWIGLU, true, 9},
	};
	int bad = 0, tried = 0;
	double worst = 0;
	for (size_t c = 0; c < sizeof cases / sizeof cases[0] && !bad; c++) {
		float *row0 = NULL;
		for (size_t i = 0; i < sizeof ts / sizeof ts[0] && !bad && ts[i] <= cases[c].most; i++, tried++)
			bad = dgemm_case(cases[c].n, cases[c].k, ts[i], cases[c].epi, cases[c].bias, &row0,
					 &worst);
		free(row0);
	}
	printf("    %d cases: largest error %.3f of the tolerance\n", tried, worst);
	CHECK(!bad, "a product differs from the CPU's sum (above)");
	uint16_t *d = dev(NULL, 64);
	float *f = dev(NULL, 64);
	CHECK(cuda_dgemm(f, NULL, d, d, NULL, 4, 12, 1, DGEMM_PLAIN, NULL, 0, 0) ==
		      cudaErrorInvalidValue, "k not a multiple of 8 accepted");
	CHECK(cuda_dgemm(f, NULL, d, d, NULL, 8, 8, CUDA_DGEMM_ROWS + 1, DGEMM_PLAIN, NULL, 0, 0) ==
		      cudaErrorInvalidValue, "more than CUDA_DGEMM_ROWS rows accepted");
	CHECK(cuda_dgemm(NULL, d, d, d, NULL, 7, 8, 1, DGEMM_SWIGLU, NULL, 0, 0) ==
		      cudaErrorInvalidValue, "SwiGLU of an odd n accepted");
	CHECK(cuda_dgemm_work(1536, 8960, 64, DGEMM_RESID) > 0 &&
		      cuda_dgemm(f, NULL, d, d, NULL, 1536, 8960, 64, DGEMM_RESID, f, 16, 0) ==
			      cudaErrorInvalidValue, "a split product with too little work accepted");
	cudaFree(d), cudaFree(f);
	return 0;
}

/* The product that normalizes its own rows (cuda_dgemm_norm) against the
 * norm kernel then cuda_dgemm: the same bits in every output, for t = 1 to
 * CUDA_DGEMM_NORM_ROWS, each epilogue, rows picked or not, outputs
 * poisoned first; and what it refuses. */
static int test_dgemm_norm(void)
{
	NEED_GPU();
	struct {
		int n, k, epi;
	} cases[] = {{2048, 1536, DGEMM_PLAIN}, {1000, 1536, DGEMM_RESID},
		     {17920, 1536, DGEMM_SWIGLU}, {512, 3584, DGEMM_PLAIN}};
	int T = CUDA_DGEMM_NORM_ROWS, bad = 0, ran = 0;
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		int n = cases[c].n, k = cases[c].k, epi = cases[c].epi;
		int on = epi == DGEMM_SWIGLU ? n / 2 : n, xrows = 2 * T;
		uint16_t *w = malloc((size_t)n * k * 2);
		float *x = malloc((size_t)xrows * k * 4), *nw = malloc((size_t)k * 4),
		      *bias = malloc((size_t)n * 4), *y0 = malloc((size_t)T * on * 4);
		int32_t pick[CUDA_DGEMM_NORM_ROWS];
		for (size_t i = 0; i < (size_t)n * k; i++)
			w[i] = bf16(frand() / 8);
		for (size_t i = 0; i < (size_t)xrows * k; i++)
			x[i] = 3 * frand();
		for (int i = 0; i < k; i++)
			nw[i] = 1 + frand() / 2;
		for (int i = 0; i < n; i++)
			bias[i] = frand();
		for (size_t i = 0; i < (size_t)T * on; i++)
			y0[i] = epi == DGEMM_RESID ? 4 * frand() : NAN;
		for (int r = 0; r < T; r++)
			pick[r] = (r * 5 + 3) % xrows;
		uint16_t *dw = dev(w, (size_t)n * k * 2), *dxn = dev(NULL, (size_t)T * k * 2);
		float *dx = dev(x, (size_t)xrows * k * 4), *dnw = dev(nw, (size_t)k * 4),
		      *db = dev(bias, (size_t)n * 4);
		int32_t *dpick = dev(pick, sizeof pick);
		size_t ybytes = (size_t)T * on * 4, abytes = (size_t)T * on * 2;
		float *got[2] = {malloc(ybytes), malloc(ybytes)};
		uint16_t *act[2] = {malloc(abytes), malloc(abytes)};
		for (int t = 1; t <= T; t++)
			for (int picked = 0; picked < 2; picked++) {
				if (!cuda_dgemm_norm_fits(n, k, t, epi))
					continue;
				ran++;
				for (int f = 0; f < 2; f++) {
					float *dy = dev(y0, ybytes);
					uint16_t *da = dev(NULL, abytes);
					cudaMemset(da, 0xff, abytes);
					const int32_t *rows = picked ? dpick : NULL;
					if (f)
						bad += cuda_dgemm_norm(epi == DGEMM_SWIGLU ? NULL : dy, da, dx,
								       rows, dnw, 1e-6f, dw, db, n, k, t,
								       epi, 0) != cudaSuccess;
					else
						bad += cuda_add_rmsnorm(dx, NULL, dxn, dnw, k, 1e-6f, rows, t,
									0) != cudaSuccess ||
						       cuda_dgemm(epi == DGEMM_SWIGLU ? NULL : dy, da, dxn,
								  dw, db, n, k, t, epi, NULL, 0, 0) !=
							       cudaSuccess;
					back(got[f], dy, ybytes);
					back(act[f], da, abytes);
					cudaFree(dy), cudaFree(da);
				}
				if (memcmp(got[0], got[1], ybytes) || memcmp(act[0], act[1], abytes)) {
					printf("    n %d k %d t %d epi %d%s: outputs differ in their bits\n",
					       n, k, t, epi, picked ? " (rows picked)" : "");
					bad++;
				}
			}
		cudaFree(dw), cudaFree(dxn), cudaFree(dx), cudaFree(dnw), cudaFree(db), cudaFree(dpick);
		free(w), free(x), free(nw), free(bias), free(y0);
		free(got[0]), free(got[1]), free(act[0]), free(act[1]);
	}
	printf("    %d cases the same bits as the norm kernel then the product\n", ran - bad);
	CHECK(!cuda_dgemm_norm_fits(2048, 1536, CUDA_DGEMM_NORM_ROWS + 1, DGEMM_PLAIN),
	      "more rows than CUDA_DGEMM_NORM_ROWS accepted");
	CHECK(cuda_dgemm_norm(NULL, NULL, NULL, NULL, NULL, 1e-6f, NULL, NULL, 64, 64, 1,
			      DGEMM_PLAIN, 0) == cudaErrorInvalidValue,
	      "a product with no input accepted");
	CHECK(!bad && ran > 0, "%d of %d cases differ", bad, ran);
	return 0;
}

/* A paged cache of `blocks` blocks with tables that scatter each sequence
 * over them, for rope_kv and attention. */
struct paged {
	int blocks, max_blocks, n;
	int32_t *tables, *tab;
	struct be_entry *e;
};

/* Entry t is of sequence seq[t] (its table row; NULL: its own, t). */
static void paged_init(struct paged *p, int n, const int *pos, const int *seq, int max_ctx)
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
		p->tab[t] = seq ? seq[t] : t;
		p->e[t] = (struct be_entry){p->tab[t], pos[t], 0, -1};
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
	paged_init(&p, n, pos, NULL, ctx);
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
 * attn_worker's arithmetic, with splits 1 and 32: entries of their own
 * sequences (one by one, long ones split), and a prompt's chunk of 75
 * entries at positions 1990.. of one sequence beside two others (tiles of
 * the prefill kernel, the last one partial, and one by one), and a
 * prompt's first 40 positions, for head sizes 128, 64, 16 and 256 and
 * groups of 6, 7, 7, 2 and 4. */
static int attention_check(int nh, int nkv, int hd, int n, const int *pos, const int *seq)
{
	int qd = nh * hd, kvd = nkv * hd, g = nh / nkv, ctx = 2100;
	struct paged p;
	paged_init(&p, n, pos, seq, ctx);
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
	int32_t *dec = malloc((size_t)n * 4), *tiles = malloc((size_t)n * 8);
	int n_dec, n_tiles = cuda_attention_plan(p.e, n, true, dec, &n_dec, tiles);
	float *dqkv = dev(qkv, n * row * 4);
	uint16_t *dk = dev(k, cache * 2), *dv = dev(v, cache * 2), *dout = dev(NULL, (size_t)n * qd * 2);
	struct cuda_kv kv = {dk, dv, dev(p.tables, (size_t)p.blocks * 4), dev(p.tab, (size_t)n * 4),
			     p.max_blocks};
	struct be_entry *de = dev(p.e, (size_t)n * sizeof *p.e);
	int32_t *ddec = dev(dec, (size_t)n * 4), *dtiles = dev(tiles, (size_t)n * 8);
	float *work = dev(NULL, cuda_attention_work(n, nh, hd, 32) * 4);
	int bad = 0, max_pos = 0;
	for (int t = 0; t < n; t++)
		max_pos = pos[t] > max_pos ? pos[t] : max_pos;
	double worst = 0;
	for (int splits = 1; splits <= 32; splits += 31) {
		cudaMemset(dout, 0, (size_t)n * qd * 2);
		bad += cuda_attention(dout, dqkv, nh, nkv, hd, de, ddec, n_dec, dtiles, n_tiles, max_pos,
				      &kv, work, splits, NULL, NULL, 0) != 0;
		back(out, dout, (size_t)n * qd * 2);
		for (int i = 0; i < n * qd; i++) {
			double d = fabs(from_bf16(out[i]) - want[i]);
			if (d - 0.01 * fabs(want[i]) > worst)
				worst = d - 0.01 * fabs(want[i]);
			bad += d > 2e-3 + 0.01 * fabs(want[i]);
		}
	}
	printf("    heads %d/%d of %d, %d entries (%d one by one, %d tiles): largest difference %.2e "
	       "beyond 1%% of the value\n", nh, nkv, hd, n, n_dec, n_tiles, worst);
	cudaFree(dqkv), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(de), cudaFree(work);
	cudaFree(ddec), cudaFree(dtiles);
	cudaFree((void *)kv.tables), cudaFree((void *)kv.tab);
	free(qkv), free(want), free(s), free(k), free(v), free(out), free(dec), free(tiles);
	free(p.tables), free(p.tab), free(p.e);
	return bad;
}

/* The attention that rotates its queries and writes the cache itself (a
 * step of distinct sequences) against cuda_rope_kv then attention: the
 * same bits in the output and in the whole cache, with splits 1 and 32,
 * in poisoned outputs; and refused beside tiles. */
static int attention_rope_check(int nh, int nkv, int hd)
{
	int pos[7] = {0, 5, 130, 255, 700, 2049, 2099}, n = 7, half = hd / 2, ctx = 2100;
	int qd = nh * hd, kvd = nkv * hd;
	struct paged p;
	paged_init(&p, n, pos, NULL, ctx);
	size_t row = (size_t)qd + 2 * kvd, cache = (size_t)p.blocks * KV_BLOCK * kvd;
	float *qkv = malloc(n * row * 4), *cs = malloc((size_t)ctx * half * 4),
	      *sn = malloc((size_t)ctx * half * 4);
	uint16_t *k = malloc(cache * 2), *v = malloc(cache * 2);
	uint16_t *got[2][3]; /* (unfused, fused): out, k, v */
	for (size_t i = 0; i < n * row; i++)
		qkv[i] = frand();
	for (size_t i = 0; i < cache; i++)
		k[i] = bf16(2 * frand()), v[i] = bf16(frand());
	struct model_config c = {.head_dim = hd, .rope_theta = 10000, .rope = ROPE_DEFAULT};
	cfg_rope_tables(&c, ctx, cs, sn);
	int32_t dec[7], tiles[14];
	int n_dec, n_tiles = cuda_attention_plan(p.e, n, false, dec, &n_dec, tiles);
	float *dcs = dev(cs, (size_t)ctx * half * 4), *dsn = dev(sn, (size_t)ctx * half * 4);
	float *work = dev(NULL, cuda_attention_work(n, nh, hd, 32) * 4);
	struct be_entry *de = dev(p.e, (size_t)n * sizeof *p.e);
	int32_t *ddec = dev(dec, sizeof dec), *dtiles = dev(tiles, sizeof tiles);
	int32_t *dtab = dev(p.tables, (size_t)p.blocks * 4), *dt = dev(p.tab, (size_t)n * 4);
	int bad = 0, differ = 0;
	for (int splits = 1; splits <= 32; splits += 31) {
		for (int f = 0; f < 2; f++) {
			float *dqkv = dev(qkv, n * row * 4);
			uint16_t *dk = dev(k, cache * 2), *dv = dev(v, cache * 2);
			uint16_t *dout = dev(NULL, (size_t)n * qd * 2);
			cudaMemset(dout, 0xff, (size_t)n * qd * 2); /* NaN: what is not written shows */
			struct cuda_kv kv = {dk, dv, dtab, dt, p.max_blocks};
			if (!f)
				bad += cuda_rope_kv(dqkv, nh, nkv, hd, dcs, dsn, de, n, &kv, 0) != 0;
			bad += cuda_attention(dout, dqkv, nh, nkv, hd, de, ddec, n_dec, dtiles, n_tiles,
					      2099, &kv, work, splits, f ? dcs : NULL, f ? dsn : NULL,
					      0) != 0;
			got[f][0] = malloc((size_t)n * qd * 2), got[f][1] = malloc(cache * 2),
			got[f][2] = malloc(cache * 2);
			back(got[f][0], dout, (size_t)n * qd * 2);
			back(got[f][1], dk, cache * 2);
			back(got[f][2], dv, cache * 2);
			cudaFree(dqkv), cudaFree(dk), cudaFree(dv), cudaFree(dout);
		}
		differ += memcmp(got[0][0], got[1][0], (size_t)n * qd * 2) != 0;
		differ += memcmp(got[0][1], got[1][1], cache * 2) != 0;
		differ += memcmp(got[0][2], got[1][2], cache * 2) != 0;
		for (int f = 0; f < 2; f++)
			for (int i = 0; i < 3; i++)
				free(got[f][i]);
	}
	/* beside a prompt's tiles it is refused: their keys are read from the cache */
	struct cuda_kv kv = {NULL, NULL, dtab, dt, p.max_blocks};
	bad += cuda_attention(NULL, NULL, nh, nkv, hd, de, ddec, 0, dtiles, 1, 2099, &kv, work, 1,
			      dcs, dsn, 0) != cudaErrorInvalidValue;
	cudaFree(dcs), cudaFree(dsn), cudaFree(work), cudaFree(de), cudaFree(ddec), cudaFree(dtiles);
	cudaFree(dtab), cudaFree(dt);
	free(qkv), free(cs), free(sn), free(k), free(v), free(p.tables), free(p.tab), free(p.e);
	printf("    heads %d/%d of %d, rope inside: %d of 6 outputs or caches differ\n", nh, nkv, hd,
	       differ);
	return bad + differ;
}

static int attention_case(int nh, int nkv, int hd)
{
	if (attention_rope_check(nh, nkv, hd))
		return 1;
	int pos[6] = {0, 5, 130, 700, 2049, 2099};
	int bad = attention_check(nh, nkv, hd, 6, pos, NULL);
	/* a chunk of 75 positions of sequence 1 between sequences 0 and 2 */
	int n = 77, cpos[77], cseq[77];
	cpos[0] = 300, cseq[0] = 0;
	for (int i = 1; i <= 75; i++)
		cpos[i] = 1990 + i - 1, cseq[i] = 1;
	cpos[76] = 17, cseq[76] = 2;
	bad += attention_check(nh, nkv, hd, n, cpos, cseq);
	/* a prompt's first chunk: positions 0..39 (tiles of 32 and 8) */
	for (int i = 0; i < 40; i++)
		cpos[i] = i, cseq[i] = 0;
	return bad + attention_check(nh, nkv, hd, 40, cpos, cseq);
}

/* How attention takes a step's entries (host code: runs without a GPU).
 * Runs of a sequence shorter than CUDA_TILE_MIN, or broken by a gap in the
 * positions, go one by one. */
static int test_attention_plan(void)
{
	int32_t dec[90], tiles[180];
	struct be_entry e[90];
	for (int t = 0; t < 77; t++)
		e[t] = (struct be_entry){t == 0 ? 0 : t == 76 ? 2 : 1, t == 0 ? 300 : t == 76 ? 17 : 1989 + t, 0, -1};
	for (int t = 77; t < 90; t++) /* 7 of sequence 3, then a gap, then 6 more */
		e[t] = (struct be_entry){3, t < 84 ? t : t + 5, 0, -1};
	int n_dec, n_tiles = cuda_attention_plan(e, 90, true, dec, &n_dec, tiles);
	CHECK(n_tiles == 3 && tiles[0] == 1 && tiles[1] == 32 && tiles[2] == 33 && tiles[4] == 65 &&
		      tiles[5] == 11,
	      "%d tiles: (%d, %d), (%d, %d), ...", n_tiles, tiles[0], tiles[1], tiles[2], tiles[3]);
	CHECK(n_dec == 15 && dec[0] == 0 && dec[1] == 76 && dec[2] == 77 && dec[14] == 89,
	      "%d one by one", n_dec);
	n_tiles = cuda_attention_plan(e, 90, false, dec, &n_dec, tiles);
	CHECK(n_tiles == 0 && n_dec == 90 && dec[42] == 42, "without tiles: %d tiles, %d one by one",
	      n_tiles, n_dec);
	return 0;
}

static int test_attention(void)
{
	NEED_GPU();
	int bad = attention_case(12, 2, 128) + attention_case(28, 4, 128) + attention_case(14, 2, 64) +
		  attention_case(4, 2, 16) + attention_case(8, 2, 256);
	CHECK(!bad, "%d attention outputs off", bad);
	return 0;
}

/* B sequences prefilled one by one, then `steps` greedy decode steps of
 * all together, the sequence of `prompt` at place B / 2 among prompts of
 * their own: its logits at each step go to got (steps, V). */
static int decode_batch(struct backend *b, int B, const int32_t *prompt, int p, int steps,
			float *got, char *err)
{
	int V = b->vocab, at = B / 2;
	float *l = malloc((size_t)B * V * 4);
	int32_t *tok = malloc((size_t)B * 4), other[16];
	struct be_entry *e = malloc((size_t)B * sizeof *e);
	int rc = l && tok && e ? 0 : -ENOMEM;
	for (int s = 0; s < B && rc == 0; s++) {
		for (int i = 0; i < p; i++)
			other[i] = s == at ? prompt[i] : 2000 + 53 * i + 101 * s;
		rc = gen_prefill(b, s, other, p, 0, l, err);
		tok[s] = gen_argmax(l, V);
	}
	for (int k = 0; k < steps && rc == 0; k++) {
		for (int s = 0; s < B; s++)
			e[s] = (struct be_entry){s, p + k, tok[s], s};
		rc = be_forward(b, e, B, l, err);
		memcpy(got + (size_t)k * V, l + (size_t)at * V, (size_t)V * 4);
		for (int s = 0; s < B; s++)
			tok[s] = gen_argmax(l + (size_t)s * V, V);
	}
	free(l), free(tok), free(e);
	return rc < 0 ? rc : 0;
}

/* Batch invariance, bit for bit: a sequence's logits at each of 8 decode
 * steps are the same bits alone (kernel by kernel) as in batches of 2, 7,
 * 16, 64 and 128, and as replayed from every graph bucket (a batch that
 * pads to it, and 128 exactly), at another place in the batch each time. */
static int test_batch_invariance(void)
{
	NEED_GPU();
	char dir[512], err[EMBER_ERR_LEN] = "";
	snprintf(dir, sizeof dir, "%s/tiny-qwen2", models_dir);
	struct model *m;
	CHECK(model_open_dir(dir, &m, err) == 0, "%s", err);
	struct cuda_opts o = {.max_tokens = 512, .max_seqs = 128, .max_ctx = 64, .eager = true};
	struct backend *eb, *gb;
	struct cuda_load_stats st;
	CHECK(cuda_backend_create(m, &o, &eb, NULL, err) == 0, "%s", err);
	o.eager = false;
	CHECK(cuda_backend_create(m, &o, &gb, &st, err) == 0, "%s", err);
	int V = m->cfg.vocab, steps = 8, p = 12;
	int32_t prompt[12];
	for (int i = 0; i < p; i++)
		prompt[i] = 1000 + 37 * i;
	float *want = malloc((size_t)steps * V * 4), *got = malloc((size_t)steps * V * 4);
	int rc = decode_batch(eb, 1, prompt, p, steps, want, err), runs = 0, differ = 0;
	static const int eager[] = {2, 7, 16, 64, 128};
	static const int graph[] = {1, 2, 3, 5, 9, 17, 25, 33, 49, 65, 97, 128};
	for (int i = 0; i < 5 + 12 && rc == 0; i++) {
		int B = i < 5 ? eager[i] : graph[i - 5];
		rc = decode_batch(i < 5 ? eb : gb, B, prompt, p, steps, got, err);
		for (int k = 0; k < steps && rc == 0; k++)
			if (memcmp(want + (size_t)k * V, got + (size_t)k * V, (size_t)V * 4) != 0) {
				printf("    %s, batch of %d: step %d's logits differ from alone\n",
				       i < 5 ? "kernel by kernel" : "from graphs", B, k);
				differ++;
				break;
			}
		runs++;
	}
	if (rc == 0)
		printf("    %d batches (%d graphs): %d differ from alone in any bit of %d steps' logits\n",
		       runs, st.graphs, differ, steps);
	be_destroy(eb);
	be_destroy(gb);
	model_close(m);
	free(want), free(got);
	CHECK(rc == 0, "%s", err);
	CHECK(st.graphs == 11, "%d graphs for up to 128 sequences (11 buckets expected)", st.graphs);
	CHECK(!differ, "a sequence's logits depend on the batch it runs in");
	return 0;
}

/* The sampling kernel against sampler_sample_row on random logits with
 * what real ones have (ties, -inf from masks, a NaN) and every kind of
 * parameter: greedy, temperature, top_k small and beyond 32, top_p, min_p,
 * all three together, the penalties (with factors whose products round)
 * alone and with top_k and top_p, top log-probabilities (more than there
 * are usable ids, too), a tie at top_k's edge, temperatures whose scaling
 * overflows (to +inf, to -inf, to 0 times infinity); then one row shaped
 * like a language model's drawn 64 times; a vocabulary of Qwen's size and
 * a small one where top_k reaches it. */
static int sample_case(int V, int rows_n, int *worst_id, double *worst_lp)
{
	float *logits = malloc((size_t)rows_n * V * 4), *copy = malloc((size_t)V * 4);
	struct sampler_row *rows = calloc((size_t)rows_n, sizeof *rows);
	struct cuda_sample_row *cr = calloc((size_t)rows_n, sizeof *cr);
	struct sampler_result *got = malloc((size_t)rows_n * sizeof *got);
	int32_t seen[64];
	uint32_t gen[64];
	for (int i = 0; i < 64; i++)
		seen[i] = (int32_t)((i * 7919) % V), gen[i] = (uint32_t)(i % 4);
	struct sampler_rng rng;
	sampler_rng_seed(&rng, 1234);
	for (int r = 0; r < rows_n; r++) {
		float *l = logits + (size_t)r * V;
		int kind = r % 18;
		if (r >= rows_n - 64) {
			/* One logit row shaped like a language model's (a normal
			 * background, a few peaks) drawn 64 times: 32 plain, 32 with
			 * top_p 0.95, each with its own u. */
			if (r == rows_n - 64) {
				for (int i = 0; i < V; i++)
					l[i] = 2 * (frand() + frand() + frand() + frand());
				for (int i = 0; i < 12; i++)
					l[(i * 7919) % V] = 14 - i;
			} else {
				memcpy(l, l - V, (size_t)V * 4);
			}
			kind = r < rows_n - 32 ? 18 : 5;
		} else {
			float scale = 1 + (r % 5);
			for (int i = 0; i < V; i++)
				l[i] = scale * (frand() + frand() + frand());
			for (int i = r % 3; i < V; i += 97 + r) /* masked ids */
				l[i] = -INFINITY;
			for (int i = 5; i < V; i += 1000) /* exact ties with a neighbour */
				l[i] = l[i - 1];
		}
		if (r % 7 == 3)
			l[V / 2] = NAN;
		if (r == rows_n - 66) /* (of kind 16, which keeps it so) */
			for (int i = 0; i < V; i++)
				l[i] = -INFINITY; /* nothing usable */
		if (r == 50)
			l[77] = INFINITY; /* an overflowed logit: greedy on it */
		if (kind == 14 || kind == 15) /* all at most 0 (then one 0), or all below */
			for (int i = 0; i < V; i++)
				l[i] = -fabsf(l[i]) - (kind == 15 ? 1 : 0) + (i == 3 && kind == 14 ? fabsf(l[i]) : 0);
		if (kind == 16) /* fewer usable than the top log-probabilities asked for */
			for (int i = 5; i < V; i++)
				l[i] = -INFINITY;
		if (kind == 17) { /* the 10th and 11th best tie */
			for (int i = 0; i < 12; i++)
				l[(i * 131) % V] = 40 - i;
			l[(10 * 131) % V] = 40 - 9;
		}
		struct sampler_params *p = &rows[r].p;
		sampler_params_default(p);
		p->temperature = kind == 0 ? 0 : kind == 10 || kind == 14 || kind == 15 ? 1e-40f /* overflows */
		                 : kind >= 16 ? 1 : 0.3f + 0.15f * (float)(r % 9);
		p->top_k = kind == 1 ? 1 : kind == 2 ? 5 : kind == 3 ? 40 : kind == 4 ? V + 3 : kind == 9 ? 200
			   : kind == 12 ? 50 : kind == 13 ? 20 : kind == 17 ? 10 : 0;
		p->top_p = kind == 5 ? 0.95f : kind == 6 ? 0.5f : kind == 9 ? 0.8f : kind == 11 ? 1e-4f
			   : kind == 12 ? 0.9f : kind == 13 ? 0.95f : 1;
		p->min_p = kind == 7 ? 0.05f : kind == 6 ? 0.2f : kind == 11 ? 1 : kind == 12 ? 0.05f : 0;
		if (kind == 8 || kind == 13) {
			p->repetition_penalty = 1.3f;
			p->frequency_penalty = 0.3f;
			p->presence_penalty = -0.4f;
			rows[r].seen = seen;
			rows[r].generated = gen;
			rows[r].n_seen = 64;
		}
		p->top_logprobs = r % 4 == 0 || kind == 16 ? SAMPLER_MAX_TOP_LOGPROBS : r % 4 == 1 ? 3 : 0;
		rows[r].u = sampler_row_greedy(p) ? 0 : sampler_rng_uniform(&rng);
		cr[r] = (struct cuda_sample_row){p->temperature, p->top_p, p->min_p, p->presence_penalty,
						 p->frequency_penalty, p->repetition_penalty, p->top_k,
						 p->top_logprobs, rows[r].u, 0, rows[r].n_seen};
	}
	float *dl = dev(logits, (size_t)rows_n * V * 4), *work = dev(NULL, cuda_sample_work(rows_n, V) * 4);
	struct cuda_sample_row *dr = dev(cr, (size_t)rows_n * sizeof *cr);
	int32_t *ds = dev(seen, sizeof seen);
	uint32_t *dg = dev(gen, sizeof gen);
	struct sampler_result *dout = dev(NULL, (size_t)rows_n * sizeof *dout);
	cuda_sample(dout, dl, work, V, dr, ds, dg, rows_n, 0);
	back(got, dout, (size_t)rows_n * sizeof *got);
	struct sampler_scratch *sc = sampler_scratch_create(V);
	int bad = 0;
	for (int r = 0; r < rows_n; r++) {
		struct sampler_result want;
		memcpy(copy, logits + (size_t)r * V, (size_t)V * 4);
		sampler_sample_row(&rows[r], sc, copy, &want);
		bool same = got[r].token == want.token && got[r].n_top == want.n_top;
		for (int i = 0; same && i < want.n_top; i++)
			same = got[r].top_token[i] == want.top_token[i] &&
			       fabsf(got[r].top_logprob[i] - want.top_logprob[i]) <= 1e-4f;
		if (isfinite(want.logprob) || isfinite(got[r].logprob))
			same = same && fabs((double)got[r].logprob - want.logprob) <= 1e-4;
		if (!same) {
			if (!bad)
				printf("    vocab %d row %d (temperature %.2f top_k %d top_p %.4f min_p %.2f): "
				       "token %d logprob %.5f, the CPU's %d %.5f\n", V, r,
				       rows[r].p.temperature, rows[r].p.top_k, rows[r].p.top_p,
				       rows[r].p.min_p, got[r].token, got[r].logprob, want.token,
				       want.logprob);
			bad++;
		}
		if (isfinite(want.logprob) && fabs((double)got[r].logprob - want.logprob) > *worst_lp)
			*worst_lp = fabs((double)got[r].logprob - want.logprob);
		*worst_id += got[r].token != want.token;
	}
	sampler_scratch_destroy(sc);
	cudaFree(dl), cudaFree(work), cudaFree(dr), cudaFree(ds), cudaFree(dg), cudaFree(dout);
	free(logits), free(copy), free(rows), free(cr), free(got);
	return bad;
}

static int test_sample(void)
{
	NEED_GPU();
	int differ = 0;
	double worst = 0;
	int bad = sample_case(151936, 172, &differ, &worst) + sample_case(1000, 172, &differ, &worst);
	printf("    344 rows: %d tokens differ from sampler_sample_row; largest log-probability "
	       "difference %.2e\n", differ, worst);
	CHECK(!bad, "%d rows differ", bad);
	return 0;
}

/* Decode steps replayed from CUDA graphs against the same steps launched
 * kernel by kernel: batches of 1, 3 (padded to the bucket of 4) and 8,
 * with greedy tokens fed back for 24 steps. The graph was captured with
 * every split of attention launched and the batch padded; every kernel
 * computes a row the same way whatever the batch, so the logits are the
 * same bits. */
static int test_graphs(void)
{
	NEED_GPU();
	char dir[512], err[EMBER_ERR_LEN];
	snprintf(dir, sizeof dir, "%s/tiny-qwen2", models_dir);
	struct model *m;
	CHECK(model_open_dir(dir, &m, err) == 0, "%s", err);
	struct cuda_opts o = {.max_tokens = 256, .max_seqs = 8, .max_ctx = 512};
	struct backend *gb, *eb;
	struct cuda_load_stats st;
	CHECK(cuda_backend_create(m, &o, &gb, &st, err) == 0, "%s", err);
	o.eager = true;
	CHECK(cuda_backend_create(m, &o, &eb, NULL, err) == 0, "%s", err);
	printf("    %d graphs captured in %.3f s\n", st.graphs, st.graph_s);
	int V = m->cfg.vocab, bad = 0, steps = 0, differ = 0;
	float *lg = malloc((size_t)8 * V * 4), *le = malloc((size_t)8 * V * 4);
	int sizes[3] = {1, 3, 8};
	for (int c = 0; c < 3 && !bad; c++) {
		int n = sizes[c];
		int32_t tok[8], prompt[20];
		for (int s = 0; s < n && !bad; s++) {
			for (int i = 0; i < 20; i++)
				prompt[i] = 500 + 31 * i + 77 * s + 1000 * c;
			bad += gen_prefill(gb, s, prompt, 20, 0, lg, err) < 0;
			bad += gen_prefill(eb, s, prompt, 20, 0, le, err) < 0;
			tok[s] = gen_argmax(le, V);
		}
		for (int k = 0; k < 24 && !bad; k++, steps++) {
			struct be_entry e[8];
			for (int s = 0; s < n; s++)
				e[s] = (struct be_entry){s, 20 + k, tok[s], s};
			bad += be_forward(gb, e, n, lg, err) < 0;
			bad += be_forward(eb, e, n, le, err) < 0;
			for (int s = 0; s < n && !bad; s++) {
				const float *a = lg + (size_t)s * V, *b = le + (size_t)s * V;
				for (int i = 0; i < V; i++)
					if (memcmp(&a[i], &b[i], 4) != 0) {
						if (!differ++)
							printf("    batch of %d, step %d, row %d: logit %d %.6f "
							       "from the graph, %.6f kernel by kernel\n",
							       n, k, s, i, a[i], b[i]);
						break;
					}
				tok[s] = gen_argmax(b, V);
			}
		}
	}
	printf("    %d steps: %d rows of logits differ in any bit\n", steps, differ);
	be_destroy(gb);
	be_destroy(eb);
	model_close(m);
	free(lg), free(le);
	CHECK(!bad, "%s", err);
	CHECK(st.graphs == 4, "%d graphs for up to 8 sequences (1, 2, 4, 8 expected)", st.graphs);
	CHECK(!differ, "logits from the graphs differ from the eager steps'");
	return 0;
}

static const struct test tests[] = {
	{"embed", test_embed},
	{"add_rmsnorm", test_add_rmsnorm},
	{"swiglu", test_swiglu},
	{"dgemm", test_dgemm},
	{"rope_kv", test_rope_kv},
	{"attention_plan", test_attention_plan},
	{"dgemm_norm", test_dgemm_norm},
	{"attention", test_attention},
	{"batch_invariance", test_batch_invariance},
	{"sample", test_sample},
	{"graphs", test_graphs},
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
