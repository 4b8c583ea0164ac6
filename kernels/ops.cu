// The CUDA kernels of the forward pass (see ops.h), each written to be read
// beside its CPU reference in engine/cpu.c. Activations are f32 where they
// are summed (the residual stream, projections' outputs, attention's
// scores), bf16 where a matrix product reads them, as the weights are.
#include "ops.h"
#include "launch.h"

#include <cuda_bf16.h>
#include <math.h>

#include "rownorm.h"

typedef __nv_bfloat16 bf16;

static __device__ __forceinline__ float ld_bf16(const uint16_t *p, size_t i)
{
	return __bfloat162float(reinterpret_cast<const bf16 *>(p)[i]);
}

static __device__ __forceinline__ void st_bf16(uint16_t *p, size_t i, float v)
{
	reinterpret_cast<bf16 *>(p)[i] = __float2bfloat16(v);
}

// ---- embedding ---------------------------------------------------------------

__global__ void embed_kernel(float *x, const uint16_t *embed, int h, const struct be_entry *e)
{
	pdl_start();
	pdl_wait();
	int t = blockIdx.x;
	size_t base = (size_t)e[t].token * (size_t)h;
	for (int i = threadIdx.x; i < h; i += blockDim.x)
		x[(size_t)t * h + i] = ld_bf16(embed, base + i);
}

extern "C" cudaError_t cuda_embed(float *x, const uint16_t *embed, int h, const struct be_entry *e,
				  int n, cudaStream_t s)
{
	return n > 0 ? launch(embed_kernel, n, 256, 0, s, x, embed, h, e) : cudaSuccess;
}

// ---- RMSNorm after the residual add -------------------------------------------

// A block a row, a warp for each of its NORM_SEGS segments (rownorm.h).
// Segments of up to 32 Q values are held in registers, Q / 4 units a lane,
// from the one read (x += add, kept in x unless rows picks the rows) to the
// write; Q 0 is a loop, for longer rows.
template <int Q>
__global__ void __launch_bounds__(NORM_SEGS * 32)
	add_rmsnorm_kernel(float *x, const float *add, uint16_t *out, const float *w, int h,
			   float eps, const int32_t *rows)
{
	pdl_start();
	pdl_wait();
	__shared__ float part[NORM_SEGS];
	int lane = threadIdx.x & 31, seg = threadIdx.x >> 5, r = blockIdx.x;
	int src = rows ? rows[r] : r, lo, hi;
	row_seg(h, seg, &lo, &hi);
	float *xr = x + (size_t)src * h;
	const float *ar = add ? add + (size_t)src * h : nullptr;
	bf16 *o = reinterpret_cast<bf16 *>(out) + (size_t)r * h;
	bool quads = h % 4 == 0;
	if (Q == 0 || !quads) {
		float ss = 0;
		for (int i = lo + lane; i < hi; i += 32) {
			if (quads) {
				float4 v = reinterpret_cast<float4 *>(xr)[i];
				if (ar) {
					float4 a = reinterpret_cast<const float4 *>(ar)[i];
					v.x += a.x, v.y += a.y, v.z += a.z, v.w += a.w;
					if (!rows)
						reinterpret_cast<float4 *>(xr)[i] = v;
				}
				ss = sq_add4(ss, v);
			} else {
				float v = ar ? xr[i] + ar[i] : xr[i];
				if (ar && !rows)
					xr[i] = v;
				ss = sq_add(ss, v);
			}
		}
		ss = warp_sum(ss);
		if (lane == 0)
			part[seg] = ss;
		__syncthreads(); // the sums the other warps kept in x, too
		float inv = row_inv_rms(row_seg_total(part), h, eps);
		for (int i = threadIdx.x; i < h; i += blockDim.x)
			o[i] = row_normed(ar && rows ? xr[i] + ar[i] : xr[i], inv, w[i]);
		return;
	}
	constexpr int M = Q > 0 ? Q / 4 : 1;
	float4 *x4 = reinterpret_cast<float4 *>(xr);
	const float4 *a4 = reinterpret_cast<const float4 *>(ar), *w4 = reinterpret_cast<const float4 *>(w);
	float4 v[M];
#pragma unroll
	for (int m = 0; m < M; m++) {
		int i = lo + lane + 32 * m;
		v[m] = i < hi ? x4[i] : make_float4(0, 0, 0, 0);
	}
	if (ar) {
#pragma unroll
		for (int m = 0; m < M; m++) {
			int i = lo + lane + 32 * m;
			if (i < hi) {
				float4 a = a4[i];
				v[m].x += a.x, v[m].y += a.y, v[m].z += a.z, v[m].w += a.w;
				if (!rows)
					x4[i] = v[m];
			}
		}
	}
	float ss = 0; // row_seg_sumsq's order
#pragma unroll
	for (int m = 0; m < M; m++)
		if (lo + lane + 32 * m < hi)
			ss = sq_add4(ss, v[m]);
	ss = warp_sum(ss);
	if (lane == 0)
		part[seg] = ss;
	__syncthreads();
	float inv = row_inv_rms(row_seg_total(part), h, eps);
#pragma unroll
	for (int m = 0; m < M; m++) {
		int i = lo + lane + 32 * m;
		if (i >= hi)
			break;
		float4 wq = w4[i];
		o[4 * i] = row_normed(v[m].x, inv, wq.x), o[4 * i + 1] = row_normed(v[m].y, inv, wq.y);
		o[4 * i + 2] = row_normed(v[m].z, inv, wq.z), o[4 * i + 3] = row_normed(v[m].w, inv, wq.w);
	}
}

