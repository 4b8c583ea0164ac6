// The decode matrix product (ops.h, cuda_dgemm): Y(t, n) = X(t, k) . W(n, k)^T
// on the tensor cores, FP32 accumulation, with the bias and the next op's
// epilogue fused (the residual add, or SwiGLU).
//
// Up to DG_WARP_ROWS rows of X, a warp owns a tile of 16 rows of W and
// takes its k in chunks of 32 straight from memory, the weights streamed
// once: each thread loads 16 bytes (8 values of k) of two rows of the tile
// and of one row of X, and two mma.m16n8k16 consume them. The k within a
// chunk is permuted (a thread's 8 consecutive values stand for the columns
// 2q, 2q+1, 2q+8, 2q+9 of one mma and of the next), the same way for W and
// X, so that every load is 16 bytes wide and the dot products are
// unchanged. Rows of X go 8 to an mma, 16 at most per weight read.
//
// A product that reads a norm's output can take the norm in (cuda_dgemm_norm,
// one row): each block makes its X in shared memory from the residual
// stream, as the norm kernel would (rownorm.h), and the norm's launch goes.
//
// More rows than that take the tiled kernel: a block stages 64 rows of W
// and 64 or 128 rows of X in shared memory, chunk by chunk (cp.async, four
// stages), and each warp does the same mma on the same 16-byte pieces for
// two tiles of W and 64 rows of X.
//
// Batch-invariant by construction: k is cut into `split` contiguous runs of
// chunks (a warp each in the first kernel, a block each in the tiled one);
// an output's sum is each run's chunks in ascending order, mma by mma, from
// zero, then the runs added in their order to the first (in shared memory,
// or through `work` and dg_reduce), then the bias and the epilogue. How k is
// cut depends on (n, k) alone. Nothing depends on t, on the row's place in
// the batch or on its neighbours (an mma's column is computed from that
// column alone), so a row's result is the same bits whatever else runs with
// it and whichever kernel runs it.
#include "ops.h"
#include "launch.h"

#include <cuda_bf16.h>

#include "rownorm.h"

