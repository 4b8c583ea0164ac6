// Sampling on the GPU: sampler_sample_row (engine/sampler.c) for every
// logits row of a step, so that only the chosen ids and log-probabilities
// cross to the host. A first pass over the vocabulary runs in many blocks a
// row (scan_kernel: each chunk's max, arg-max and what the walks need);
// then one block a row finishes (greedy from the chunks' arg-maxes alone). The order of operations, the
// ranking (higher value, then lower id) and the draw are the CPU's, which
// also weighs the probabilities in 32.32 fixed point: every sum is exact in
// any order, so a row's token does not depend on how its threads were
// scheduled, and is the CPU's.
// Every pass over the row reads it with the block's threads side by side;
// nothing uses atomics. Runs in the worker's engine thread (and in the GPU
// tests).
#include "ops.h"
#include "launch.h"

#include <limits.h>
#include <math.h>

#define SAMPLE_THREADS 512
#define WARPS (SAMPLE_THREADS / 32)
#define ID_BITS 20 // vocabularies up to 2^20 ids (CUDA_SAMPLE_MAX_VOCAB)
#define NONE INT_MAX
#define DIGITS 16  // the radix of walk_select: 4 bits a pass

typedef unsigned long long u64;

namespace {

__device__ __forceinline__ bool usable(float x)
{
	return !isnan(x) && x != -INFINITY;
}

// A candidate for the largest value: the lowest id wins a tie; NONE is no
// candidate at all.
struct amax {
	float v;
	int i;
};

__device__ __forceinline__ bool better(amax a, amax b)
{
	return a.i != NONE && (b.i == NONE || a.v > b.v || (a.v == b.v && a.i < b.i));
}

// Shared memory for the block's reductions.
struct reduce_smem {
	amax a[WARPS];
	double d[WARPS];
	u64 u[WARPS];
	u64 hist[WARPS][DIGITS];
	u64 word[DIGITS];
};

// The best of every thread's candidate, for every thread. The order is
// total, so the result does not depend on the order of the comparisons.
__device__ amax block_amax(amax x, reduce_smem &sm)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
	for (int o = 16; o > 0; o >>= 1) {
		amax y = {__shfl_xor_sync(0xffffffffu, x.v, o), __shfl_xor_sync(0xffffffffu, x.i, o)};
		if (better(y, x))
			x = y;
	}
	if (lane == 0)
		sm.a[warp] = x;
	__syncthreads();
	if (warp == 0) {
		x = lane < WARPS ? sm.a[lane] : amax{0, NONE};
#pragma unroll
		for (int o = 16; o > 0; o >>= 1) {
			amax y = {__shfl_xor_sync(0xffffffffu, x.v, o),
				  __shfl_xor_sync(0xffffffffu, x.i, o)};
			if (better(y, x))
				x = y;
		}
		if (lane == 0)
			sm.a[0] = x;
	}
	__syncthreads();
	x = sm.a[0];
	__syncthreads();
	return x;
}

template <typename T> __device__ __forceinline__ T warp_sum(T x)
{
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		x += __shfl_xor_sync(0xffffffffu, x, o);
	return x;
}

// Sums in a fixed tree: the same inputs give the same sum.
template <typename T> __device__ T block_sum(T x, T *part)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	x = warp_sum(x);
	if (lane == 0)
		part[warp] = x;
	__syncthreads();
	if (warp == 0) {
		x = warp_sum(lane < WARPS ? part[lane] : (T)0);
		if (lane == 0)
			part[0] = x;
	}
	__syncthreads();
	x = part[0];
	__syncthreads();
	return x;
}

// The largest and the smallest of every thread's value, for every thread.
__device__ void block_range(u64 *hi, u64 *lo, reduce_smem &sm)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	u64 h = *hi, l = *lo;
#pragma unroll
	for (int o = 16; o > 0; o >>= 1) {
		u64 h2 = __shfl_xor_sync(0xffffffffu, h, o), l2 = __shfl_xor_sync(0xffffffffu, l, o);
		h = h2 > h ? h2 : h;
		l = l2 < l ? l2 : l;
	}
	if (lane == 0) {
		sm.hist[warp][0] = h;
		sm.hist[warp][1] = l;
	}
	__syncthreads();
	if (threadIdx.x == 0) {
		for (int w = 1; w < WARPS; w++) {
			h = sm.hist[w][0] > h ? sm.hist[w][0] : h;
			l = sm.hist[w][1] < l ? sm.hist[w][1] : l;
		}
		sm.word[0] = h;
		sm.word[1] = l;
	}
	__syncthreads();
	*hi = sm.word[0];
	*lo = sm.word[1];
	__syncthreads();
}

