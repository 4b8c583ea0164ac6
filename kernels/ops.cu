// The CUDA kernels of the forward pass (see ops.h), each written to be read
// beside its CPU reference in engine/cpu.c. Activations are f32 where they
// are summed (the residual stream, projections' outputs, attention's
// scores), bf16 where a matrix product reads them, as the weights are.
#include "ops.h"

#include <cuda_bf16.h>
#include <math.h>

typedef __nv_bfloat16 bf16;

static __device__ __forceinline__ float ld_bf16(const uint16_t *p, size_t i)
{
	return __bfloat162float(reinterpret_cast<const bf16 *>(p)[i]);
}

static __device__ __forceinline__ void st_bf16(uint16_t *p, size_t i, float v)
{
	reinterpret_cast<bf16 *>(p)[i] = __float2bfloat16(v);
}

static __device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

// ---- embedding ---------------------------------------------------------------

__global__ void embed_kernel(float *x, const uint16_t *embed, int h, const struct be_entry *e)
{
	int t = blockIdx.x;
	size_t base = (size_t)e[t].token * (size_t)h;
	for (int i = threadIdx.x; i < h; i += blockDim.x)
		x[(size_t)t * h + i] = ld_bf16(embed, base + i);
}

extern "C" cudaError_t cuda_embed(float *x, const uint16_t *embed, int h, const struct be_entry *e,
				  int n, cudaStream_t s)
{
	if (n > 0)
		embed_kernel<<<n, 256, 0, s>>>(x, embed, h, e);
	return cudaGetLastError();
}

// ---- RMSNorm after the residual add -------------------------------------------

__global__ void add_rmsnorm_kernel(float *x, const float *add, uint16_t *out, const float *w, int h,
				   float eps, const int32_t *rows)
{
	__shared__ float part[32];
	int r = blockIdx.x, src = rows ? rows[r] : r;
	float *xr = x + (size_t)src * h;
	const float *ar = add ? add + (size_t)src * h : nullptr;
	float ss = 0;
	for (int i = threadIdx.x; i < h; i += blockDim.x) {
		float v = xr[i] + (ar ? ar[i] : 0.0f);
		if (!rows)
			xr[i] = v;
		ss += v * v;
	}
	ss = warp_sum(ss);
	if ((threadIdx.x & 31) == 0)
		part[threadIdx.x >> 5] = ss;
	__syncthreads();
	if (threadIdx.x < 32) {
		float v = threadIdx.x < (blockDim.x + 31) / 32 ? part[threadIdx.x] : 0.0f;
		v = warp_sum(v);
		if (threadIdx.x == 0)
			part[0] = v;
	}
	__syncthreads();
	float inv = 1.0f / sqrtf(part[0] / (float)h + eps);
	for (int i = threadIdx.x; i < h; i += blockDim.x) {
		float v = rows ? xr[i] + (ar ? ar[i] : 0.0f) : xr[i];
		st_bf16(out, (size_t)r * h + i, w[i] * (v * inv));
	}
}

extern "C" cudaError_t cuda_add_rmsnorm(float *x, const float *add, uint16_t *out, const float *w,
					int h, float eps, const int32_t *rows, int n, cudaStream_t s)
{
	if (n > 0)
		add_rmsnorm_kernel<<<n, h >= 4096 ? 1024 : 256, 0, s>>>(x, add, out, w, h, eps, rows);
	return cudaGetLastError();
}

// ---- rotary embedding and the KV-cache write -----------------------------------

static __device__ __forceinline__ size_t cache_row(const struct cuda_kv &kv, int t, int pos, int kv_dim)
{
	int32_t block = kv.tables[(size_t)kv.tab[t] * kv.max_blocks + pos / KV_BLOCK];
	return ((size_t)block * KV_BLOCK + pos % KV_BLOCK) * (size_t)kv_dim;
}