namespace {

#define DG_WARPS_MAX 16
#ifndef DG_TARGET_WARPS
#define DG_TARGET_WARPS 2048 // warps that keep enough loads in flight on a GPU of ~132 SMs
#endif
#ifndef DG_RUN_MIN
#define DG_RUN_MIN 4 // chunks a run has at least
#endif
#ifndef DG_U
#define DG_U 4 // chunks the first kernel loads ahead
#endif
#define DG_WARP_ROWS 16      // rows of X the first kernel takes; the tiled kernel more
#define TL_TILES 4           // the tiled kernel's tiles of W (16 rows each) per block
#define TL_STAGES 4

struct dg_args {
	const uint16_t *w, *x;
	const float *bias;
	float *y;       // (t, n); the residual it adds to for DGEMM_RESID
	uint16_t *act;  // (t, n / 2) bf16 for DGEMM_SWIGLU
	float *work;    // (split, t, n): the runs' sums, when the tiled kernel splits k
	int n, k, t, split;
	// cuda_dgemm_norm: X is RMSNorm(xf rows (xrows[r] or r), nw, eps)
	const float *xf, *nw;
	const int32_t *xrows;
	float eps;
};

__device__ __forceinline__ void mma_bf16(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
					 uint32_t a3, uint32_t b0, uint32_t b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
		     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// A weight's 16 bytes, read once: not kept in L1.
__device__ __forceinline__ uint4 ld_weight(const uint16_t *p)
{
	uint4 v;
	asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
	    : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
	    : "l"(p));
	return v;
}

__device__ __forceinline__ uint4 ld_act(const uint16_t *p)
{
	return __ldg(reinterpret_cast<const uint4 *>(p));
}

// The two mma of one chunk: W rows lo and hi, X row b.
__device__ __forceinline__ void mma_chunk(float c[4], uint4 lo, uint4 hi, uint4 b)
{
	mma_bf16(c, lo.x, hi.x, lo.y, hi.y, b.x, b.y);
	mma_bf16(c, lo.z, hi.z, lo.w, hi.w, b.z, b.w);
}

// The first chunk of run s of S over nch chunks.
__device__ __forceinline__ int dgemm_run_start(int s, int S, int nch)
{
	return (int)((long long)s * nch / S);
}

// The rows of W behind row g of a tile (g < 8): lo is the tile's row g and
// hi its row g + 8, or for SwiGLU the gate row and the up row of the
// tile's 8 outputs.
template <int EPI> struct tile_rows {
	int lo, hi;
	bool ok_lo, ok_hi;
	__device__ tile_rows(const dg_args &a, int tile, int g)
	{
		if (EPI == DGEMM_SWIGLU) {
			lo = tile * 8 + g;
			hi = a.n / 2 + lo;
			ok_lo = ok_hi = lo < a.n / 2;
		} else {
			lo = tile * 16 + g;
			hi = lo + 8;
			ok_lo = lo < a.n;
			ok_hi = hi < a.n;
		}
	}
};

// The output of X row r for W rows lo and hi, their sums over k being vl
// and vh: the bias, then the epilogue.
template <int EPI>
__device__ __forceinline__ void dg_store(const dg_args &a, const tile_rows<EPI> &tr, int r, float vl,
					 float vh)
{
	if (a.bias) {
		vl += tr.ok_lo ? a.bias[tr.lo] : 0;
		vh += tr.ok_hi ? a.bias[tr.hi] : 0;
	}
	if (EPI == DGEMM_SWIGLU) {
		if (tr.ok_lo)
			reinterpret_cast<__nv_bfloat16 *>(a.act)[(size_t)r * (a.n / 2) + tr.lo] =
				__float2bfloat16(vl / (1.0f + expf(-vl)) * vh);
		return;
	}
	float *yr = a.y + (size_t)r * a.n;
	if (tr.ok_lo)
		yr[tr.lo] = EPI == DGEMM_RESID ? yr[tr.lo] + vl : vl;
	if (tr.ok_hi)
		yr[tr.hi] = EPI == DGEMM_RESID ? yr[tr.hi] + vh : vh;
}

// acc: rows lo (0, 1) and hi (2, 3) of W for rows 2q, 2q + 1 of the 8 rows
// of X from row0: stored, or for a split tiled product its run's sums to
// work (dg_reduce finishes).
template <int EPI>
__device__ __forceinline__ void dg_finish(const dg_args &a, const tile_rows<EPI> &tr, int row0,
					  int q, const float acc[4], int run)
{
	for (int e = 0; e < 2; e++) {
		int r = row0 + q * 2 + e;
		if (r >= a.t)
			continue;
		if (run < 0) {
			dg_store<EPI>(a, tr, r, acc[e], acc[2 + e]);
			continue;
		}
		float *wr = a.work + ((size_t)run * a.t + r) * a.n;
		if (tr.ok_lo)
			wr[tr.lo] = acc[e];
		if (tr.ok_hi)
			wr[tr.hi] = acc[2 + e];
	}
}

// NT mma columns (8 rows of X each) per weight read; EPI the epilogue;
// NORM (NT 1): the block first makes X, RMSNorm of a.xf's rows, in shared
// memory, to the bits the norm kernel would write (rownorm.h).
template <int NT, int EPI, bool NORM>
__global__ void __launch_bounds__(DG_WARPS_MAX * 32) dgemm_kernel(dg_args a)
{
	constexpr int U = DG_U;
	__shared__ float red[DG_WARPS_MAX * 4 * 32];
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
	int S = a.split, tile = blockIdx.x * ((blockDim.x >> 5) / S) + warp / S, s = warp % S;
	tile_rows<EPI> tr(a, tile, g);
	const uint16_t *wl = a.w + (size_t)(tr.ok_lo ? tr.lo : 0) * a.k + q * 8;
	const uint16_t *wh = a.w + (size_t)(tr.ok_hi ? tr.hi : 0) * a.k + q * 8;
	int row0 = blockIdx.y * 8 * NT;
	extern __shared__ __align__(16) uint16_t xs[]; // NORM: (t, k + 8) bf16
	int xs_row = a.k + 8; // a row's 16 bytes further: fewer bank conflicts
	const uint16_t *xr[NT];
	bool okx[NT];
#pragma unroll
	for (int j = 0; j < NT; j++) {
		int r = row0 + j * 8 + g;
		okx[j] = r < a.t;
		xr[j] = NORM ? xs + (size_t)(okx[j] ? r : 0) * xs_row + q * 8
			     : a.x + (size_t)(okx[j] ? r : 0) * a.k + q * 8;
	}
	float acc[NT][4];
#pragma unroll
	for (int j = 0; j < NT; j++)
		acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;
	const uint4 zero = {0, 0, 0, 0};
	int nch = (a.k + 31) / 32, c_beg = dgemm_run_start(s, S, nch),
	    c_end = dgemm_run_start(s + 1, S, nch);
	uint4 wa[U], wb[U];
	auto load_w = [&](int c0) {
#pragma unroll
		for (int u = 0; u < U; u++) {
			int c = c0 + u;
			bool in = c < c_end && c * 32 + q * 8 < a.k;
			wa[u] = in && tr.ok_lo ? ld_weight(wl + (size_t)c * 32) : zero;
			wb[u] = in && tr.ok_hi ? ld_weight(wh + (size_t)c * 32) : zero;
		}
	};
	// The first weights are on their way while the kernel before ends:
	// only X and the outputs wait for it.
	pdl_start();
	load_w(c_beg);
	pdl_wait();
	if (NORM) {
		__shared__ float part[CUDA_DGEMM_NORM_ROWS][NORM_SEGS], inv[CUDA_DGEMM_NORM_ROWS];
		int warps = blockDim.x >> 5;
		for (int p = warp; p < a.t * NORM_SEGS; p += warps) { // (row, segment) a warp
			int r = p / NORM_SEGS, sg = p % NORM_SEGS;
			const float *xrow = a.xf + (size_t)(a.xrows ? a.xrows[r] : r) * a.k;
			float ss = row_seg_sumsq(xrow, a.k, sg, lane);
			if (lane == 0)
				part[r][sg] = ss;
		}
		__syncthreads();
		if (threadIdx.x < a.t)
			inv[threadIdx.x] = row_inv_rms(row_seg_total(part[threadIdx.x]), a.k, a.eps);
		__syncthreads();
		int quads = a.k / 4;
		for (int i = threadIdx.x; i < a.t * quads; i += blockDim.x) {
			int r = i / quads, c = i % quads * 4;
			const float *src = a.xf + (size_t)(a.xrows ? a.xrows[r] : r) * a.k;
			float4 v = *reinterpret_cast<const float4 *>(src + c);
			float4 w = *reinterpret_cast<const float4 *>(a.nw + c);
			__nv_bfloat16 *d = reinterpret_cast<__nv_bfloat16 *>(xs) + (size_t)r * xs_row + c;
			d[0] = row_normed(v.x, inv[r], w.x), d[1] = row_normed(v.y, inv[r], w.y);
			d[2] = row_normed(v.z, inv[r], w.z), d[3] = row_normed(v.w, inv[r], w.w);
		}
		__syncthreads();
	}
	for (int c0 = c_beg; c0 < c_end; c0 += U) {
		if (c0 != c_beg)
			load_w(c0);
		uint4 xb[U][NT];
#pragma unroll
		for (int u = 0; u < U; u++) {
			int c = c0 + u;
			bool in = c < c_end && c * 32 + q * 8 < a.k;
#pragma unroll
			for (int j = 0; j < NT; j++)
				xb[u][j] = !in || !okx[j] ? zero
					   : NORM ? *reinterpret_cast<const uint4 *>(xr[j] + (size_t)c * 32)
						  : ld_act(xr[j] + (size_t)c * 32);
		}
#pragma unroll
		for (int u = 0; u < U; u++) {
			if (c0 + u >= c_end)
				break; // the same for the whole warp
#pragma unroll
			for (int j = 0; j < NT; j++)
				mma_chunk(acc[j], wa[u], wb[u], xb[u][j]);
		}
	}
	// The warps that split k, added in their order into the first.
	if (S > 1) {
#pragma unroll
		for (int j = 0; j < NT; j++) {
			__syncthreads(); // the last column's partials are read
			if (s > 0)
				for (int i = 0; i < 4; i++)
					red[(warp * 4 + i) * 32 + lane] = acc[j][i];
			__syncthreads();
			if (s == 0)
				for (int o = 1; o < S; o++)
					for (int i = 0; i < 4; i++)
						acc[j][i] += red[((warp + o) * 4 + i) * 32 + lane];
		}
	}
	if (s > 0)
		return;
#pragma unroll
	for (int j = 0; j < NT; j++)
		dg_finish<EPI>(a, tr, row0 + j * 8, q, acc[j], -1);
}

__device__ __forceinline__ void cp16(void *dst, const void *src, bool valid)
{
	unsigned d = (unsigned)__cvta_generic_to_shared(dst);
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
		     "r"(valid ? 16 : 0));
}