// A float's bits as an unsigned integer of the same order (-0 as +0).
__device__ __forceinline__ unsigned ordered(float f)
{
	if (f == 0.0f)
		f = 0.0f;
	unsigned u = __float_as_uint(f);
	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// A probability in 32.32 fixed point, as sampler.c's fixed_weight: at most
// 2^32 (the best has 1), so that a vocabulary's sum stays below 2^53.
__device__ __forceinline__ u64 fixed(float p)
{
	return __double2ull_rn((double)p * 4294967296.0);
}

// A set of ids to walk in rank order, with a weight each. Members: the
// usable scaled logits (w[i] * inv_t), or the candidates whose probability
// (prob[i], -1 for ids that are none) reaches floor and whose rank key
// reaches min_key. Ranked by the scaled logit or the probability (then by
// id), or by id alone. Each weighs 1 or its probability in fixed point.
enum walk_key { BY_ID, BY_SCALED, BY_PROB };

struct walk {
	enum walk_key key;
	bool of_prob;     // members by prob (else: usable scaled logits)
	bool count;       // each weighs 1 (else: fixed(prob))
	const float *w, *prob;
	float inv_t, floor;
	u64 min_key;
};

__device__ __forceinline__ u64 rank_key(const walk &k, int i)
{
	u64 low = (u64)((1u << ID_BITS) - 1 - (unsigned)i);
	if (k.key == BY_ID)
		return low;
	float v = k.key == BY_SCALED ? k.w[i] * k.inv_t : k.prob[i];
	return ((u64)ordered(v) << ID_BITS) | low;
}

__device__ __forceinline__ int key_id(u64 key)
{
	return (int)((1u << ID_BITS) - 1 - (unsigned)(key & ((1ull << ID_BITS) - 1)));
}

// Whether i is in the walk; then its key and weight.
__device__ __forceinline__ bool member(const walk &k, int i, u64 *key, u64 *weight)
{
	if (k.of_prob) {
		float p = k.prob[i];
		if (!(p >= k.floor))
			return false;
		*weight = k.count ? 1 : fixed(p);
	} else {
		if (!usable(k.w[i] * k.inv_t))
			return false;
		*weight = 1;
	}
	*key = rank_key(k, i);
	return *key >= k.min_key;
}

__device__ u64 walk_mass(const walk &k, int V, reduce_smem &sm)
{
	u64 sum = 0, key, weight;
	for (int i = threadIdx.x; i < V; i += blockDim.x)
		if (member(k, i, &key, &weight))
			sum += weight;
	return block_sum(sum, sm.u);
}

// Sums acc[0..DIGITS) over the block, for every thread.
__device__ __forceinline__ void block_sum_digits(u64 *acc, reduce_smem &sm)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
	for (int d = 0; d < DIGITS; d++)
		acc[d] = warp_sum(acc[d]);
	if (lane == 0)
#pragma unroll
		for (int d = 0; d < DIGITS; d++)
			sm.hist[warp][d] = acc[d];
	__syncthreads();
	if (threadIdx.x < DIGITS) {
		u64 s = 0;
		for (int w = 0; w < WARPS; w++)
			s += sm.hist[w][threadIdx.x];
		sm.word[threadIdx.x] = s;
	}
	__syncthreads();
#pragma unroll
	for (int d = 0; d < DIGITS; d++)
		acc[d] = sm.word[d];
	__syncthreads();
}

