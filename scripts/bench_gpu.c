/* bench-gpu: the CUDA backend's speed on a model of real shape, against the
 * GPU's own copy bandwidth measured in the same run. Prints one JSON object:
 * the weights' upload rate, decode tokens/s at batch 1 and as a fraction of
 * the bandwidth limit (weight bytes per token over the device-to-device
 * copy bandwidth, bytes read plus written), aggregate decode tokens/s at
 * several batch sizes, and prefill tokens/s for 512- and 2048-token
 * prompts. Decode steps are sampled on the GPU (greedy, be_sample) and
 * replayed from CUDA graphs, as the server runs them: each number includes
 * the step's upload and the tokens' trip back. Prefill brings its last
 * logits to the host. `make bench-gpu` runs it (beside transformers) on
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
	struct be_entry *e = malloc((size_t)(n > p ? n : p) * sizeof *e);
	int32_t *next = malloc((size_t)n * sizeof *next);
	struct sampler_row *rows = calloc((size_t)n, sizeof *rows);
	struct sampler_result *out = malloc((size_t)n * sizeof *out);
	if (!logits || !e || !next || !rows || !out)
		die("decode", "out of memory");
	for (int s = 0; s < n; s++) {
		sampler_params_default(&rows[s].p);
		rows[s].p.temperature = 0;
	}
	for (int s = 0; s < n; s++) {
		for (int i = 0; i < p; i++)
			e[i] = (struct be_entry){s, i, (int32_t)((s * 7919 + i * 104729) % 30000 + 100),
						 i == p - 1 ? 0 : -1};
		if (be_forward(b, e, p, logits, err) < 0)
			die("prefill", err);
		next[s] = gen_argmax(logits, vocab);
	}
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
	struct cuda_opts o = {.max_tokens = 2048, .max_seqs = most, .max_ctx = 4096, .kv_blocks = 0};
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
	printf(" \"decode_batched_tps\": {");
	const char *sep = "";
	for (const char *p = batches; *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p)) {
		int n = atoi(p);
		fflush(stdout);
		printf("%s\"%d\": %.1f", sep, n, decode_rate(b, n, 16, steps / 2, m->cfg.vocab));
		sep = ", ";
	}
	printf("},\n");
	fflush(stdout);
	double p512 = prefill_rate(b, 512, m->cfg.vocab);
	double p2048 = prefill_rate(b, 2048, m->cfg.vocab);
	printf(" \"prefill_512_tps\": %.1f, \"prefill_2048_tps\": %.1f}\n", p512, p2048);
	be_destroy(b);
	model_close(m);
	return 0;
}