// The tiled kernel: a block of 2 x WN warps for TL_TILES tiles of W (two a
// warp) and 64 WN rows of X (64 a warp), over run blockIdx.z of k.
template <int WN, int EPI>
__global__ void __launch_bounds__(64 * WN) dgemm_tiled_kernel(dg_args a)
{
	pdl_start();
	pdl_wait();
	constexpr int WR = TL_TILES * 16, XR = 64 * WN, ROWS = WR + XR; // a stage's rows of 32 k
	__shared__ __align__(16) uint16_t sm[TL_STAGES][ROWS * 32];
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
	int wm = warp & 1, wn = warp >> 1, tile0 = blockIdx.x * TL_TILES;
	int xrow0 = blockIdx.y * XR, s = blockIdx.z, S = a.split;
	int nch = (a.k + 31) / 32, c_beg = dgemm_run_start(s, S, nch),
	    c_end = dgemm_run_start(s + 1, S, nch);
	// What this thread copies each stage: 16 bytes (quad lq of the chunk)
	// of rows lr, lr + STEP, ... of the stage (W's, then X's).
	int lq = threadIdx.x & 3, lr = threadIdx.x >> 2;
	constexpr int STEP = 64 * WN / 4, LOADS = ROWS / STEP;
	const uint16_t *src[LOADS];
	bool okr[LOADS];
#pragma unroll
	for (int l = 0; l < LOADS; l++) {
		int r = lr + l * STEP;
		if (r < WR) { // W: tile r / 16, its row r % 16 (g + 8 is hi)
			tile_rows<EPI> tr(a, tile0 + r / 16, r % 8);
			int wrow = r % 16 < 8 ? tr.lo : tr.hi;
			okr[l] = r % 16 < 8 ? tr.ok_lo : tr.ok_hi;
			src[l] = a.w + (size_t)(okr[l] ? wrow : 0) * a.k + lq * 8;
		} else {
			int xr = xrow0 + r - WR;
			okr[l] = xr < a.t;
			src[l] = a.x + (size_t)(okr[l] ? xr : 0) * a.k + lq * 8;
		}
	}
	auto load = [&](int stage, int c) {
		bool in = c * 32 + lq * 8 < a.k;
#pragma unroll
		for (int l = 0; l < LOADS; l++)
			cp16(&sm[stage][(lr + l * STEP) * 32 + lq * 8], src[l] + (size_t)c * 32,
			     in && okr[l]);
	};
#pragma unroll
	for (int i = 0; i < TL_STAGES - 1; i++) {
		if (c_beg + i < c_end)
			load(i, c_beg + i);
		asm volatile("cp.async.commit_group;\n");
	}
	float acc[2][8][4];
#pragma unroll
	for (int i = 0; i < 2; i++)
#pragma unroll
		for (int j = 0; j < 8; j++)
			acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0;
	for (int c = c_beg; c < c_end; c++) {
		asm volatile("cp.async.wait_group %0;\n" ::"n"(TL_STAGES - 2));
		__syncthreads();
		int ahead = c + TL_STAGES - 1;
		if (ahead < c_end)
			load((ahead - c_beg) % TL_STAGES, ahead);
		asm volatile("cp.async.commit_group;\n");
		const uint16_t *st = sm[(c - c_beg) % TL_STAGES];
		uint4 wlo[2], whi[2];
#pragma unroll
		for (int i = 0; i < 2; i++) {
			int r = (wm * 2 + i) * 16 + g;
			wlo[i] = *reinterpret_cast<const uint4 *>(st + r * 32 + q * 8);
			whi[i] = *reinterpret_cast<const uint4 *>(st + (r + 8) * 32 + q * 8);
		}
#pragma unroll
		for (int j = 0; j < 8; j++) {
			uint4 b = *reinterpret_cast<const uint4 *>(st + (WR + wn * 64 + j * 8 + g) * 32 +
								    q * 8);
#pragma unroll
			for (int i = 0; i < 2; i++)
				mma_chunk(acc[i][j], wlo[i], whi[i], b);
		}
	}
	asm volatile("cp.async.wait_group 0;\n");
#pragma unroll
	for (int i = 0; i < 2; i++) {
		tile_rows<EPI> tr(a, tile0 + wm * 2 + i, g);
#pragma unroll
		for (int j = 0; j < 8; j++)
			dg_finish<EPI>(a, tr, xrow0 + wn * 64 + j * 8, q, acc[i][j], S > 1 ? s : -1);
	}
}