// The id where the walk's running weight, summed in rank order, first
// exceeds t: the weight ranked before it is at most t, and with it more
// than t. t must be below the walk's mass. A radix descent over the rank
// keys, four bits a pass from the highest bit in which the members' keys
// differ, counting each digit's weight in registers (acc[d]: the weight of
// the digits d and above) and summing those over the block.
__device__ int walk_select(const walk &k, int V, u64 t, reduce_smem &sm)
{
	u64 hi = 0, lo = ~0ull, key, weight;
	for (int i = threadIdx.x; i < V; i += blockDim.x)
		if (member(k, i, &key, &weight) && weight > 0) {
			hi = key > hi ? key : hi;
			lo = key < lo ? key : lo;
		}
	block_range(&hi, &lo, sm);
	if (hi <= lo) // one member (or, against the contract, none)
		return hi == 0 && lo == ~0ull ? 0 : key_id(hi);
	int shift = (63 - __clzll((long long)(hi ^ lo))) & ~3;
	u64 prefix = hi >> (shift + 4) << (shift + 4); // the bits they share
	for (; shift >= 0; shift -= 4) {
		u64 acc[DIGITS];
#pragma unroll
		for (int d = 0; d < DIGITS; d++)
			acc[d] = 0;
		for (int i = threadIdx.x; i < V; i += blockDim.x) {
			if (!member(k, i, &key, &weight) || (key >> (shift + 4)) != (prefix >> (shift + 4)))
				continue;
			unsigned digit = (unsigned)(key >> shift) & (DIGITS - 1);
#pragma unroll
			for (int d = 0; d < DIGITS; d++)
				acc[d] += digit >= (unsigned)d ? weight : 0;
		}
		block_sum_digits(acc, sm);
		// The largest digit d whose weight and above's exceeds t, and the
		// weight above it, acc[d + 1]: acc falls with the digit, so that is
		// the largest acc at most t. Without indexing, so that acc stays in
		// registers.
		int d = 0;
		u64 above = 0;
#pragma unroll
		for (int j = 1; j < DIGITS; j++) {
			if (acc[j] > t)
				d = j;
			else if (acc[j] > above)
				above = acc[j];
		}
		t -= above;
		prefix |= (u64)d << shift;
	}
	return key_id(prefix);
}

// The same for a walk by id (BY_ID): each warp sums a contiguous range of
// ids, the ranges' sums are laid end to end, and the one warp whose range
// holds t walks it 32 ids at a time. Two passes, not one per digit.
__device__ int scan_select(const walk &k, int V, u64 t, reduce_smem &sm)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	int per = (V + WARPS - 1) / WARPS;
	per = (per + 31) & ~31;
	int begin = warp * per, end = begin + per < V ? begin + per : V;
	u64 sum = 0, key, weight;
	for (int i = begin + lane; i < end; i += 32)
		if (member(k, i, &key, &weight))
			sum += weight;
	sum = warp_sum(sum);
	if (lane == 0)
		sm.u[warp] = sum;
	__syncthreads();
	if (threadIdx.x == 0) {
		u64 before = 0;
		int w = 0;
		while (w < WARPS - 1 && before + sm.u[w] <= t)
			before += sm.u[w++];
		sm.word[0] = (u64)w;
		sm.word[1] = before;
	}
	__syncthreads();
	int chosen = (int)sm.word[0];
	if (warp == chosen) {
		u64 acc = sm.word[1];
		int found = -1, last = -1;
		for (int base = begin; base < end && found < 0; base += 32) {
			int i = base + lane;
			u64 x = 0;
			if (i < end && member(k, i, &key, &weight)) {
				x = weight;
				last = i;
			}
			u64 incl = x; // inclusive scan over the 32 ids
#pragma unroll
			for (int o = 1; o < 32; o <<= 1) {
				u64 y = __shfl_up_sync(0xffffffffu, incl, o);
				if (lane >= o)
					incl += y;
			}
			unsigned over = __ballot_sync(0xffffffffu, x > 0 && acc + incl > t);
			if (over)
				found = base + __ffs(over) - 1;
			acc += __shfl_sync(0xffffffffu, incl, 31);
		}
		// Against the contract (t at or past the mass): the last member.
		for (int o = 16; o > 0; o >>= 1) {
			int y = __shfl_xor_sync(0xffffffffu, last, o);
			last = y > last ? y : last;
		}
		if (lane == 0)
			sm.word[2] = (u64)(found >= 0 ? found : last >= 0 ? last : 0);
	}
	__syncthreads();
	int id = (int)sm.word[2];
	__syncthreads();
	return id;
}

// The best usable value of v (the lowest id on ties), or NONE.
__device__ amax argmax(const float *v, int V, reduce_smem &sm)
{
	amax b = {0, NONE};
	for (int i = threadIdx.x; i < V; i += blockDim.x)
		if (usable(v[i]) && better(amax{v[i], i}, b))
			b = amax{v[i], i};
	return block_amax(b, sm);
}