__global__ void rope_kv_kernel(float *qkv, int n_heads, int n_kv_heads, int hd, const float *cosv,
			       const float *sinv, const struct be_entry *e, struct cuda_kv kv)
{
	int t = blockIdx.x, half = hd / 2, pos = e[t].pos;
	int q_dim = n_heads * hd, kv_dim = n_kv_heads * hd;
	float *row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
	const float *cs = cosv + (size_t)pos * half, *sn = sinv + (size_t)pos * half;
	size_t at = cache_row(kv, t, pos, kv_dim);
	// q and k heads: one thread per rotated pair (v[i], v[i + half])
	int pairs = (n_heads + n_kv_heads) * half;
	for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
		int head = p / half, i = p % half;
		float *v = row + (size_t)head * hd; // k heads follow the q heads
		float a = v[i], b = v[i + half];
		float ra = a * cs[i] - b * sn[i], rb = b * cs[i] + a * sn[i];
		if (head < n_heads) {
			v[i] = ra;
			v[i + half] = rb;
		} else {
			size_t o = at + (size_t)(head - n_heads) * hd;
			st_bf16(kv.k, o + i, ra);
			st_bf16(kv.k, o + i + half, rb);
		}
	}
	const float *vr = row + q_dim + kv_dim;
	for (int i = threadIdx.x; i < kv_dim; i += blockDim.x)
		st_bf16(kv.v, at + i, vr[i]);
}

extern "C" cudaError_t cuda_rope_kv(float *qkv, int n_heads, int n_kv_heads, int head_dim,
				    const float *cos, const float *sin, const struct be_entry *e,
				    int n, const struct cuda_kv *kv, cudaStream_t s)
{
	if (n > 0)
		rope_kv_kernel<<<n, 256, 0, s>>>(qkv, n_heads, n_kv_heads, head_dim, cos, sin, e, *kv);
	return cudaGetLastError();
}

// ---- SwiGLU --------------------------------------------------------------------

__global__ void swiglu_kernel(uint16_t *out, const float *gu, int inter, size_t total)
{
	for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < total;
	     k += (size_t)gridDim.x * blockDim.x) {
		size_t t = k / inter, i = k % inter;
		float g = gu[t * 2 * inter + i], u = gu[t * 2 * inter + inter + i];
		st_bf16(out, k, g / (1.0f + expf(-g)) * u);
	}
}

extern "C" cudaError_t cuda_swiglu(uint16_t *out, const float *gu, int inter, int n, cudaStream_t s)
{
	size_t total = (size_t)n * inter;
	if (total == 0)
		return cudaSuccess;
	size_t blocks = (total + 255) / 256;
	swiglu_kernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), 256, 0, s>>>(out, gu, inter, total);
	return cudaGetLastError();
}

// ---- attention -----------------------------------------------------------------

#define ATT_WARPS 4
#define ATT_GROUP 8 // most query heads per KV head
#define ATT_SPLIT_MIN 128 // positions a split reads at least

// The splits of an entry attending to len positions: a function of its own
// length alone, so that its result does not depend on the batch it is in
// (nor on how many splits the launch allowed beyond what it needs).
static __device__ __forceinline__ int entry_splits(int len, int most)
{
	int want = len / ATT_SPLIT_MIN;
	return want < 1 ? 1 : want < most ? want : most;
}

