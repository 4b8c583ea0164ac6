/* bench-engine: the CPU engine's speed on a model of real shape, measured
 * against this machine's memory bandwidth in the same run. Prints prefill
 * tokens/s for a 256-token prompt, decode tokens/s at batch 1, and decode as
 * a fraction of the bandwidth limit (weight bytes read per token over the
 * measured copy bandwidth). `make bench` runs it on random weights of
 * Qwen2-0.5B's shape:
 *
 *   bench-engine --model DIR [--threads N] [--prompt 256] [--decode 32]
 */
#include "../engine/cpu.h"
#include "../engine/generate.h"
#include "../engine/matmul.h"
#include "../engine/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct copy_task {
	uint8_t *dst;
	const uint8_t *src;
	size_t len;
	double sum;
	int read_only;
};

static void copy_worker(void *arg, int i, int n)
{
	struct copy_task *ct = arg;
	size_t per = (ct->len / (size_t)n) & ~(size_t)4095;
	size_t off = per * (size_t)i, len = i == n - 1 ? ct->len - off : per;
	if (!ct->read_only) {
		memcpy(ct->dst + off, ct->src + off, len);
		return;
	}
	/* A read-only pass through the engine's own vector dot product. */
	const float *p = (const float *)(ct->src + off);
	size_t nf = len / sizeof(float);
	double t = 0;
	for (size_t k = 0; k < nf; k += 1 << 20)
		t += cpu_dot(p + k, p + k, (int)(nf - k < (1 << 20) ? nf - k : 1 << 20));
	if (i == 0)
		ct->sum = t;
}

/* Best of reps passes over len bytes with all pool threads, in bytes/s:
 * for a copy, bytes read plus bytes written. */
