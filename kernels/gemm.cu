// cublasLt plans (gemm.h). cublasLt is column-major: Y^T (n, t) = W^T^T
// ... that is A = W as (k, n) transposed, B = X as (k, t), C = Y^T as (n, t).
#include "gemm.h"

#include "check.h"

#include <errno.h>
#include <stdlib.h>

#define GEMM_PLANS 4096

struct gemm_plan {
	int n, k, t, bias;
	bool used;
	cublasLtMatrixLayout_t a, b, c;
	cublasLtMatmulAlgo_t algo;
};

int gemm_create(struct gemm_plans *g, cudaStream_t st, char *err)
{
	*g = (struct gemm_plans){};
	g->st = st;
	g->plans = (struct gemm_plan *)calloc(GEMM_PLANS, sizeof *g->plans);
	if (!g->plans)
		return ember_err(err, -ENOMEM, "out of memory");
	cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
	cudaDataType_t sc = CUDA_R_32F;
	cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
	cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
	CUBLAS_CHECK(cublasLtCreate(&g->lt));
	CUBLAS_CHECK(cublasLtMatmulDescCreate(&g->desc, ct, sc));
	CUBLAS_CHECK(cublasLtMatmulDescCreate(&g->desc_bias, ct, sc));
	cublasLtMatmulDesc_t ds[2] = {g->desc, g->desc_bias};
	for (int i = 0; i < 2; i++) {
		CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(ds[i], CUBLASLT_MATMUL_DESC_TRANSA, &ta,
							    sizeof ta));
		CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(ds[i], CUBLASLT_MATMUL_DESC_TRANSB, &tb,
							    sizeof tb));
	}
	CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(g->desc_bias, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep,
						    sizeof ep));
	g->ws_bytes = (size_t)32 << 20;
	CUDA_CHECK(cudaMalloc(&g->ws, g->ws_bytes));
	return 0;
}

void gemm_destroy(struct gemm_plans *g)
{
	// Destruction frees; nothing it could report would change what follows.
	if (g->plans) {
		for (int i = 0; i < GEMM_PLANS; i++)
			if (g->plans[i].used) {
				(void)cublasLtMatrixLayoutDestroy(g->plans[i].a);
				(void)cublasLtMatrixLayoutDestroy(g->plans[i].b);
				(void)cublasLtMatrixLayoutDestroy(g->plans[i].c);
			}
		free(g->plans);
	}
	if (g->ws)
		(void)cudaFree(g->ws);
	if (g->desc)
		(void)cublasLtMatmulDescDestroy(g->desc);
	if (g->desc_bias)
		(void)cublasLtMatmulDescDestroy(g->desc_bias);
	if (g->lt)
		(void)cublasLtDestroy(g->lt);
	*g = (struct gemm_plans){};
}

// Makes plan p for the shape: its layouts and the heuristic's best
// algorithm; p is left unused on failure.
static int plan(struct gemm_plans *g, struct gemm_plan *p, cublasLtMatmulDesc_t desc, int n, int k,
		int t, bool bias, char *err)
{
	cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
	cublasLtMatmulPreference_t pref = nullptr;
	cublasLtMatmulHeuristicResult_t r;
	int found = 0, rc = 0;
	CUBLAS_CHECK_GOTO(cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, k, n, k));
	CUBLAS_CHECK_GOTO(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, k, t, k));
	CUBLAS_CHECK_GOTO(cublasLtMatrixLayoutCreate(&c, CUDA_R_32F, n, t, n));
	CUBLAS_CHECK_GOTO(cublasLtMatmulPreferenceCreate(&pref));
	CUBLAS_CHECK_GOTO(cublasLtMatmulPreferenceSetAttribute(
		pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g->ws_bytes, sizeof g->ws_bytes));
	CUBLAS_CHECK_GOTO(
		cublasLtMatmulAlgoGetHeuristic(g->lt, desc, a, b, c, c, pref, 1, &r, &found));
	if (found == 0) {
		rc = ember_err(err, -EIO, "cublasLt has no algorithm for (%d x %d) . (%d x %d)^T", t, k,
			       n, k);
		goto fail;
	}
	(void)cublasLtMatmulPreferenceDestroy(pref);
	*p = (struct gemm_plan){n, k, t, bias, true, a, b, c, r.algo};
	return 0;
fail: // freeing what was made; its failures would add nothing to err
	if (pref)
		(void)cublasLtMatmulPreferenceDestroy(pref);
	if (c)
		(void)cublasLtMatrixLayoutDestroy(c);
	if (b)
		(void)cublasLtMatrixLayoutDestroy(b);
	if (a)
		(void)cublasLtMatrixLayoutDestroy(a);
	return rc;
}

int gemm_run(struct gemm_plans *g, float *y, const uint16_t *x, const uint16_t *w,
	     const float *bias, int n, int k, int t, char *err)
{
	unsigned h = ((unsigned)n * 2654435761u) ^ ((unsigned)k * 40503u) ^ ((unsigned)t * 97u) ^
		     (bias ? 0x5bd1e995u : 0);
	struct gemm_plan *p = nullptr;
	for (unsigned probe = 0; probe < GEMM_PLANS; probe++) {
		struct gemm_plan *q = &g->plans[(h + probe) % GEMM_PLANS];
		if (!q->used || (q->n == n && q->k == k && q->t == t && q->bias == (bias != nullptr))) {
			p = q;
			break;
		}
	}
	if (!p)
		return ember_err(err, -ENOMEM, "cublasLt: too many matrix shapes");
	cublasLtMatmulDesc_t desc = bias ? g->desc_bias : g->desc;
	if (!p->used) {
		int rc = plan(g, p, desc, n, k, t, bias != nullptr, err);
		if (rc < 0)
			return rc;
	}
	if (bias)
		CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
							    &bias, sizeof bias));
	const float one = 1.0f, zero = 0.0f;
	CUBLAS_CHECK(cublasLtMatmul(g->lt, desc, &one, w, p->a, x, p->b, &zero, y, p->c, y, p->c,
				    &p->algo, g->ws, g->ws_bytes, g->st));
	return 0;
}
