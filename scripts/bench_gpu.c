/* bench-gpu: the CUDA backend's speed on a model of real shape, against the
 * GPU's own copy bandwidth measured in the same run. Prints one JSON object:
 * the weights' upload rate, decode tokens/s at batch 1 and as a fraction of
 * the bandwidth limit (weight bytes per token over the device-to-device
 * copy bandwidth, bytes read plus written), aggregate decode tokens/s at
 * several batch sizes, and prefill tokens/s for 512- and 2048-token
 * prompts. Decode steps are sampled on the GPU (greedy, be_sample) and
 * replayed from CUDA graphs, as the server runs them: each number includes
 * the step's upload and the tokens' trip back. Prefill brings its last
 * logits to the host. Then decode at batch 1 with a context of 4,096
 * (whose keys and values count in its limit), where a step's time goes
 * by kernel class with each class's bandwidth (cuda_step_split), and the
 * step time of n sequences with our decode products and with cublasLt's
 * (where they cross). `make bench-gpu` runs it (beside transformers) on
 * random weights of two real shapes:
 *
 *   bench-gpu --model DIR [--decode 128] [--batches 8,32,64,128]
 */
#include "../engine/generate.h"
#include "../engine/model.h"
#include "../engine/sampler.h"
#include "../kernels/cuda.h"

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *what, const char *err)
{
	fprintf(stderr, "bench-gpu: %s: %s\n", what, err);
	exit(1);
}

/* Device-to-device copy bandwidth, best of 10 copies of 1 GiB, counting
 * bytes read and written. */
static double copy_bandwidth(void)
{
	size_t len = (size_t)1 << 30;
	void *a, *b;
	if (cudaMalloc(&a, len) != cudaSuccess || cudaMalloc(&b, len) != cudaSuccess)
		die("cudaMalloc", "no room for the bandwidth buffers");
	cudaMemset(a, 1, len);
	cudaEvent_t e0, e1;
	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	float best = 1e30f;
	for (int r = 0; r < 12; r++) {
		cudaEventRecord(e0, 0);
		cudaMemcpyAsync(b, a, len, cudaMemcpyDeviceToDevice, 0);
		cudaEventRecord(e1, 0);
		cudaEventSynchronize(e1);
		float ms;
		cudaEventElapsedTime(&ms, e0, e1);
		if (r >= 2 && ms < best)
			best = ms;
	}
	cudaFree(a);
	cudaFree(b);
	return 2.0 * (double)len / (best * 1e-3);
}

/* n sequences, each a prompt of p tokens, then steps decode steps of all
 * together (greedy, sampled on the backend): tokens/s of the decode. */
static double decode_rate(struct backend *b, int n, int p, int steps, int vocab)
{
	char err[EMBER_ERR_LEN];
	float *logits = malloc((size_t)vocab * sizeof(float));
	struct be_entry *e = malloc((size_t)n * sizeof *e);
	int32_t *next = malloc((size_t)n * sizeof *next);
	struct sampler_row *rows = calloc((size_t)n, sizeof *rows);
	struct sampler_result *out = malloc((size_t)n * sizeof *out);
	if (!logits || !e || !next || !rows || !out)
		die("decode", "out of memory");
	for (int s = 0; s < n; s++) {
		sampler_params_default(&rows[s].p);
		rows[s].p.temperature = 0;
	}
	int32_t *ids = malloc((size_t)p * sizeof *ids);
	for (int s = 0; s < n; s++) {
		for (int i = 0; i < p; i++)
			ids[i] = (int32_t)((s * 7919 + i * 104729) % 30000 + 100);
		if (!ids || gen_prefill(b, s, ids, p, 0, logits, err) < 0)
			die("prefill", ids ? err : "out of memory");
		next[s] = gen_argmax(logits, vocab);
	}
	free(ids);
	double t0 = 0;
	for (int k = -2; k < steps; k++) { /* two steps to warm up */
		if (k == 0)
			t0 = ember_now();
		for (int s = 0; s < n; s++)
			e[s] = (struct be_entry){s, p + k + 2, next[s], s};
		if (be_sample(b, e, n, rows, out, err) < 0)
			die("decode", err);
		for (int s = 0; s < n; s++)
			next[s] = out[s].token;
	}
	double dt = ember_now() - t0;
	free(logits);
	free(e);
	free(next);
	free(rows);
	free(out);
	return (double)n * steps / dt;
}

/* A prompt of p tokens in steps of the backend's max_tokens: tokens/s,
 * best of three (sequence 0, from position 0 each time). */
