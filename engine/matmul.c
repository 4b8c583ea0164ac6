/* The matmul kernels. A tile is one weight row, read in order, times up to
 * 4 tokens; every (row, token) dot product sees the same sequence of fused
 * multiply-adds over k and the same final reduction whatever the tile, so
 * the batch a token runs in never changes its result. */
#include "matmul.h"

#include <assert.h>
#include <errno.h>
#include <immintrin.h>
#include <stdlib.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define ROWS_PER_CHUNK 64
#define NACC 4 /* accumulators per dot product */

typedef void (*rows_fn)(enum dtype dt, const float *x, int T, int K, const uint8_t *w,
			int r0, int r1, float *y, int ldy, const float *bias);
typedef float (*dot_fn)(const float *a, const float *b, int n);
typedef void (*axpy_fn)(float *y, float a, const float *x, int n);

/* ---- generic C ---------------------------------------------------------- */

static void rows_generic(enum dtype dt, const float *x, int T, int K, const uint8_t *w, int r0,
			 int r1, float *y, int ldy, const float *bias)
{
	for (int r = r0; r < r1; r++) {
		for (int t = 0; t < T; t++) {
			const float *xt = x + (size_t)t * K;
			float s = 0;
			for (int k = 0; k < K; k++)
				s += dtype_load_f32(dt, w, (size_t)r * K + k) * xt[k];
			y[(size_t)t * ldy + r] = s + (bias ? bias[r] : 0.0f);
		}
	}
}

static float dot_generic(const float *a, const float *b, int n)
{
	float s = 0;
	for (int i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

static void axpy_generic(float *y, float a, const float *x, int n)
{
	for (int i = 0; i < n; i++)
		y[i] += a * x[i];
}

/* ---- AVX-512 ------------------------------------------------------------ */

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,fma,f16c")

static ALWAYS_INLINE __m512 w16_load(enum dtype dt, const uint8_t *w, size_t i)
{
	switch (dt) {
	case DT_BF16:
		return _mm512_castsi512_ps(_mm512_slli_epi32(
			_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + 2 * i))), 16));
	case DT_F16:
		return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * i)));
	default:
		return _mm512_loadu_ps((const float *)(w + 4 * i));
	}
}

/* One weight row times C tokens (C <= 4). Each dot product keeps NACC
 * accumulators, block i of 16 elements going to accumulator i % NACC: four
 * independent chains hide the FMA latency while the row streams in order. */
static ALWAYS_INLINE void tile16(enum dtype dt, int C, const float *x, int K, const uint8_t *w,
				 int r, float *y, int ldy, const float *bias)
{
	__m512 acc[4][NACC];
#pragma GCC unroll 4
	for (int j = 0; j < C; j++)
#pragma GCC unroll 4
		for (int a = 0; a < NACC; a++)
			acc[j][a] = _mm512_setzero_ps();
	size_t row = (size_t)r * K;
	int k = 0;
	for (; k + 16 * NACC <= K; k += 16 * NACC) {
#pragma GCC unroll 4
		for (int a = 0; a < NACC; a++) {
			__m512 wv = w16_load(dt, w, row + k + 16 * a);
#pragma GCC unroll 4
			for (int j = 0; j < C; j++)
				acc[j][a] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + (size_t)j * K + k + 16 * a),
							    acc[j][a]);
		}
	}
	/* The blocks left over: at most NACC - 1, each to its accumulator. */
#pragma GCC unroll 4
	for (int a = 0; a < NACC - 1; a++) {
		if (k + 16 > K)
			break;
		__m512 wv = w16_load(dt, w, row + k);
#pragma GCC unroll 4
		for (int j = 0; j < C; j++)
			acc[j][a] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + (size_t)j * K + k), acc[j][a]);
		k += 16;
	}
#pragma GCC unroll 4
	for (int j = 0; j < C; j++) {
		__m512 t = _mm512_add_ps(_mm512_add_ps(acc[j][0], acc[j][1]),
					 _mm512_add_ps(acc[j][2], acc[j][3]));
		float s = _mm512_reduce_add_ps(t);
		for (int kk = k; kk < K; kk++)
			s += dtype_load_f32(dt, w, row + kk) * x[(size_t)j * K + kk];
		y[(size_t)j * ldy + r] = s + (bias ? bias[r] : 0.0f);
	}
}