// One block per (entry, KV head, split): each warp takes every ATT_WARPS-th
// position of the split's range; a lane holds EPL dimensions of the group's
// queries and of each key and value, so that a key is read once for all
// heads that share it. Online softmax per warp, merged through shared memory.
template <int EPL>
__global__ void __launch_bounds__(ATT_WARPS * 32)
	attention_kernel(uint16_t *out, const float *qkv, int n_heads, int n_kv_heads, int hd,
			 const struct be_entry *e, const int32_t *dec, struct cuda_kv kv, float *work,
			 int most)
{
	int t = dec[blockIdx.x], kvh = blockIdx.y, sp = blockIdx.z;
	int group = n_heads / n_kv_heads, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	int q_dim = n_heads * hd, kv_dim = n_kv_heads * hd;
	int len = e[t].pos + 1;
	int splits = entry_splits(len, most);
	if (sp >= splits)
		return; // the whole block: this entry needs fewer splits
	int chunk = (len + splits - 1) / splits;
	int start = sp * chunk, end = min(len, start + chunk);
	float scale = rsqrtf((float)hd);
	const float *qrow = qkv + (size_t)t * (q_dim + 2 * kv_dim);

	float q[ATT_GROUP][EPL], acc[ATT_GROUP][EPL], m[ATT_GROUP], l[ATT_GROUP];
#pragma unroll
	for (int g = 0; g < ATT_GROUP; g++) {
		m[g] = -INFINITY;
		l[g] = 0;
#pragma unroll
		for (int j = 0; j < EPL; j++) {
			int d = lane * EPL + j;
			q[g][j] = g < group && d < hd ? qrow[(size_t)(kvh * group + g) * hd + d] * scale : 0;
			acc[g][j] = 0;
		}
	}
	for (int p = start + warp; p < end; p += ATT_WARPS) {
		size_t at = cache_row(kv, t, p, kv_dim) + (size_t)kvh * hd;
		float k[EPL], v[EPL];
#pragma unroll
		for (int j = 0; j < EPL; j++) {
			int d = lane * EPL + j;
			k[j] = d < hd ? ld_bf16(kv.k, at + d) : 0;
			v[j] = d < hd ? ld_bf16(kv.v, at + d) : 0;
		}
#pragma unroll
		for (int g = 0; g < ATT_GROUP; g++) {
			if (g >= group)
				break;
			float sc = 0;
#pragma unroll
			for (int j = 0; j < EPL; j++)
				sc += q[g][j] * k[j];
			sc = warp_sum(sc);
			float mn = fmaxf(m[g], sc), corr = __expf(m[g] - mn), w = __expf(sc - mn);
			l[g] = l[g] * corr + w;
#pragma unroll
			for (int j = 0; j < EPL; j++)
				acc[g][j] = acc[g][j] * corr + w * v[j];
			m[g] = mn;
		}
	}
	// Merge the warps: each leaves (m, l, acc) per head in shared memory.
	extern __shared__ float sm[]; // (ATT_WARPS, group, 2 + 32 * EPL)
	int stride = 2 + 32 * EPL;
#pragma unroll
	for (int g = 0; g < ATT_GROUP; g++) {
		if (g >= group)
			break;
		float *slot = sm + ((size_t)warp * group + g) * stride;
		if (lane == 0) {
			slot[0] = m[g];
			slot[1] = l[g];
		}
#pragma unroll
		for (int j = 0; j < EPL; j++)
			slot[2 + lane * EPL + j] = acc[g][j];
	}
	__syncthreads();
	for (int k = threadIdx.x; k < group * hd; k += blockDim.x) {
		int g = k / hd, d = k % hd;
		float mx = -INFINITY;
		for (int w = 0; w < ATT_WARPS; w++)
			mx = fmaxf(mx, sm[((size_t)w * group + g) * stride]);
		float sum = 0, a = 0;
		for (int w = 0; w < ATT_WARPS; w++) {
			const float *slot = sm + ((size_t)w * group + g) * stride;
			float f = slot[0] == -INFINITY ? 0 : __expf(slot[0] - mx);
			sum += slot[1] * f;
			a += slot[2 + d] * f;
		}
		int head = kvh * group + g;
		if (splits == 1) {
			st_bf16(out, (size_t)t * q_dim + (size_t)head * hd + d, a / sum);
		} else { // (entry, head, split): m, l, acc[hd]
			float *wk = work + (((size_t)t * n_heads + head) * most + sp) * (2 + hd);
			if (d == 0) {
				wk[0] = mx;
				wk[1] = sum;
			}
			wk[2 + d] = a;
		}
	}
}

// The splits of each (entry, head) into one output.
__global__ void attention_merge_kernel(uint16_t *out, const float *work, int n_heads, int hd,
				       const struct be_entry *e, const int32_t *dec, int most)
{
	int t = dec[blockIdx.x], head = blockIdx.y;
	const float *wk = work + ((size_t)t * n_heads + head) * most * (2 + hd);
	int splits = entry_splits(e[t].pos + 1, most);
	if (splits == 1)
		return; // attention_kernel wrote this entry's output itself
	float mx = -INFINITY;
	for (int s = 0; s < splits; s++)
		if (wk[(size_t)s * (2 + hd) + 1] > 0)
			mx = fmaxf(mx, wk[(size_t)s * (2 + hd)]);
	for (int d = threadIdx.x; d < hd; d += blockDim.x) {
		float sum = 0, a = 0;
		for (int s = 0; s < splits; s++) {
			const float *p = wk + (size_t)s * (2 + hd);
			if (p[1] <= 0)
				continue; // an empty split
			float f = __expf(p[0] - mx);
			sum += p[1] * f;
			a += p[2 + d] * f;
		}
		st_bf16(out, ((size_t)t * n_heads + head) * hd + d, a / sum);
	}
}

extern "C" size_t cuda_attention_work(int n, int n_heads, int head_dim, int splits)
{
	return (size_t)n * n_heads * splits * (2 + head_dim);
}

