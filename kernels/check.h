// Checking CUDA and cuBLAS calls inside kernels/: every call's result is
// looked at, and a failure says the expression, the file and the line.
// Host code only (C++). Runs in the worker's engine thread.
#ifndef EMBER_CUDA_CHECK_H
#define EMBER_CUDA_CHECK_H

extern "C" {
#include "../engine/common.h"
}

#include <cublasLt.h>
#include <cuda_runtime.h>

// 0 when e (or s) says success; else writes "file:line: expr: what went
// wrong" into err and returns -ENOMEM for an allocation that failed, -EIO
// otherwise.
int cuda_check(char *err, cudaError_t e, const char *expr, const char *file, int line);
int cuda_check(char *err, cublasStatus_t s, const char *expr, const char *file, int line);

// In a function that returns int and has char *err: return the failure.
#define CUDA_CHECK(expr)                                                                  \
	do {                                                                              \
		int rc_ = cuda_check(err, (expr), #expr, __FILE__, __LINE__);             \
		if (rc_ < 0)                                                              \
			return rc_;                                                       \
	} while (0)
#define CUBLAS_CHECK(expr) CUDA_CHECK(expr)
// In a constructor with int rc, char *err and a fail: label.
#define CUDA_CHECK_GOTO(expr)                                                             \
	do {                                                                              \
		if ((rc = cuda_check(err, (expr), #expr, __FILE__, __LINE__)) < 0)        \
			goto fail;                                                        \
	} while (0)
#define CUBLAS_CHECK_GOTO(expr) CUDA_CHECK_GOTO(expr)

#endif
