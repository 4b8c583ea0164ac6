/* bench-sched: the scheduler on a model of real shape. Prints aggregate
 * decode tokens/s with 1, 4 and 16 sequences at once, and the time to first
 * token of a short prompt submitted while a 2,000-token prompt is being
 * prefilled, beside the same short prompt alone. `make bench` runs it on
 * random weights of Qwen2-0.5B's shape:
 *
 *   bench-sched --model DIR [--threads N] [--max-batch-tokens N]
 */
#include "../engine/cpu.h"
#include "../engine/model.h"
#include "../engine/sched.h"
#include "../engine/threads.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct seqstat {
	int n;
	double first;  /* time of the first token */
	bool done;
};

static void on_token(void *arg, const struct sampler_result *r, const char *text, size_t len)
{
	(void)r, (void)text, (void)len;
	struct seqstat *st = arg;
	if (st->n++ == 0)
		st->first = ember_now();
}

static void on_finish(void *arg, enum finish_reason why, const char *text, size_t len)
{
	(void)why, (void)text, (void)len;
	((struct seqstat *)arg)->done = true;
}

static void prompt_ids(int32_t *p, int n, uint64_t seed)
{
	for (int i = 0; i < n; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		p[i] = (int32_t)((seed >> 33) % 100000);
	}
}

static int submit(struct sched *s, const int32_t *p, int n, int max_tokens, struct seqstat *st)
{
	char err[EMBER_ERR_LEN];
	struct sched_request q = {.prompt = p, .n_prompt = n, .max_tokens = max_tokens,
				  .on_token = on_token, .on_finish = on_finish, .arg = st};
	sampler_params_default(&q.sampling);
	q.sampling.temperature = 0;
	memset(st, 0, sizeof *st);
	if (sched_submit(s, &q, NULL, err) < 0) {
		fprintf(stderr, "bench-sched: %s\n", err);
		exit(1);
	}
	return 0;
}

static void step(struct sched *s)
{
	char err[EMBER_ERR_LEN];
	if (sched_step(s, err) < 0) {
		fprintf(stderr, "bench-sched: %s\n", err);
		exit(1);
	}
}

int main(int argc, char **argv)
{
	const char *dir = NULL;
	int threads = 0, batch = 256;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--model") == 0)
			dir = argv[i + 1];
		else if (strcmp(argv[i], "--threads") == 0)
			threads = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--max-batch-tokens") == 0)
			batch = atoi(argv[i + 1]);
	}
	if (!dir || batch < 1) {
		fprintf(stderr, "usage: bench-sched --model DIR [--threads N] [--max-batch-tokens N]\n");
		return 2;
	}
	char err[EMBER_ERR_LEN];
	struct model *m;
	if (model_open_dir(dir, &m, err) < 0) {
		fprintf(stderr, "bench-sched: %s\n", err);
		return 1;
	}
	struct cpu_opts o = {.threads = threads, .max_tokens = batch, .max_seqs = 17, .max_ctx = 2304,
			     .kv_blocks = 16 * 8 + 2304 / KV_BLOCK + 16};
	struct backend *b;
	struct sched *s;
	if (cpu_backend_create(m, &o, &b, err) < 0 ||
	    sched_create(b, &(struct sched_opts){.max_batch_tokens = batch}, &s, err) < 0) {
		fprintf(stderr, "bench-sched: %s\n", err);
		return 1;
	}
	printf("model %s: %s, %d threads, steps of at most %d tokens\n\n", dir, m->cfg.arch_name,
	       threads > 0 ? threads : tp_cpu_count(), batch);
	printf("%-52s %10s\n", "measure", "value");
	static int32_t p[2048];
	static struct seqstat st[17];
	/* Decode: N sequences of 32-token prompts; tokens made once all have
	 * started, over the time from then to the end. */
	int counts[] = {1, 4, 16};
	for (int c = 0; c < 3; c++) {
		int n = counts[c];
		for (int i = 0; i < n; i++) {
			prompt_ids(p + 32 * i, 32, 1000 + i);
			submit(s, p + 32 * i, 32, 48, &st[i]);
		}
		bool started = false;
		double t0 = 0;
		int base = 0;
		for (;;) {
			step(s);
			int all = 1, total = 0, live = 0;
			for (int i = 0; i < n; i++) {
				all &= st[i].n > 0;
				total += st[i].n;
				live += !st[i].done;
			}
			if (!started && all) {
				started = true;
				t0 = ember_now();
				base = total;
			}
			if (!live) {
				double dt = ember_now() - t0;
				char label[64];
				snprintf(label, sizeof label, "decode tokens/s, %d sequence%s (aggregate)", n,
					 n > 1 ? "s" : "");
				printf("%-52s %10.1f\n", label, (total - base) / dt);
				break;
			}
		}
	}
	/* Time to first token of a 16-token prompt: alone, and submitted one
	 * step after a 2,000-token prompt started its prefill. */
	prompt_ids(p, 16, 7);
	double t0 = ember_now();
	submit(s, p, 16, 1, &st[0]);
	while (!st[0].done)
		step(s);
	double alone = st[0].first - t0;
	prompt_ids(p + 16, 2000, 8);
	submit(s, p + 16, 2000, 1, &st[1]);
	step(s);
	t0 = ember_now();
	submit(s, p, 16, 1, &st[0]);
	while (!st[0].done)
		step(s);
	double beside = st[0].first - t0;
	while (!st[1].done)
		step(s);
	double long_total = st[1].first - t0;
	printf("%-52s %10.3f\n", "time to first token, 16-token prompt alone, s", alone);
	printf("%-52s %10.3f\n", "... while a 2,000-token prompt prefills, s", beside);
	printf("%-52s %10.3f\n", "... the 2,000-token prompt's own, s", long_total);
	sched_destroy(s);
	be_destroy(b);
	model_close(m);
	return 0;
}