// A split tiled product's end: each output's runs added in their order,
// then the bias and the epilogue, as the first kernel does.
template <int EPI> __global__ void dg_reduce_kernel(dg_args a)
{
	pdl_start();
	pdl_wait();
	int on = EPI == DGEMM_SWIGLU ? a.n / 2 : a.n;
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= (size_t)a.t * on)
		return;
	int r = (int)(i / on), o = (int)(i % on);
	// o as row g of its tile: lo, and for SwiGLU its up row as hi
	tile_rows<EPI> tr(a, EPI == DGEMM_SWIGLU ? o / 8 : o / 16, o % 8);
	bool hi = EPI != DGEMM_SWIGLU && o % 16 >= 8;
	const float *w = a.work + (size_t)r * a.n;
	size_t run = (size_t)a.t * a.n;
	int c0 = hi ? tr.hi : tr.lo;
	float v0 = w[c0], v1 = EPI == DGEMM_SWIGLU ? w[tr.hi] : 0;
	for (int s = 1; s < a.split; s++) {
		v0 += w[s * run + c0];
		if (EPI == DGEMM_SWIGLU)
			v1 += w[s * run + tr.hi];
	}
	if (EPI == DGEMM_SWIGLU) {
		dg_store<EPI>(a, tr, r, v0, v1);
	} else { // only the one output: the other side's rows left out
		tile_rows<EPI> one = tr;
		(hi ? one.ok_lo : one.ok_hi) = false;
		dg_store<EPI>(a, one, r, v0, v0);
	}
}