extern "C" cudaError_t cuda_add_rmsnorm(float *x, const float *add, uint16_t *out, const float *w,
					int h, float eps, const int32_t *rows, int n, cudaStream_t s)
{
	if (h <= 0 || h > CUDA_NORM_MAX)
		return cudaErrorInvalidValue;
	if (n <= 0)
		return cudaSuccess;
	// units a lane holds: a segment's quads / 32
	int q = h % 4 ? 0 : (h / 4 + NORM_SEGS * 32 - 1) / (NORM_SEGS * 32);
	void (*k)(float *, const float *, uint16_t *, const float *, int, float, const int32_t *) =
		q == 0	 ? add_rmsnorm_kernel<0>
		: q <= 2 ? add_rmsnorm_kernel<8>
		: q <= 4 ? add_rmsnorm_kernel<16>
		: q <= 8 ? add_rmsnorm_kernel<32>
			 : add_rmsnorm_kernel<0>;
	return launch(k, n, NORM_SEGS * 32, 0, s, x, add, out, w, h, eps, rows);
}

// ---- rotary embedding and the KV-cache write -----------------------------------

// The cache row of entry t's position pos: its block's, from the entry's table.
static __device__ __forceinline__ int cache_pos(const struct cuda_kv &kv, int t, int pos)
{
	int32_t block = kv.tables[(size_t)kv.tab[t] * kv.max_blocks + pos / KV_BLOCK];
	return block * KV_BLOCK + pos % KV_BLOCK;
}

static __device__ __forceinline__ size_t cache_row(const struct cuda_kv &kv, int t, int pos, int kv_dim)
{
	return (size_t)cache_pos(kv, t, pos) * (size_t)kv_dim;
}

// The rotation of the pair (a, b) = (v[i], v[i + half]) by (c, s), each
// product rounded before the sum (no contraction), so that the attention
// kernel that rotates its own queries and key gets the same bits as here.
static __device__ __forceinline__ float rope_lo(float a, float b, float c, float s)
{
	return __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
}