// Prefill: a tile of up to TILE_Q queries of one sequence at consecutive
// positions, for one query head, streams the sequence's keys and values
// through shared memory TILE_K positions at a time, so that each is read
// once for the whole tile rather than once per query. TILE_LANES threads
// hold a query row (every TILE_LANES-th dimension each, so that they read
// neighbouring words), with an online softmax per row and the causal mask
// of its own position; no score matrix is kept.
#define TILE_LANES 4

template <int EPL>
__global__ void __launch_bounds__(CUDA_TILE_Q * TILE_LANES)
	prefill_attention_kernel(uint16_t *out, const float *qkv, int n_heads, int n_kv_heads, int hd,
				 const struct be_entry *e, const int32_t *tiles, struct cuda_kv kv)
{
	__shared__ uint16_t ks[CUDA_TILE_K * 256], vs[CUDA_TILE_K * 256]; // (TILE_K, hd) bf16
	int first = tiles[2 * blockIdx.x], count = tiles[2 * blockIdx.x + 1], head = blockIdx.y;
	int kvh = head / (n_heads / n_kv_heads), q_dim = n_heads * hd, kv_dim = n_kv_heads * hd;
	int row = threadIdx.x / TILE_LANES, sub = threadIdx.x % TILE_LANES;
	unsigned lanes = 0xfu << ((threadIdx.x & 31) & ~(TILE_LANES - 1)); // this row's threads
	bool live = row < count;
	int t = first + (live ? row : 0), pos = e[t].pos, last = e[first + count - 1].pos;
	float scale = rsqrtf((float)hd);
	const float *qrow = qkv + (size_t)t * (q_dim + 2 * kv_dim) + (size_t)head * hd;
	float q[EPL], acc[EPL], m = -INFINITY, l = 0;
#pragma unroll
	for (int j = 0; j < EPL; j++) {
		int d = sub + TILE_LANES * j;
		q[j] = d < hd ? qrow[d] * scale : 0;
		acc[j] = 0;
	}
	for (int k0 = 0; k0 <= last; k0 += CUDA_TILE_K) { // every thread, for the barriers
		int nk = last + 1 - k0 < CUDA_TILE_K ? last + 1 - k0 : CUDA_TILE_K;
		__syncthreads(); // the last tile's keys are read
		for (int i = threadIdx.x; i < nk * hd; i += blockDim.x) {
			int p = i / hd, d = i % hd;
			size_t at = cache_row(kv, first, k0 + p, kv_dim) + (size_t)kvh * hd + d;
			ks[p * hd + d] = kv.k[at];
			vs[p * hd + d] = kv.v[at];
		}
		__syncthreads();
		if (!live)
			continue;
		int upto = pos - k0 + 1 < nk ? pos - k0 + 1 : nk; // the causal mask
		for (int p = 0; p < upto; p++) {
			float sc = 0;
#pragma unroll
			for (int j = 0; j < EPL; j++) {
				int d = sub + TILE_LANES * j;
				if (d < hd)
					sc += q[j] * ld_bf16(ks, (size_t)p * hd + d);
			}
			sc += __shfl_xor_sync(lanes, sc, 1);
			sc += __shfl_xor_sync(lanes, sc, 2);
			float mn = fmaxf(m, sc), corr = __expf(m - mn), w = __expf(sc - mn);
			l = l * corr + w;
#pragma unroll
			for (int j = 0; j < EPL; j++) {
				int d = sub + TILE_LANES * j;
				if (d < hd)
					acc[j] = acc[j] * corr + w * ld_bf16(vs, (size_t)p * hd + d);
			}
			m = mn;
		}
	}
	if (!live)
		return;
#pragma unroll
	for (int j = 0; j < EPL; j++) {
		int d = sub + TILE_LANES * j;
		if (d < hd)
			st_bf16(out, (size_t)t * q_dim + (size_t)head * hd + d, acc[j] / l);
	}
}