// The draw from the row's scaled logits (w times inv_t), whose largest
// usable value is m2 (finite, or NaN): the candidates, their probabilities
// into prob, and the walks of sampler.c's draw and draw_nucleus.
__device__ int draw(const struct cuda_sample_row &p, const float *w, float inv_t, float m2,
		    float *prob, int V, reduce_smem &sm)
{
	bool top_k = p.top_k > 0 && p.top_k < V;
	// Candidates: the top_k best scaled logits, or every usable one.
	u64 kth = 0;
	if (top_k) {
		walk usable_w = {BY_SCALED, false, true, w, nullptr, inv_t, 0, 0};
		if (walk_mass(usable_w, V, sm) > (u64)p.top_k)
			kth = rank_key(usable_w, walk_select(usable_w, V, (u64)p.top_k - 1, sm));
	}
	walk scaled = {BY_SCALED, false, true, w, nullptr, inv_t, 0, 0};
	for (int i = threadIdx.x; i < V; i += blockDim.x) {
		float s = w[i] * inv_t;
		prob[i] = usable(s) && rank_key(scaled, i) >= kth ? (float)exp((double)s - (double)m2)
								  : -1.0f;
	}
	__syncthreads();
	walk cand = {top_k ? BY_SCALED : BY_ID, true, false, w, prob, inv_t, 0.0f, 0};
	u64 total = walk_mass(cand, V, sm);
	if (total == 0) // m2 was NaN (0 times an infinite 1 / temperature): as the CPU
		return 0;
	if (p.top_p >= 1 && p.min_p == 0) {
		// Everything stays: one walk, in id order or the top_k's rank.
		u64 t = (u64)(p.u * (double)total);
		t = t < total ? t : total - 1;
		return top_k ? walk_select(cand, V, t, sm) : scan_select(cand, V, t, sm);
	}
	// The smallest set, ranked by probability, whose mass reaches top_p
	// and whose members reach min_p of the best.
	walk ranked = {BY_PROB, true, false, w, prob, inv_t, 0.0f, 0};
	u64 want = (u64)ceil((double)p.top_p * (double)total);
	int last = walk_select(ranked, V, want > 0 ? want - 1 : 0, sm);
	walk kept = {BY_PROB, true, false, w, prob, inv_t, p.min_p, rank_key(ranked, last)};
	u64 mass = walk_mass(kept, V, sm);
	if (mass == 0)
		return last;
	u64 t = (u64)(p.u * (double)mass);
	return walk_select(kept, V, t < mass ? t : mass - 1, sm);
}

// The rows' raw logits in chunks of SCAN_CHUNK, many blocks a row: each
// chunk's best (argmax's order) and its sum of exp(logit - that best),
// which sample_kernel combines in chunk order. The chunks depend on V
// alone, so a row's log-probabilities do not depend on the batch.
#define SCAN_CHUNK 4096

struct scan_part {
	float v;
	int i;       // NONE: no usable logit in the chunk
	double sum;
};

__host__ __device__ __forceinline__ int scan_chunks(int V)
{
	return (V + SCAN_CHUNK - 1) / SCAN_CHUNK;
}

// A row's floats of work: the penalised copy (V), the probabilities (V),
// then the scan's parts (4 floats each, 8-byte aligned).
__host__ __device__ __forceinline__ size_t row_work(int V)
{
	return 2 * (size_t)V + 4 * (size_t)scan_chunks(V) + 2;
}