static __device__ __forceinline__ float rope_hi(float a, float b, float c, float s)
{
	return __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

// Dimension d of head v (hd values) rotated by the position's cos and sin.
static __device__ __forceinline__ float rope_at(const float *v, int d, int hd, const float *cs,
						const float *sn)
{
	int half = hd / 2;
	return d < half ? rope_lo(v[d], v[d + half], cs[d], sn[d])
			: rope_hi(v[d - half], v[d], cs[d - half], sn[d - half]);
}

__global__ void rope_kv_kernel(float *qkv, int n_heads, int n_kv_heads, int hd, const float *cosv,
			       const float *sinv, const struct be_entry *e, struct cuda_kv kv)
{
	pdl_start();
	int t = blockIdx.x, half = hd / 2, pos = e[t].pos;
	int q_dim = n_heads * hd, kv_dim = n_kv_heads * hd;
	float *row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
	const float *cs = cosv + (size_t)pos * half, *sn = sinv + (size_t)pos * half;
	size_t at = cache_row(kv, t, pos, kv_dim);
	pdl_wait(); // the step's tables were there before it: only qkv waits
	// q and k heads: one thread per rotated pair (v[i], v[i + half])
	int pairs = (n_heads + n_kv_heads) * half;
	for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
		int head = p / half, i = p % half;
		float *v = row + (size_t)head * hd; // k heads follow the q heads
		float a = v[i], b = v[i + half];
		float ra = rope_lo(a, b, cs[i], sn[i]), rb = rope_hi(a, b, cs[i], sn[i]);
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
	return n > 0 ? launch(rope_kv_kernel, n, 256, 0, s, qkv, n_heads, n_kv_heads, head_dim, cos,
			      sin, e, *kv)
		     : cudaSuccess;
}

// ---- SwiGLU --------------------------------------------------------------------

__global__ void swiglu_kernel(uint16_t *out, const float *gu, int inter, size_t total)
{
	pdl_start();
	pdl_wait();
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
	return launch(swiglu_kernel, (unsigned)(blocks < 65535 ? blocks : 65535), 256, 0, s, out, gu,
		      inter, total);
}

// ---- attention -----------------------------------------------------------------

#define ATT_WARPS 8
#define ATT_THREADS (ATT_WARPS * 32)
#define ATT_GROUP 8 // most query heads per KV head
#ifndef ATT_SPLIT_MIN
#define ATT_SPLIT_MIN 128 // positions a split reads at least: a tile
#endif
#define ATT_AHEAD 8 // values each thread loads before it uses them
#define ATT_STATS 32 // floats of shared memory before the queries: 3 per head, aligned
#define ATT_SPLITS_MAX 64 // splits an entry takes at most (the merge's threads)
#define ATT_GROUP_BLOCKS 64 // blocks of whole groups from which a block takes its group

// The splits of an entry attending to len positions: a function of its own
// length alone, so that its result does not depend on the batch it is in
// (nor on how many splits the launch allowed beyond what it needs).
static __device__ __forceinline__ int entry_splits(int len, int most)
{
	int want = len / ATT_SPLIT_MIN;
	return want < 1 ? 1 : want < most ? want : most;
}

static __device__ __forceinline__ uint4 ld16(const uint16_t *p)
{
	return __ldg(reinterpret_cast<const uint4 *>(p));
}

// 8 bf16 as floats, in order
static __device__ __forceinline__ void unpack8(uint4 v, float f[8])
{
	uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
	for (int i = 0; i < 4; i++) {
		f[2 * i] = __uint_as_float(u[i] << 16);
		f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
	}
}

// One block per (entry, query heads, split), the split's positions a tile
// at a time; the heads are hpb of those that share a KV head (all of them
// in a large batch, where reading the KV head once matters; one in a small
// one, for more blocks). Scores: KS threads take a position's key, 8
// pieces of 16 bytes each (its value's are fetched into L2 meanwhile), for
// each of the block's query heads (in shared memory), and add their
// parts by a fixed butterfly. Each head's softmax over the tile runs in a
// warp; then each thread adds up 8 dimensions of the values of every
// 32 / (HD / 8)-th position. Running max and sum across tiles (online
// softmax); the threads' sums are added in a fixed order at the end.
// Every order depends on the entry's own length alone (a head's sums do
// not depend on the other heads of its block, so neither on hpb; G, the
// most a block takes, 1 or ATT_GROUP, sizes its registers). The entry's table
// is read before the kernel before ends (pdl_wait): only the queries and
// the cache wait.
template <int HD, int G>
__global__ void __launch_bounds__(ATT_THREADS, G == 1 ? 3 : 2)
	attention_kernel(uint16_t *out, const float *qkv, int n_heads, int n_kv_heads,
			 const struct be_entry *e, const int32_t *dec, struct cuda_kv kv, float *work,
			 int most, int hpb, const float *cosv, const float *sinv)
{
	constexpr int Q8 = HD / 8, KS = Q8 > 8 ? Q8 / 8 : 1, KP = Q8 / KS; // pieces a thread scores
	constexpr int TILE = ATT_THREADS / KS, PPW = 32 / Q8, STRIDE = ATT_WARPS * PPW;
	pdl_start();
	int group = n_heads / n_kv_heads, parts = group / hpb;
	int t = dec[blockIdx.x], kvh = blockIdx.y / parts, sp = blockIdx.z;
	int head0 = kvh * group + blockIdx.y % parts * hpb; // the block's first query head
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	int q_dim = n_heads * HD, kv_dim = n_kv_heads * HD;
	int len = e[t].pos + 1;
	int splits = entry_splits(len, most);
	if (sp >= splits)
		return; // the whole block: this entry needs fewer splits
	int chunk = (len + splits - 1) / splits;
	int start = sp * chunk, end = min(len, start + chunk);
	int me = threadIdx.x / KS, part = threadIdx.x % KS; // the score pass's position and part
	int row = start + me < end ? cache_pos(kv, t, start + me) : 0; // the first tile's
	extern __shared__ __align__(16) float sm[];
	float *run_m = sm;                // (hpb) running max
	float *run_l = sm + ATT_GROUP;    // (hpb) running sum
	float *corr = sm + 2 * ATT_GROUP; // (hpb) this tile's rescale of the sums
	float *sq = sm + ATT_STATS;       // (hpb, HD) the queries, scaled
	float *sc = sq + ATT_GROUP * HD;  // (hpb, TILE) scores, then weights
	int *rows = (int *)(sc + ATT_GROUP * TILE); // (TILE) the tile's cache rows, -1: the new one
	uint16_t *knew = (uint16_t *)(rows + TILE), *vnew = knew + HD; // (HD) bf16 each
	// With cosv, the step's rotation and cache write are this kernel's: the
	// queries are rotated here, and the entry's own key and value (its last
	// position, in the last split) come from qkv, not the cache, which the
	// first block of the KV head writes.
	bool fresh = cosv && end == len;
	const float *cs = nullptr, *sn = nullptr;
	size_t new_at = 0;
	if (cosv) {
		cs = cosv + (size_t)(len - 1) * (HD / 2), sn = sinv + (size_t)(len - 1) * (HD / 2);
		new_at = (size_t)cache_pos(kv, t, len - 1) * kv_dim + (size_t)kvh * HD;
	}
	pdl_wait();
	const float *qkv_t = qkv + (size_t)t * (q_dim + 2 * kv_dim);
	const float *qrow = qkv_t + (size_t)head0 * HD;
	float scale = rsqrtf((float)HD);
	for (int i = threadIdx.x; i < hpb * HD; i += blockDim.x)
		sq[i] = (cosv ? rope_at(qrow + i / HD * HD, i % HD, HD, cs, sn) : qrow[i]) * scale;
	if (fresh) {
		const float *kr = qkv_t + q_dim + (size_t)kvh * HD, *vr = kr + kv_dim;
		bool writer = blockIdx.y % parts == 0;
		for (int d = threadIdx.x; d < HD; d += blockDim.x) {
			bf16 k = __float2bfloat16(rope_at(kr, d, HD, cs, sn)), v = __float2bfloat16(vr[d]);
			knew[d] = reinterpret_cast<uint16_t &>(k), vnew[d] = reinterpret_cast<uint16_t &>(v);
			if (writer) {
				reinterpret_cast<bf16 *>(kv.k)[new_at + d] = k;
				reinterpret_cast<bf16 *>(kv.v)[new_at + d] = v;
			}
		}
	}
	if (threadIdx.x < G)
		run_m[threadIdx.x] = -INFINITY, run_l[threadIdx.x] = 0;
	int pq = lane % Q8, pp = warp * PPW + lane / Q8; // the value pass's piece and position
	size_t head_off = (size_t)kvh * HD;
	float acc[G][8];
#pragma unroll
	for (int g = 0; g < G; g++)
#pragma unroll
		for (int j = 0; j < 8; j++)
			acc[g][j] = 0;
	__syncthreads();
	for (int base = start; base < end; base += TILE) {
		int p = base + me;
		if (base != start && p < end)
			row = cache_pos(kv, t, p);
		float s[G];
#pragma unroll
		for (int g = 0; g < G; g++)
			s[g] = 0;
		if (p < end) {
			size_t off = (size_t)row * kv_dim + head_off + part * KP * 8;
			bool own = fresh && p == len - 1;
			const uint16_t *kr = own ? knew + part * KP * 8 : kv.k + off;
			uint4 kk[KP];
#pragma unroll
			for (int i = 0; i < KP; i++)
				kk[i] = own ? *reinterpret_cast<const uint4 *>(kr + i * 8) : ld16(kr + i * 8);
			if (!own)
				asm volatile("prefetch.global.L2 [%0];" ::"l"(kv.v + off));
			if (part == 0)
				rows[me] = own ? -1 : row;
#pragma unroll
			for (int i = 0; i < KP; i++) {
				float kf[8];
				unpack8(kk[i], kf);
#pragma unroll
				for (int g = 0; g < G; g++) {
					if (g >= hpb)
						break;
					const float *qg = sq + g * HD + (part * KP + i) * 8;
#pragma unroll
					for (int j = 0; j < 8; j++)
						s[g] += qg[j] * kf[j];
				}
			}
		}
#pragma unroll
		for (int g = 0; g < G; g++) {
#pragma unroll
			for (int o = 1; o < KS; o <<= 1)
				s[g] += __shfl_xor_sync(0xffffffffu, s[g], o);
			if (g < hpb && part == 0)
				sc[g * TILE + me] = p < end ? s[g] : -INFINITY;
		}
		__syncthreads();
		if (warp < hpb) { // head `warp`: the tile's max, its weights and their sum
			float *sr = sc + warp * TILE, mx = -INFINITY, sum = 0;
			for (int i = lane; i < TILE; i += 32)
				mx = fmaxf(mx, sr[i]);
#pragma unroll
			for (int o = 16; o > 0; o >>= 1)
				mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
			float mo = run_m[warp], mn = fmaxf(mo, mx);
			for (int i = lane; i < TILE; i += 32) {
				float w = sr[i] == -INFINITY ? 0 : __expf(sr[i] - mn);
				sr[i] = w;
				sum += w;
			}
			sum = warp_sum(sum);
			if (lane == 0) {
				float c = mo == -INFINITY ? 0 : __expf(mo - mn);
				corr[warp] = c;
				run_l[warp] = run_l[warp] * c + sum;
				run_m[warp] = mn;
			}
		}
		__syncthreads();
#pragma unroll
		for (int g = 0; g < G; g++) {
			float c = g < hpb ? corr[g] : 0;
#pragma unroll
			for (int j = 0; j < 8; j++)
				acc[g][j] *= c;
		}
		int here = min(TILE, end - base);
		for (int i0 = pp; i0 < here; i0 += ATT_AHEAD * STRIDE) {
			uint4 vv[ATT_AHEAD];
#pragma unroll
			for (int u = 0; u < ATT_AHEAD; u++) {
				int i = i0 + u * STRIDE;
				int r = i < here ? rows[i] : 0;
				vv[u] = i >= here ? make_uint4(0, 0, 0, 0)
					: r < 0	  ? *reinterpret_cast<const uint4 *>(vnew + pq * 8)
						  : ld16(kv.v + (size_t)r * kv_dim + head_off + pq * 8);
			}
#pragma unroll
			for (int u = 0; u < ATT_AHEAD; u++) {
				int i = i0 + u * STRIDE;
				if (i >= here)
					break;
				float vf[8];
				unpack8(vv[u], vf);
#pragma unroll
				for (int g = 0; g < G; g++) {
					if (g >= hpb)
						break;
					float w = sc[g * TILE + i];
#pragma unroll
					for (int j = 0; j < 8; j++)
						acc[g][j] += w * vf[j];
				}
			}
		}
		__syncthreads(); // the weights are read before the next tile's scores
	}
	// The sums: a warp's lanes of one piece by a fixed butterfly, then the
	// warps pairwise (w += w + half for half = 4, 2, 1) through shared memory.
#pragma unroll
	for (int g = 0; g < G; g++)
#pragma unroll
		for (int j = 0; j < 8; j++)
#pragma unroll
			for (int o = Q8; o < 32; o <<= 1)
				acc[g][j] += __shfl_xor_sync(0xffffffffu, acc[g][j], o);
	float *red = sq; // (ATT_WARPS / 2, hpb, HD), over the queries and scores
	for (int half = ATT_WARPS / 2; half > 0; half >>= 1) {
		if (warp >= half && warp < 2 * half && lane < Q8)
#pragma unroll
			for (int g = 0; g < G; g++)
				if (g < hpb)
#pragma unroll
					for (int j = 0; j < 8; j++)
						red[((size_t)(warp - half) * hpb + g) * HD + pq * 8 + j] =
							acc[g][j];
		__syncthreads();
		if (warp < half)
#pragma unroll
			for (int g = 0; g < G; g++)
				if (g < hpb)
#pragma unroll
					for (int j = 0; j < 8; j++)
						acc[g][j] += red[((size_t)warp * hpb + g) * HD + pq * 8 + j];
		__syncthreads();
	}
	if (warp != 0 || lane >= Q8)
		return;
#pragma unroll
	for (int g = 0; g < G; g++) {
		if (g >= hpb)
			break;
		int head = head0 + g;
		if (splits == 1) {
			float inv = 1.0f / run_l[g];
#pragma unroll
			for (int j = 0; j < 8; j++)
				st_bf16(out, (size_t)t * q_dim + (size_t)head * HD + pq * 8 + j,
					acc[g][j] * inv);
		} else { // (entry, head, split): m, l, acc[HD]
			float *wk = work + (((size_t)t * n_heads + head) * most + sp) * (2 + HD);
			if (pq == 0)
				wk[0] = run_m[g], wk[1] = run_l[g];
#pragma unroll
			for (int j = 0; j < 8; j++)
				wk[2 + pq * 8 + j] = acc[g][j];
		}
	}
}

// The splits of each (entry, head) into one output: the splits' maxima
// and sums read at once (a thread a split), then each dimension's parts
// loaded together and added in the splits' order.
__global__ void __launch_bounds__(128)
	attention_merge_kernel(uint16_t *out, const float *work, int n_heads, int hd,
			       const struct be_entry *e, const int32_t *dec, int most)
{
	pdl_start();
	__shared__ float m[ATT_SPLITS_MAX], l[ATT_SPLITS_MAX], f[ATT_SPLITS_MAX];
	int t = dec[blockIdx.x], head = blockIdx.y;
	int splits = entry_splits(e[t].pos + 1, most);
	if (splits == 1)
		return; // attention_kernel wrote this entry's output itself
	pdl_wait();
	const float *wk = work + ((size_t)t * n_heads + head) * most * (2 + hd);
	int s = threadIdx.x;
	float ls = 0;
	if (s < splits) {
		ls = wk[(size_t)s * (2 + hd) + 1];
		m[s] = ls > 0 ? wk[(size_t)s * (2 + hd)] : -INFINITY; // an empty split: no part
		l[s] = ls;
	}
	__syncthreads();
	float mx = -INFINITY;
	for (int i = 0; i < splits; i++)
		mx = fmaxf(mx, m[i]);
	if (s < splits)
		f[s] = ls > 0 ? __expf(m[s] - mx) : 0;
	__syncthreads();
	float sum = 0;
	for (int i = 0; i < splits; i++) // the same in every thread
		sum += l[i] * f[i];
	for (int d = threadIdx.x; d < hd; d += blockDim.x) {
		float a = 0;
#pragma unroll 8
		for (int i = 0; i < splits; i++)
			a += wk[(size_t)i * (2 + hd) + 2 + d] * f[i];
		st_bf16(out, ((size_t)t * n_heads + head) * hd + d, a / sum);
	}
}

extern "C" bool cuda_head_dim_ok(int hd)
{
	return hd >= 8 && hd <= 256 && (hd & (hd - 1)) == 0;
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
	pdl_start();
	pdl_wait();
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
				      const struct cuda_kv *kv, float *work, int splits, const float *cos,
				      const float *sin, cudaStream_t s)
{
	int group = n_heads / n_kv_heads;
	if (group > ATT_GROUP || !cuda_head_dim_ok(head_dim) || (cos && (n_tiles > 0 || !sin)))
		return cudaErrorInvalidValue;
	cudaError_t ce;
	if (n_tiles > 0) {
		dim3 grid(n_tiles, n_heads);
		int epl = (head_dim + TILE_LANES - 1) / TILE_LANES;
		if (epl <= 4)
			ce = launch(prefill_attention_kernel<4>, grid, CUDA_TILE_Q * TILE_LANES, 0, s, out, qkv, n_heads, n_kv_heads, head_dim, e, tiles, *kv);
		else if (epl <= 8)
			ce = launch(prefill_attention_kernel<8>, grid, CUDA_TILE_Q * TILE_LANES, 0, s, out, qkv, n_heads, n_kv_heads, head_dim, e, tiles, *kv);
		else if (epl <= 16)
			ce = launch(prefill_attention_kernel<16>, grid, CUDA_TILE_Q * TILE_LANES, 0, s, out, qkv, n_heads, n_kv_heads, head_dim, e, tiles, *kv);
		else if (epl <= 32)
			ce = launch(prefill_attention_kernel<32>, grid, CUDA_TILE_Q * TILE_LANES, 0, s, out, qkv, n_heads, n_kv_heads, head_dim, e, tiles, *kv);
		else
			ce = launch(prefill_attention_kernel<64>, grid, CUDA_TILE_Q * TILE_LANES, 0, s, out, qkv, n_heads, n_kv_heads, head_dim, e, tiles, *kv);
		if (ce != cudaSuccess)
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
	if (splits > ATT_SPLITS_MAX)
		splits = ATT_SPLITS_MAX;
	// The heads that share a KV head go to one block once there are enough
	// such blocks (about half the multiprocessors of an H200: measured
	// there, one head a block is faster below); else one each.
	int hpb = n_dec * n_kv_heads * splits >= ATT_GROUP_BLOCKS ? group : 1;
	dim3 grid(n_dec, n_kv_heads * (group / hpb), splits);
	int tile = ATT_THREADS / (head_dim > 64 ? head_dim / 64 : 1); // the kernel's TILE
	size_t smem = (size_t)ATT_GROUP * (head_dim + tile) + tile + head_dim, // + knew, vnew
	       red = (size_t)ATT_WARPS / 2 * hpb * head_dim;
	smem = (ATT_STATS + (red > smem ? red : smem)) * sizeof(float);
	void (*kernel)(uint16_t *, const float *, int, int, const struct be_entry *, const int32_t *,
		       struct cuda_kv, float *, int, int, const float *, const float *) =
		hpb == 1 ? (head_dim == 8     ? attention_kernel<8, 1>
			    : head_dim == 16  ? attention_kernel<16, 1>
			    : head_dim == 32  ? attention_kernel<32, 1>
			    : head_dim == 64  ? attention_kernel<64, 1>
			    : head_dim == 128 ? attention_kernel<128, 1>
					      : attention_kernel<256, 1>)
			 : (head_dim == 8     ? attention_kernel<8, ATT_GROUP>
			    : head_dim == 16  ? attention_kernel<16, ATT_GROUP>
			    : head_dim == 32  ? attention_kernel<32, ATT_GROUP>
			    : head_dim == 64  ? attention_kernel<64, ATT_GROUP>
			    : head_dim == 128 ? attention_kernel<128, ATT_GROUP>
					      : attention_kernel<256, ATT_GROUP>);
	ce = launch(kernel, grid, ATT_THREADS, smem, s, out, qkv, n_heads, n_kv_heads, e, dec, *kv,
		    work, splits, hpb, cos, sin);
	if (ce != cudaSuccess || splits == 1)
		return ce;
	return launch(attention_merge_kernel, dim3(n_dec, n_heads), head_dim < 64 ? 64 : 128, 0, s,
		      out, work, n_heads, head_dim, e, dec, splits);
}