extern "C" int cuda_attention_plan(const struct be_entry *e, int n, bool tiles_ok, int32_t *dec,
				   int *n_dec, int32_t *tiles)
{
	int nt = 0, nd = 0;
	for (int t = 0; t < n;) {
		int run = 1;
		while (tiles_ok && t + run < n && e[t + run].seq == e[t].seq &&
		       e[t + run].pos == e[t].pos + run)
			run++;
		if (run < CUDA_TILE_MIN) {
			for (int i = 0; i < run; i++)
				dec[nd++] = t + i;
		} else {
			for (int i = 0; i < run; i += CUDA_TILE_Q) {
				tiles[2 * nt] = t + i;
				tiles[2 * nt + 1] = run - i < CUDA_TILE_Q ? run - i : CUDA_TILE_Q;
				nt++;
			}
		}
		t += run;
	}
	*n_dec = nd;
	return nt;
}

extern "C" cudaError_t cuda_attention(uint16_t *out, const float *qkv, int n_heads, int n_kv_heads,
				      int head_dim, const struct be_entry *e, const int32_t *dec,
				      int n_dec, const int32_t *tiles, int n_tiles, int max_pos,
				      const struct cuda_kv *kv, float *work, int splits, cudaStream_t s)
{
	int group = n_heads / n_kv_heads;
	if (group > ATT_GROUP || head_dim > 256 || head_dim % 2)
		return cudaErrorInvalidValue;
	cudaError_t ce;
	if (n_tiles > 0) {
		dim3 grid(n_tiles, n_heads);
		int epl = (head_dim + TILE_LANES - 1) / TILE_LANES;
		if (epl <= 4)
			prefill_attention_kernel<4><<<grid, CUDA_TILE_Q * TILE_LANES, 0, s>>>(out, qkv, n_heads, n_kv_heads, head_dim, e, tiles, *kv);
		else if (epl <= 8)
			prefill_attention_kernel<8><<<grid, CUDA_TILE_Q * TILE_LANES, 0, s>>>(out, qkv, n_heads, n_kv_heads, head_dim, e, tiles, *kv);
		else if (epl <= 16)
			prefill_attention_kernel<16><<<grid, CUDA_TILE_Q * TILE_LANES, 0, s>>>(out, qkv, n_heads, n_kv_heads, head_dim, e, tiles, *kv);
		else if (epl <= 32)
			prefill_attention_kernel<32><<<grid, CUDA_TILE_Q * TILE_LANES, 0, s>>>(out, qkv, n_heads, n_kv_heads, head_dim, e, tiles, *kv);
		else
			prefill_attention_kernel<64><<<grid, CUDA_TILE_Q * TILE_LANES, 0, s>>>(out, qkv, n_heads, n_kv_heads, head_dim, e, tiles, *kv);
		if ((ce = cudaGetLastError()) != cudaSuccess)
			return ce;
	}
	if (n_dec <= 0)
		return cudaSuccess;
	// Enough blocks to fill the GPU at small batches: split long contexts
	// so that each block reads at least ATT_SPLIT_MIN positions. Each entry
	// takes what its own length needs of the splits launched.
	int want = (max_pos + 1) / ATT_SPLIT_MIN;
	if (splits > want)
		splits = want > 1 ? want : 1;
	if (splits > 1 && !work)
		splits = 1;
	dim3 grid(n_dec, n_kv_heads, splits);
	int epl = (head_dim + 31) / 32;
	size_t smem = (size_t)ATT_WARPS * group * (2 + 32 * (epl <= 1 ? 1 : epl <= 2 ? 2 : epl <= 4 ? 4 : 8)) * sizeof(float);
	if (epl <= 1)
		attention_kernel<1><<<grid, ATT_WARPS * 32, smem, s>>>(out, qkv, n_heads, n_kv_heads, head_dim, e, dec, *kv, work, splits);
	else if (epl <= 2)
		attention_kernel<2><<<grid, ATT_WARPS * 32, smem, s>>>(out, qkv, n_heads, n_kv_heads, head_dim, e, dec, *kv, work, splits);
	else if (epl <= 4)
		attention_kernel<4><<<grid, ATT_WARPS * 32, smem, s>>>(out, qkv, n_heads, n_kv_heads, head_dim, e, dec, *kv, work, splits);
	else
		attention_kernel<8><<<grid, ATT_WARPS * 32, smem, s>>>(out, qkv, n_heads, n_kv_heads, head_dim, e, dec, *kv, work, splits);
	if ((ce = cudaGetLastError()) != cudaSuccess || splits == 1)
		return ce;
	attention_merge_kernel<<<dim3(n_dec, n_heads), head_dim < 128 ? 64 : 128, 0, s>>>(out, work, n_heads, head_dim, e, dec, splits);
	return cudaGetLastError();
}