// How many warps split k for a product of n rows of k: enough warps for
// the GPU, each with a few chunks. A function of the shape alone.
int dgemm_split(int tiles, int k)
{
	int nch = (k + 31) / 32, s = 1;
	while (s < DG_WARPS_MAX && tiles * s < DG_TARGET_WARPS && nch >= DG_RUN_MIN * 2 * s)
		s *= 2;
	return s;
}

int dgemm_tiles(int n, int epi)
{
	return epi == DGEMM_SWIGLU ? (n / 2 + 7) / 8 : (n + 15) / 16;
}

template <int EPI> cudaError_t dg_launch(const dg_args &a, int tiles, cudaStream_t st)
{
	cudaError_t ce;
	if (a.t > DG_WARP_ROWS) {
		int wn = a.t <= 64 ? 1 : 2;
		dim3 grid((unsigned)((tiles + TL_TILES - 1) / TL_TILES),
			  (unsigned)((a.t + 64 * wn - 1) / (64 * wn)), (unsigned)a.split);
		ce = wn == 1 ? launch(dgemm_tiled_kernel<1, EPI>, grid, 64, 0, st, a)
			     : launch(dgemm_tiled_kernel<2, EPI>, grid, 128, 0, st, a);
		if (ce != cudaSuccess || a.split == 1)
			return ce;
		size_t outs = (size_t)a.t * (EPI == DGEMM_SWIGLU ? a.n / 2 : a.n);
		return launch(dg_reduce_kernel<EPI>, (unsigned)((outs + 255) / 256), 256, 0, st, a);
	}
	// Small blocks, so that a product's blocks fit the GPU at once (no
	// second wave of a few blocks); a tile's runs share one.
	int warps = a.split > 4 ? a.split : 4, per = warps / a.split;
	dim3 grid((unsigned)((tiles + per - 1) / per));
	if (a.xf) // t <= CUDA_DGEMM_NORM_ROWS
		return launch(dgemm_kernel<1, EPI, true>, grid, warps * 32, (size_t)a.t * (a.k + 8) * 2,
			      st, a);
	return a.t <= 8 ? launch(dgemm_kernel<1, EPI, false>, grid, warps * 32, 0, st, a)
			: launch(dgemm_kernel<2, EPI, false>, grid, warps * 32, 0, st, a);
}