static ALWAYS_INLINE void rows16(enum dtype dt, const float *x, int T, int K, const uint8_t *w,
				 int r0, int r1, float *y, int ldy, const float *bias)
{
	/* Tokens outside, rows inside: four tokens' activations stay in L1
	 * while the chunk's rows come from L2 for every group of tokens. */
	int t = 0;
	for (; t + 4 <= T; t += 4)
		for (int r = r0; r < r1; r++)
			tile16(dt, 4, x + (size_t)t * K, K, w, r, y + (size_t)t * ldy, ldy, bias);
	for (; t < T; t++)
		for (int r = r0; r < r1; r++)
			tile16(dt, 1, x + (size_t)t * K, K, w, r, y + (size_t)t * ldy, ldy, bias);
}

static void rows_avx512(enum dtype dt, const float *x, int T, int K, const uint8_t *w, int r0,
			int r1, float *y, int ldy, const float *bias)
{
	switch (dt) {
	case DT_BF16:
		rows16(DT_BF16, x, T, K, w, r0, r1, y, ldy, bias);
		break;
	case DT_F16:
		rows16(DT_F16, x, T, K, w, r0, r1, y, ldy, bias);
		break;
	default:
		rows16(DT_F32, x, T, K, w, r0, r1, y, ldy, bias);
		break;
	}
}

static float dot_avx512(const float *a, const float *b, int n)
{
	__m512 acc = _mm512_setzero_ps();
	int i = 0;
	for (; i + 16 <= n; i += 16)
		acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
	float s = _mm512_reduce_add_ps(acc);
	for (; i < n; i++)
		s += a[i] * b[i];
	return s;
}

static void axpy_avx512(float *y, float a, const float *x, int n)
{
	__m512 av = _mm512_set1_ps(a);
	int i = 0;
	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i),
							_mm512_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] += a * x[i];
}

#pragma GCC pop_options

/* ---- AVX2 --------------------------------------------------------------- */

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

static ALWAYS_INLINE __m256 w8_load(enum dtype dt, const uint8_t *w, size_t i)
{
	switch (dt) {
	case DT_BF16:
		return _mm256_castsi256_ps(_mm256_slli_epi32(
			_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + 2 * i))), 16));
	case DT_F16:
		return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * i)));
	default:
		return _mm256_loadu_ps((const float *)(w + 4 * i));
	}
}

static ALWAYS_INLINE float hsum8(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* As tile16 with 8 lanes; AVX2 has 16 vector registers, so C <= 2. */
static ALWAYS_INLINE void tile8(enum dtype dt, int C, const float *x, int K, const uint8_t *w,
				int r, float *y, int ldy, const float *bias)
{
	__m256 acc[2][NACC];
#pragma GCC unroll 4
	for (int j = 0; j < C; j++)
#pragma GCC unroll 4
		for (int a = 0; a < NACC; a++)
			acc[j][a] = _mm256_setzero_ps();
	size_t row = (size_t)r * K;
	int k = 0;
	for (; k + 8 * NACC <= K; k += 8 * NACC) {
#pragma GCC unroll 4
		for (int a = 0; a < NACC; a++) {
			__m256 wv = w8_load(dt, w, row + k + 8 * a);
#pragma GCC unroll 4
			for (int j = 0; j < C; j++)
				acc[j][a] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)j * K + k + 8 * a),
							    acc[j][a]);
		}
	}
	/* The blocks left over: at most NACC - 1, each to its accumulator. */
#pragma GCC unroll 4
	for (int a = 0; a < NACC - 1; a++) {
		if (k + 8 > K)
			break;
		__m256 wv = w8_load(dt, w, row + k);
#pragma GCC unroll 4
		for (int j = 0; j < C; j++)
			acc[j][a] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)j * K + k), acc[j][a]);
		k += 8;
	}
#pragma GCC unroll 4
	for (int j = 0; j < C; j++) {
		__m256 t = _mm256_add_ps(_mm256_add_ps(acc[j][0], acc[j][1]),
					 _mm256_add_ps(acc[j][2], acc[j][3]));
		float s = hsum8(t);
		for (int kk = k; kk < K; kk++)
			s += dtype_load_f32(dt, w, row + kk) * x[(size_t)j * K + kk];
		y[(size_t)j * ldy + r] = s + (bias ? bias[r] : 0.0f);
	}
}

static ALWAYS_INLINE void rows8(enum dtype dt, const float *x, int T, int K, const uint8_t *w,
				int r0, int r1, float *y, int ldy, const float *bias)
{
	int t = 0;
	for (; t + 2 <= T; t += 2)
		for (int r = r0; r < r1; r++)
			tile8(dt, 2, x + (size_t)t * K, K, w, r, y + (size_t)t * ldy, ldy, bias);
	for (; t < T; t++)
		for (int r = r0; r < r1; r++)
			tile8(dt, 1, x + (size_t)t * K, K, w, r, y + (size_t)t * ldy, ldy, bias);
}

