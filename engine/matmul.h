/* Matrix products of the CPU backend: activations (f32) times a weight
 * matrix stored in the model file (BF16, F16 or F32), and the small vector
 * helpers attention needs. AVX-512 or AVX2 when the processor has them,
 * plain C otherwise, chosen at run time. Runs in the engine thread and
 * its pool. */
#ifndef EMBER_MATMUL_H
#define EMBER_MATMUL_H

#include "model.h"
#include "threads.h"

/* One product of a batch: y (T, w->rows) = x (T, w->cols) * w^T + bias. */
struct mm_job {
	const struct wdesc *w; /* without scales */
	const float *bias;     /* (w->rows) or NULL */
	float *y;              /* (T, w->rows) f32, row stride ldy */
	int ldy;               /* 0: w->rows */
};

/* Runs n_jobs products that share the input x (T, cols) f32 on the pool's
 * threads. Each output element is one dot product whose order of operations
 * depends only on cols, never on T, the job list or the thread count, so a
 * token's result does not depend on the batch it runs in. */
void cpu_matmul(struct tpool *tp, const float *x, int T, const struct mm_job *jobs, int n_jobs);

/* Dot product of two f32 vectors of n elements, with a fixed order of
 * operations for a given n. */
float cpu_dot(const float *a, const float *b, int n);

/* y += a * x over n elements. */
void cpu_axpy(float *y, float a, const float *x, int n);

/* Which kernels are in use: "avx512", "avx2" or "generic" (the best the
 * processor has, unless cpu_isa_select chose). */
const char *cpu_isa(void);

/* Uses the kernels called name from now on, in every backend of the
 * process; for tests and benchmarks. Returns -ENOTSUP when the processor
 * lacks them. Call it while no forward pass runs. */
int cpu_isa_select(const char *name);

#endif