cudaError_t dg_run(const dg_args &a, int epi, int tiles, cudaStream_t s)
{
	switch (epi) {
	case DGEMM_RESID:
		return dg_launch<DGEMM_RESID>(a, tiles, s);
	case DGEMM_SWIGLU:
		return dg_launch<DGEMM_SWIGLU>(a, tiles, s);
	default:
		return dg_launch<DGEMM_PLAIN>(a, tiles, s);
	}
}

} // namespace

extern "C" bool cuda_dgemm_fits(int n, int k, int epi)
{
	return n > 0 && k > 0 && k % 8 == 0 && (epi != DGEMM_SWIGLU || n % 2 == 0);
}

extern "C" size_t cuda_dgemm_work(int n, int k, int t, int epi)
{
	if (!cuda_dgemm_fits(n, k, epi) || t <= DG_WARP_ROWS)
		return 0;
	int split = dgemm_split(dgemm_tiles(n, epi), k);
	return split > 1 ? (size_t)split * t * n : 0;
}

extern "C" cudaError_t cuda_dgemm(float *y, uint16_t *act, const uint16_t *x, const uint16_t *w,
				  const float *bias, int n, int k, int t, int epi, float *work,
				  size_t work_n, cudaStream_t s)
{
	if (!cuda_dgemm_fits(n, k, epi) || t < 0 || t > CUDA_DGEMM_ROWS ||
	    (epi == DGEMM_SWIGLU ? !act : !y) || work_n < cuda_dgemm_work(n, k, t, epi) ||
	    (cuda_dgemm_work(n, k, t, epi) && !work))
		return cudaErrorInvalidValue;
	if (t == 0)
		return cudaSuccess;
	int tiles = dgemm_tiles(n, epi);
	dg_args a = {w, x, bias, y, act, work, n, k, t, dgemm_split(tiles, k), nullptr, nullptr,
		     nullptr, 0};
	return dg_run(a, epi, tiles, s);
}

extern "C" bool cuda_dgemm_norm_fits(int n, int k, int t, int epi)
{
	// the rows in shared memory beside the kernel's own 8 KB, within the 48 KB a launch has
	return cuda_dgemm_fits(n, k, epi) && t <= CUDA_DGEMM_NORM_ROWS && k <= CUDA_NORM_MAX &&
	       (size_t)t * (k + 8) * 2 <= 36 * 1024;
}

extern "C" cudaError_t cuda_dgemm_norm(float *y, uint16_t *act, const float *x,
				       const int32_t *rows, const float *norm_w, float eps,
				       const uint16_t *w, const float *bias, int n, int k, int t,
				       int epi, cudaStream_t s)
{
	if (!cuda_dgemm_norm_fits(n, k, t, epi) || t < 0 || (epi == DGEMM_SWIGLU ? !act : !y) ||
	    !x || !norm_w)
		return cudaErrorInvalidValue;
	if (t == 0)
		return cudaSuccess;
	int tiles = dgemm_tiles(n, epi);
	dg_args a = {w, nullptr, bias, y, act, nullptr, n, k, t, dgemm_split(tiles, k), x, norm_w,
		     rows, eps};
	return dg_run(a, epi, tiles, s);
}