static double prefill_rate(struct backend *b, int p, int vocab)
{
	char err[EMBER_ERR_LEN];
	float *logits = malloc((size_t)vocab * sizeof(float));
	int32_t *ids = malloc((size_t)p * sizeof *ids);
	for (int i = 0; i < p; i++)
		ids[i] = (int32_t)((i * 104729) % 30000 + 100);
	double best = 1e30;
	for (int r = 0; r < 4; r++) {
		double t0 = ember_now();
		if (gen_prefill(b, 0, ids, p, 0, logits, err) < 0)
			die("prefill", err);
		double dt = ember_now() - t0;
		if (r > 0 && dt < best)
			best = dt;
	}
	free(logits);
	free(ids);
	return p / best;
}

/* Where a decode step of sequences 0..n-1 goes, each at position pos
 * (after decode_rate, which left their caches that long), by kernel
 * class: {"products": {"us": .., "gbs": ..}, ...}. */
static void print_split(struct backend *b, int n, int pos)
{
	char err[EMBER_ERR_LEN];
	struct be_entry *e = malloc((size_t)n * sizeof *e);
	struct cuda_split best = {0}, sp;
	double best_s = 1e30;
	for (int s = 0; s < n; s++)
		e[s] = (struct be_entry){s, pos, 100 + s, s};
	for (int r = 0; r < 5; r++) { /* the best of five */
		if (cuda_step_split(b, e, n, &sp, err) < 0)
			die("step split", err);
		double t = sp.s[0] + sp.s[1] + sp.s[2];
		if (t < best_s)
			best_s = t, best = sp;
	}
	static const char *names[CUDA_SPLITS] = {"products", "attention", "rest"};
	printf("{\"step_us\": %.1f", best_s * 1e6);
	for (int c = 0; c < CUDA_SPLITS; c++)
		printf(", \"%s\": {\"us\": %.1f, \"gbs\": %.0f}", names[c], best.s[c] * 1e6,
		       best.s[c] > 0 ? best.bytes[c] / best.s[c] / 1e9 : 0);
	printf(", \"parts\": [");
	for (int k = 0; k < best.n_parts; k++) {
		const struct cuda_split_part *q = &best.part[k];
		printf("%s{\"what\": \"%s\", \"count\": %d, \"us\": %.1f, \"gbs\": %.0f}",
		       k ? ", " : "", q->what, q->count, q->s * 1e6,
		       q->s > 0 ? q->bytes / q->s / 1e9 : 0);
	}
	printf("]}");
	free(e);
}

/* Steps of n sequences' next tokens (each at position 16), sampled greedy
 * kernel by kernel: seconds a step, median of 9 after 2. */
static double step_time(struct backend *b, int n)
{
	char err[EMBER_ERR_LEN];
	struct be_entry *e = malloc((size_t)n * sizeof *e);
	struct sampler_row *rows = calloc((size_t)n, sizeof *rows);
	struct sampler_result *out = malloc((size_t)n * sizeof *out);
	double t[11];
	if (!e || !rows || !out)
		die("steps", "out of memory");
	for (int s = 0; s < n; s++) {
		e[s] = (struct be_entry){s, 16, 100 + 7 * s, s};
		sampler_params_default(&rows[s].p);
		rows[s].p.temperature = 0;
	}
	for (int r = 0; r < 11; r++) {
		double t0 = ember_now();
		if (be_sample(b, e, n, rows, out, err) < 0)
			die("steps", err);
		t[r] = ember_now() - t0;
	}
	for (int i = 3; i < 11; i++) /* sort t[2..10] */
		for (int j = i; j > 2 && t[j] < t[j - 1]; j--) {
			double x = t[j];
			t[j] = t[j - 1], t[j - 1] = x;
		}
	free(e), free(rows), free(out);
	return t[6];
}

/* The decode products' crossover: the same steps of n sequences kernel by
 * kernel with cuda_dgemm and with cublasLt, n from 1 to CUDA_DGEMM_ROWS. */
static void print_crossover(const struct model *m)
{
	char err[EMBER_ERR_LEN];
	int most = 512;
	struct cuda_opts o = {.max_tokens = most, .max_seqs = most, .max_ctx = 64, .eager = true};
	struct backend *ours, *lt;
	if (cuda_backend_create(m, &o, &ours, NULL, err) < 0)
		die("cuda backend", err);
	o.dgemm_rows = -1;
	if (cuda_backend_create(m, &o, &lt, NULL, err) < 0)
		die("cuda backend", err);
	for (int s = 0; s < most; s++) { /* 16 positions of context each */
		struct be_entry e[16];
		float *l = malloc((size_t)m->cfg.vocab * 4);
		for (int i = 0; i < 16; i++)
			e[i] = (struct be_entry){s, i, 100 + 13 * i + s, i == 15 ? 0 : -1};
		if (!l || be_forward(ours, e, 16, l, err) < 0 || be_forward(lt, e, 16, l, err) < 0)
			die("crossover", l ? err : "out of memory");
		free(l);
	}
	const char *sep = "";
	printf("{");
	for (int n = 1; n <= most; n *= 2) {
		double a = step_time(ours, n), c = step_time(lt, n);
		printf("%s\"%d\": [%.1f, %.1f]", sep, n, a * 1e6, c * 1e6);
		sep = ", ";
		fflush(stdout);
	}
	printf("}");
	be_destroy(ours);
	be_destroy(lt);
}