static double bandwidth(struct tpool *tp, size_t len, int read_only, int reps)
{
	uint8_t *a = malloc(len), *b = malloc(len);
	if (!a || !b) {
		fprintf(stderr, "bench-engine: out of memory for the bandwidth buffers\n");
		exit(1);
	}
	memset(a, 0x3f, len); /* 0.747f: no denormals in the read pass */
	memset(b, 0x3e, len);
	struct copy_task ct = {b, a, len, 0, read_only};
	double best = 0;
	for (int r = 0; r < reps; r++) {
		double t0 = ember_now();
		tp_run(tp, copy_worker, &ct);
		double bw = (double)len * (read_only ? 1 : 2) / (ember_now() - t0);
		best = bw > best ? bw : best;
	}
	free(a);
	free(b);
	return best;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	const char *dir = NULL;
	int threads = 0, prompt = 256, decode = 32;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--model") == 0)
			dir = argv[i + 1];
		else if (strcmp(argv[i], "--threads") == 0)
			threads = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--prompt") == 0)
			prompt = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--decode") == 0)
			decode = atoi(argv[i + 1]);
	}
	if (!dir || prompt < 1 || prompt > 4000 || decode < 1 || decode > 4000) {
		fprintf(stderr, "usage: bench-engine --model DIR [--threads N] [--prompt N] [--decode N]\n");
		return 2;
	}
	char err[EMBER_ERR_LEN];
	struct model *m;
	if (model_open_dir(dir, &m, err) < 0) {
		fprintf(stderr, "bench-engine: %s\n", err);
		return 1;
	}
	struct cpu_opts o = {.threads = threads, .max_tokens = prompt, .max_ctx = prompt + decode + 8};
	struct backend *b;
	if (cpu_backend_create(m, &o, &b, err) < 0) {
		fprintf(stderr, "bench-engine: %s\n", err);
		return 1;
	}
	int nt = threads > 0 ? threads : tp_cpu_count();
	struct tpool *tp;
	if (tp_create(nt, &tp, err) < 0) {
		fprintf(stderr, "bench-engine: %s\n", err);
		return 1;
	}
	const struct model_config *c = &m->cfg;
	printf("model %s: %s, hidden %d, %d layers, %d heads, %d KV heads, intermediate %d, vocab %d\n",
	       dir, c->arch_name, c->hidden, c->n_layers, c->n_heads, c->n_kv_heads, c->intermediate,
	       c->vocab);
	const struct program *p = &m->prog;
	const struct weight *head = &p->weights[p->ops[p->n_ops - 1].w]; /* the LM head's */
	printf("weights read per decoded token: %.1f MB (%s); %d threads, %s kernels\n",
	       m->weight_bytes / 1e6, dtype_name(head->part[0].dtype), nt, cpu_isa());

	float *logits = malloc((size_t)c->vocab * sizeof *logits);
	int32_t *ids = malloc((size_t)prompt * sizeof *ids);
	uint64_t s = 42;
	for (int i = 0; i < prompt; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		ids[i] = (int32_t)((s >> 33) % (uint64_t)(c->vocab < 100000 ? c->vocab : 100000));
	}
	/* Warm-up: faults the weights in and trains the caches. */
	if (gen_prefill(b, 0, ids, 8, 0, logits, err) < 0) {
		fprintf(stderr, "bench-engine: %s\n", err);
		return 1;
	}

	/* Memory bandwidth with as many threads as the engine uses, over
	 * buffers larger than any cache. */
	size_t bw_len = (size_t)1 << 30;
	double copy_bw = bandwidth(tp, bw_len, 0, 5);
	double read_bw = bandwidth(tp, bw_len, 1, 5);

	enum { REPS = 3 };
	double pre[REPS];
	for (int r = 0; r < REPS; r++) {
		double t0 = ember_now();
		if (gen_prefill(b, 0, ids, prompt, 0, logits, err) < 0) {
			fprintf(stderr, "bench-engine: %s\n", err);
			return 1;
		}
		pre[r] = ember_now() - t0;
	}
	qsort(pre, REPS, sizeof pre[0], cmp_double);

	double *step = malloc((size_t)decode * sizeof *step);
	int32_t tok = gen_argmax(logits, c->vocab);
	for (int i = 0; i < decode; i++) {
		struct be_entry e = {0, prompt + i, tok, 0};
		double t0 = ember_now();
		if (be_forward(b, &e, 1, logits, err) < 0) {
			fprintf(stderr, "bench-engine: %s\n", err);
			return 1;
		}
		step[i] = ember_now() - t0;
		tok = gen_argmax(logits, c->vocab);
	}
	qsort(step, (size_t)decode, sizeof step[0], cmp_double);
	double dec_med = step[decode / 2];
	double limit = copy_bw / (double)m->weight_bytes;
	double read_limit = read_bw / (double)m->weight_bytes;

	printf("\n%-44s %10s\n", "measure", "value");
	printf("%-44s %10.2f\n", "copy bandwidth, GB/s (read + written)", copy_bw / 1e9);
	printf("%-44s %10.2f\n", "read bandwidth, GB/s", read_bw / 1e9);
	printf("%-44s %10.1f\n", "prefill tokens/s (prompt of N, median of 3)", prompt / pre[REPS / 2]);
	printf("%-44s %10.2f\n", "decode tokens/s, batch 1 (median step)", 1.0 / dec_med);
	printf("%-44s %10.2f\n", "bandwidth limit, tokens/s (copy)", limit);
	printf("%-44s %10.2f\n", "bandwidth limit, tokens/s (read)", read_limit);
	printf("%-44s %9.0f%%\n", "decode / copy-bandwidth limit", 100.0 / dec_med / limit);
	printf("%-44s %9.0f%%\n", "decode / read-bandwidth limit", 100.0 / dec_med / read_limit);
	printf("(prompt N = %d, decode steps = %d at context %d..%d)\n", prompt, decode, prompt,
	       prompt + decode);
	free(step);
	free(ids);
	free(logits);
	tp_destroy(tp);
	be_destroy(b);
	model_close(m);
	return 0;
}
