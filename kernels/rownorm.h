// RMSNorm's statistics as every kernel takes them (C++, the .cu files):
// the norm kernel and the matrix product that does a norm in its
// prologue (cuda_dgemm_norm) get the same bits from these, whatever their
// block sizes.
#pragma once

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

// One value's square into a lane's sum, in the one order every kernel uses.
__device__ __forceinline__ float sq_add(float ss, float v)
{
	return __fmaf_rn(v, v, ss);
}

__device__ __forceinline__ float sq_add4(float ss, float4 v)
{
	return sq_add(sq_add(sq_add(sq_add(ss, v.x), v.y), v.z), v.w);
}

// A row's sum of squares is taken in NORM_SEGS segments of contiguous
// quads (values where h % 4 != 0), a warp each: lane L adds the squares of
// the segment's units L, L + 32, ... in order, a fixed butterfly adds the
// lanes, and the segments' sums are added in their order (row_seg_total).
#define NORM_SEGS 4

__device__ __forceinline__ int row_units(int h)
{
	return h % 4 == 0 ? h / 4 : h;
}

// Units [*lo, *hi) of segment seg.
__device__ __forceinline__ void row_seg(int h, int seg, int *lo, int *hi)
{
	int u = row_units(h), per = (u + NORM_SEGS - 1) / NORM_SEGS;
	*lo = min(u, seg * per), *hi = min(u, (seg + 1) * per);
}

// Segment seg's sum of squares of row x, in every lane of the warp.
__device__ __forceinline__ float row_seg_sumsq(const float *__restrict__ x, int h, int seg, int lane)
{
	int lo, hi;
	row_seg(h, seg, &lo, &hi);
	float ss = 0;
	if (h % 4 == 0) {
		const float4 *x4 = reinterpret_cast<const float4 *>(x);
#pragma unroll 4
		for (int i = lo + lane; i < hi; i += 32)
			ss = sq_add4(ss, x4[i]);
	} else {
		for (int i = lo + lane; i < hi; i += 32)
			ss = sq_add(ss, x[i]);
	}
	return warp_sum(ss);
}

__device__ __forceinline__ float row_seg_total(const float part[NORM_SEGS])
{
	float ss = part[0];
#pragma unroll
	for (int s = 1; s < NORM_SEGS; s++)
		ss += part[s];
	return ss;
}

__device__ __forceinline__ float row_inv_rms(float ss, int h, float eps)
{
	return 1.0f / sqrtf(ss / (float)h + eps);
}

// Value v of the row, normalized by inv and weighted by w, as the product reads it.
__device__ __forceinline__ __nv_bfloat16 row_normed(float v, float inv, float w)
{
	return __float2bfloat16(__fmul_rn(w, __fmul_rn(v, inv)));
}