int main(int argc, char **argv)
{
	const char *dir = NULL, *batches = "8,32,64,128";
	int steps = 128;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
			dir = argv[++i];
		else if (strcmp(argv[i], "--decode") == 0 && i + 1 < argc)
			steps = atoi(argv[++i]);
		else if (strcmp(argv[i], "--batches") == 0 && i + 1 < argc)
			batches = argv[++i];
		else
			dir = NULL, i = argc;
	}
	if (!dir || steps < 1) {
		fprintf(stderr, "usage: bench-gpu --model DIR [--decode 128] [--batches 8,32,64,128]\n");
		return 2;
	}
	char err[EMBER_ERR_LEN];
	struct model *m;
	if (model_open_dir(dir, &m, err) < 0)
		die(dir, err);
	int most = 1;
	for (const char *p = batches; *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p))
		if (atoi(p) > most)
			most = atoi(p);
	int long_ctx = 4096;
	struct cuda_opts o = {.max_tokens = 2048, .max_seqs = most, .max_ctx = long_ctx + steps + 8,
			      .kv_blocks = 0};
	struct cuda_load_stats st;
	struct backend *b;
	double t0 = ember_now();
	if (cuda_backend_create(m, &o, &b, &st, err) < 0)
		die("cuda backend", err);
	double create_s = ember_now() - t0;
	double bw = copy_bandwidth();
	double limit = bw / (double)m->weight_bytes;
	printf("{\"model\": \"%s\", \"weight_bytes_per_token\": %zu, \"copy_bandwidth_gbs\": %.1f,\n",
	       dir, m->weight_bytes, bw / 1e9);
	printf(" \"create_s\": %.3f, \"cuda_init_s\": %.3f, \"upload_s\": %.3f, \"upload_gbs\": %.2f,"
	       " \"upload_threads\": %d, \"graphs\": %d, \"graph_capture_s\": %.3f,"
	       " \"kv_blocks\": %d,\n", create_s, st.init_s, st.upload_s,
	       st.upload_bytes / 1e9 / st.upload_s, st.upload_threads, st.graphs, st.graph_s,
	       b->kv_blocks);
	fflush(stdout);
	double d1 = decode_rate(b, 1, 16, steps, m->cfg.vocab);
	printf(" \"decode_batch1_tps\": %.1f, \"bandwidth_limit_tps\": %.1f, \"fraction_of_limit\": %.3f,\n",
	       d1, limit, d1 / limit);
	printf(" \"step_split_batch1\": ");
	print_split(b, 1, 16 + steps + 2);
	/* A context of long_ctx: its keys and values are read too. */
	double kv = (double)b->kv_block_bytes / KV_BLOCK * (long_ctx + steps / 2);
	double dl = decode_rate(b, 1, long_ctx, steps, m->cfg.vocab), ll = bw / (m->weight_bytes + kv);
	printf(",\n \"decode_batch1_ctx%d_tps\": %.1f, \"ctx%d_limit_tps\": %.1f, "
	       "\"ctx%d_fraction_of_limit\": %.3f,\n \"step_split_batch1_ctx%d\": ", long_ctx, dl,
	       long_ctx, ll, long_ctx, dl / ll, long_ctx);
	print_split(b, 1, long_ctx + steps + 2);
	printf(",\n");
	printf(" \"decode_batched_tps\": {");
	const char *sep = "";
	for (const char *p = batches; *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p)) {
		int n = atoi(p);
		fflush(stdout);
		printf("%s\"%d\": %.1f", sep, n, decode_rate(b, n, 16, steps / 2, m->cfg.vocab));
		sep = ", ";
	}
	printf("},\n \"step_split_batch%d\": ", most);
	print_split(b, most, 16 + steps / 2 + 2);
	printf(",\n");
	fflush(stdout);
	double p512 = prefill_rate(b, 512, m->cfg.vocab);
	double p2048 = prefill_rate(b, 2048, m->cfg.vocab);
	printf(" \"prefill_512_tps\": %.1f, \"prefill_2048_tps\": %.1f,\n", p512, p2048);
	be_destroy(b);
	printf(" \"step_us_dgemm_cublaslt\": ");
	print_crossover(m);
	printf("}\n");
	model_close(m);
	return 0;
}
