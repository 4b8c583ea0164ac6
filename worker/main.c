/* ember-worker: for now its command-line mode, which loads a model and
 * prints a greedy continuation of a prompt given as token ids. The FastCGI
 * server modes come with the worker issue. Runs as its own process. */
#include "../engine/cpu.h"
#include "../engine/generate.h"
#include "../engine/matmul.h"
#include "../engine/model.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ember-worker --model DIR --prompt-ids ID,ID,... [options]\n"
		"\n"
		"  --model DIR          Hugging Face model directory (config.json, safetensors)\n"
		"  --prompt-ids LIST    prompt as comma-separated token ids\n"
		"  --max-tokens N       tokens to generate (default 16)\n"
		"  --threads N          CPU threads (default: one per processor)\n"
		"  --ctx N              context length to allocate (default: the model's, at most 4096)\n"
		"  --help               this text\n"
		"\n"
		"Prints the greedy continuation as comma-separated ids on stdout and the\n"
		"timing on stderr.\n");
}

static int parse_int(const char *flag, const char *s, int lo, int hi, int *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, "ember-worker: %s wants an integer in %d..%d, not '%s'\n", flag, lo, hi,
			s);
		return -1;
	}
	*out = (int)v;
	return 0;
}

/* Parses "1,2,3" into a malloc'd array. Returns the count or -1. */
static int parse_ids(const char *s, int32_t **out)
{
	size_t n = 1;
	for (const char *p = s; *p; p++)
		n += *p == ',';
	if (n > INT_MAX / 2)
		return -1;
	int32_t *ids = malloc(n * sizeof *ids);
	if (!ids)
		return -1;
	const char *p = s;
	for (size_t i = 0; i < n; i++) {
		char *end;
		errno = 0;
		long v = strtol(p, &end, 10);
		if (errno || end == p || v < 0 || v > INT32_MAX || (*end != ',' && *end)) {
			free(ids);
			return -1;
		}
		ids[i] = (int32_t)v;
		p = end + (*end == ',');
	}
	*out = ids;
	return (int)n;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	const char *model_dir = NULL, *ids_arg = NULL;
	int max_tokens = 16;
	struct cpu_opts opts = {0};
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "ember-worker: %s needs a value (see --help)\n", a);
			return 2;
		}
		const char *v = argv[++i];
		int rc = 0;
		if (strcmp(a, "--model") == 0)
			model_dir = v;
		else if (strcmp(a, "--prompt-ids") == 0)
			ids_arg = v;
		else if (strcmp(a, "--max-tokens") == 0)
			rc = parse_int(a, v, 0, 1 << 20, &max_tokens);
		else if (strcmp(a, "--threads") == 0)
			rc = parse_int(a, v, 1, 1024, &opts.threads);
		else if (strcmp(a, "--ctx") == 0)
			rc = parse_int(a, v, 1, 1 << 24, &opts.max_ctx);
		else {
			fprintf(stderr, "ember-worker: unknown option %s (see --help)\n", a);
			return 2;
		}
		if (rc < 0)
			return 2;
	}
	if (!model_dir || !ids_arg) {
		usage(stderr);
		return 2;
	}
	int32_t *ids;
	int n = parse_ids(ids_arg, &ids);
	if (n < 0) {
		fprintf(stderr, "ember-worker: --prompt-ids wants comma-separated token ids\n");
		return 2;
	}
	char err[EMBER_ERR_LEN];
	struct model *m = NULL;
	struct backend *b = NULL;
	float *logits = NULL;
	int32_t *out = NULL;
	int status = 1;
	double t0 = now();
	if (model_open_dir(model_dir, &m, err) < 0) {
		fprintf(stderr, "ember-worker: %s\n", err);
		goto done;
	}
	for (int i = 0; i < n; i++) {
		if (ids[i] >= m->cfg.vocab) {
			fprintf(stderr, "ember-worker: token id %d is outside the vocabulary of %d\n",
				ids[i], m->cfg.vocab);
			goto done;
		}
	}
	if (cpu_backend_create(m, &opts, &b, err) < 0) {
		fprintf(stderr, "ember-worker: %s\n", err);
		goto done;
	}
	logits = malloc((size_t)m->cfg.vocab * sizeof *logits);
	out = malloc(((size_t)max_tokens + 1) * sizeof *out);
	if (!logits || !out) {
		fprintf(stderr, "ember-worker: out of memory\n");
		goto done;
	}
	double t1 = now();
	if (gen_greedy(b, 0, ids, n, max_tokens, out, logits, err) < 0) {
		fprintf(stderr, "ember-worker: %s\n", err);
		goto done;
	}
	double t2 = now();
	for (int i = 0; i < max_tokens; i++)
		printf("%s%d", i ? "," : "", out[i]);
	printf("\n");
	fprintf(stderr, "ember-worker: %s (%s), %d prompt + %d new tokens in %.3f s (load %.3f s)\n",
		m->cfg.arch_name, cpu_isa(), n, max_tokens, t2 - t1, t1 - t0);
	status = 0;
done:
	free(out);
	free(logits);
	be_destroy(b);
	model_close(m);
	free(ids);
	return status;
}