__device__ __forceinline__ scan_part *row_parts(float *work, int r, int V)
{
	return reinterpret_cast<scan_part *>(work + (size_t)r * row_work(V) + 2 * (size_t)V);
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
	scan_kernel(const float *logits, float *work, int V)
{
	pdl_start();
	pdl_wait();
	__shared__ reduce_smem sm;
	int c = blockIdx.x, r = blockIdx.y;
	const float *raw = logits + (size_t)r * V;
	int from = c * SCAN_CHUNK, to = min(V, from + SCAN_CHUNK);
	amax b = {0, NONE};
	for (int i = from + threadIdx.x; i < to; i += blockDim.x)
		if (usable(raw[i]) && better(amax{raw[i], i}, b))
			b = amax{raw[i], i};
	b = block_amax(b, sm);
	double part = 0;
	for (int i = from + threadIdx.x; b.i != NONE && i < to; i += blockDim.x)
		if (usable(raw[i]))
			part += expf(raw[i] - b.v);
	double sum = block_sum(part, sm.d);
	if (threadIdx.x == 0)
		row_parts(work, r, V)[c] = scan_part{b.v, b.i, sum};
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
	sample_kernel(struct sampler_result *out, const float *logits, float *work, int V,
		      const struct cuda_sample_row *rows, const int32_t *seen,
		      const uint32_t *generated)
{
	pdl_start();
	pdl_wait();
	__shared__ reduce_smem sm;
	int r = blockIdx.x;
	const struct cuda_sample_row p = rows[r];
	const float *raw = logits + (size_t)r * V;
	float *copy = work + (size_t)r * row_work(V), *prob = copy + V;
	struct sampler_result *o = &out[r];

	// The model's own log-probabilities, before anything changes the
	// logits: the best of the chunks' bests, and their sums scaled to it.
	const scan_part *parts = row_parts(work, r, V);
	int n_parts = scan_chunks(V);
	amax best = {0, NONE};
	for (int c = threadIdx.x; c < n_parts; c += blockDim.x)
		if (better(amax{parts[c].v, parts[c].i}, best))
			best = amax{parts[c].v, parts[c].i};
	best = block_amax(best, sm);
	float mx = raw[best.i == NONE ? 0 : best.i];
	double part = 0;
	for (int c = threadIdx.x; c < n_parts; c += blockDim.x)
		if (parts[c].i != NONE)
			part += parts[c].sum * exp((double)parts[c].v - (double)mx);
	double sum = block_sum(part, sm.d);
	float lse = mx + (float)log(sum > 0 ? sum : 1);
	int n_top = 0;
	amax prev = {0, NONE};
	for (; n_top < p.top_logprobs && n_top < SAMPLER_MAX_TOP_LOGPROBS; n_top++) {
		amax b = {0, NONE}; // the best ranked after the one before
		for (int i = threadIdx.x; i < V; i += blockDim.x) {
			float v = raw[i];
			if (usable(v) && (prev.i == NONE || v < prev.v || (v == prev.v && i > prev.i)) &&
			    better(amax{v, i}, b))
				b = amax{v, i};
		}
		b = block_amax(b, sm);
		if (b.i == NONE)
			break;
		if (threadIdx.x == 0) {
			o->top_token[n_top] = b.i;
			o->top_logprob[n_top] = raw[b.i] - lse;
		}
		prev = b;
	}

	// Penalties, on a copy; rounded as the CPU rounds them (no fused
	// multiply-adds).
	const float *w = raw;
	if (p.n_seen > 0) {
		for (int i = threadIdx.x; i < V; i += blockDim.x)
			copy[i] = raw[i];
		__syncthreads();
		for (int j = threadIdx.x; j < p.n_seen; j += blockDim.x) {
			int t = seen[p.seen_off + j];
			if (t < 0 || t >= V)
				continue; // the list holds each token once: no two threads meet
			float l = copy[t];
			if (p.repetition_penalty != 1)
				l = l > 0 ? __fdiv_rn(l, p.repetition_penalty) : __fmul_rn(l, p.repetition_penalty);
			uint32_t g = generated[p.seen_off + j];
			if (g) {
				l = __fsub_rn(l, __fmul_rn(p.frequency_penalty, (float)g));
				l = __fsub_rn(l, p.presence_penalty);
			}
			copy[t] = l;
		}
		__syncthreads();
		w = copy;
		best = argmax(w, V, sm);
	}
	int tok = best.i == NONE ? 0 : best.i;
	if (!(p.temperature == 0 || p.top_k == 1)) {
		float inv_t = 1.0f / p.temperature;
		// The largest scaled value is the largest value scaled (inv_t > 0).
		float m2 = best.i == NONE ? -INFINITY : __fmul_rn(w[best.i], inv_t);
		// An infinite one (the temperature's scaling overflowed, or the
		// model's logit) leaves greedy, as on the CPU.
		if (m2 != INFINITY)
			tok = m2 == -INFINITY ? 0 : draw(p, w, inv_t, m2, prob, V, sm);
	}
	if (threadIdx.x == 0) {
		tok = tok >= 0 && tok < V ? tok : 0;
		o->token = tok;
		o->logprob = usable(raw[tok]) ? raw[tok] - lse : -INFINITY;
		o->n_top = n_top;
	}
}

} // namespace

extern "C" size_t cuda_sample_work(int rows, int vocab)
{
	return (size_t)rows * row_work(vocab);
}

extern "C" cudaError_t cuda_sample(struct sampler_result *out, const float *logits, float *work,
				   int vocab, const struct cuda_sample_row *rows, const int32_t *seen,
				   const uint32_t *generated, int n_rows, cudaStream_t s)
{
	if (n_rows <= 0)
		return cudaSuccess;
	cudaError_t ce = launch(scan_kernel, dim3(scan_chunks(vocab), n_rows), SAMPLE_THREADS, 0, s,
				logits, work, vocab);
	if (ce != cudaSuccess)
		return ce;
	return launch(sample_kernel, n_rows, SAMPLE_THREADS, 0, s, out, logits, work, vocab, rows,
		      seen, generated);
}