static void rows_avx2(enum dtype dt, const float *x, int T, int K, const uint8_t *w, int r0,
		      int r1, float *y, int ldy, const float *bias)
{
	switch (dt) {
	case DT_BF16:
		rows8(DT_BF16, x, T, K, w, r0, r1, y, ldy, bias);
		break;
	case DT_F16:
		rows8(DT_F16, x, T, K, w, r0, r1, y, ldy, bias);
		break;
	default:
		rows8(DT_F32, x, T, K, w, r0, r1, y, ldy, bias);
		break;
	}
}

static float dot_avx2(const float *a, const float *b, int n)
{
	__m256 acc = _mm256_setzero_ps();
	int i = 0;
	for (; i + 8 <= n; i += 8)
		acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
	float s = hsum8(acc);
	for (; i < n; i++)
		s += a[i] * b[i];
	return s;
}

static void axpy_avx2(float *y, float a, const float *x, int n)
{
	__m256 av = _mm256_set1_ps(a);
	int i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i),
							_mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] += a * x[i];
}

#pragma GCC pop_options

/* ---- dispatch ----------------------------------------------------------- */

static struct {
	const char *name;
	rows_fn rows;
	dot_fn dot;
	axpy_fn axpy;
} isa;

/* F16C is not asked for: every processor with AVX2 has it (and clang's
 * __builtin_cpu_supports does not know its name). */
static bool cpu_has(const char *name)
{
	__builtin_cpu_init();
	if (strcmp(name, "avx512") == 0)
		return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
		       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
	if (strcmp(name, "avx2") == 0)
		return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
	return strcmp(name, "generic") == 0;
}

int cpu_isa_select(const char *name)
{
	if (!cpu_has(name))
		return -ENOTSUP;
	if (strcmp(name, "avx512") == 0)
		isa.name = "avx512", isa.dot = dot_avx512, isa.axpy = axpy_avx512, isa.rows = rows_avx512;
	else if (strcmp(name, "avx2") == 0)
		isa.name = "avx2", isa.dot = dot_avx2, isa.axpy = axpy_avx2, isa.rows = rows_avx2;
	else
		isa.name = "generic", isa.dot = dot_generic, isa.axpy = axpy_generic,
		isa.rows = rows_generic;
	return 0;
}

static void isa_pick(void)
{
	if (isa.rows)
		return;
	if (cpu_isa_select("avx512") < 0 && cpu_isa_select("avx2") < 0)
		cpu_isa_select("generic");
}

const char *cpu_isa(void)
{
	isa_pick();
	return isa.name;
}

float cpu_dot(const float *a, const float *b, int n)
{
	isa_pick();
	return isa.dot(a, b, n);
}

void cpu_axpy(float *y, float a, const float *x, int n)
{
	isa_pick();
	isa.axpy(y, a, x, n);
}

struct mm_task {
	const float *x;
	int T;
	const struct mm_job *jobs;
	int n_jobs;
};

/* Each thread takes one contiguous share of every job's rows, so that it
 * reads the weights as a few long streams, which the hardware prefetchers
 * follow best. */
static void mm_worker(void *arg, int tid, int nt)
{
	struct mm_task *mt = arg;
	for (int j = 0; j < mt->n_jobs; j++) {
		const struct mm_job *job = &mt->jobs[j];
		int rows = job->w->rows;
		int r0 = (int)((long)rows * tid / nt), r1 = (int)((long)rows * (tid + 1) / nt);
		/* In chunks, so that for a batch of tokens a chunk's rows stay in
		 * L2 while every group of four tokens passes over them. */
		for (int r = r0; r < r1; r += ROWS_PER_CHUNK)
			isa.rows(job->w->dtype, mt->x, mt->T, job->w->cols, job->w->data, r,
				 r + ROWS_PER_CHUNK < r1 ? r + ROWS_PER_CHUNK : r1, job->y,
				 job->ldy ? job->ldy : rows, job->bias);
	}
}

void cpu_matmul(struct tpool *tp, const float *x, int T, const struct mm_job *jobs, int n_jobs)
{
	isa_pick();
	assert(n_jobs >= 1);
	struct mm_task mt = {.x = x, .T = T, .jobs = jobs, .n_jobs = n_jobs};
	tp_run(tp, mm_worker, &mt);
}
