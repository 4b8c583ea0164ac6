// The matrix products of the CUDA backend through cublasLt, with a plan
// (layouts and the heuristic's algorithm) cached per shape: Y(t, n) f32 =
// X(t, k) bf16 . W(n, k)^T bf16 (+ bias(n) f32 in the epilogue), FP32
// accumulation. Host code (C++); runs in the worker's engine thread.
#ifndef EMBER_CUDA_GEMM_H
#define EMBER_CUDA_GEMM_H

extern "C" {
#include "../engine/common.h"
}

#include <cublasLt.h>
#include <cuda_runtime.h>

struct gemm_plan;

struct gemm_plans {
	cublasLtHandle_t lt;
	cublasLtMatmulDesc_t desc, desc_bias;
	void *ws;              // cublasLt's workspace, ws_bytes on the device
	size_t ws_bytes;
	struct gemm_plan *plans; // (GEMM_PLANS) open addressing by shape
	cudaStream_t st;
};

// Makes the handle, the two descriptors and the workspace for products
// queued on st. Returns 0 or a negative errno with err set; gemm_destroy
// frees what was made either way.
int gemm_create(struct gemm_plans *g, cudaStream_t st, char *err);
void gemm_destroy(struct gemm_plans *g);

// Queues y = x . w^T (+ bias) on g's stream, planning the shape (n, k, t)
// the first time it is seen (outside a graph capture). Returns 0 or -EIO
// / -ENOMEM with err set.
int gemm_run(struct gemm_plans *g, float *y, const uint16_t *x, const uint16_t *w,
	     const float *bias, int n, int k, int t, char *err);

#endif
