/* ember-worker's command-line mode: loads a model and prints the
 * continuation of a prompt given as text, a chat turn or token ids, for one
 * or several copies at once, through the scheduler. Not the server modes
 * (server.c). Runs as its own process. */
#include "cli.h"
#include "../engine/chat.h"
#include "../engine/cpu.h"
#include "../engine/matmul.h"
#include "../engine/model.h"
#include "../engine/sched.h"
#include "../engine/tokenizer.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

struct printer {
	bool ids_only;               /* print ids, not text */
	bool stream_now;             /* print as tokens come, else at the end */
	int n;                       /* tokens made */
	struct sbuf out;             /* what to print at the end */
};

/* Prints, or keeps for the end, len bytes. */
static void put(struct printer *p, const char *s, size_t len)
{
	if (p->stream_now) {
		fwrite(s, 1, len, stdout);
		fflush(stdout);
		return;
	}
	sbuf_put(&p->out, s, len);
}

static void print_token(void *arg, const struct sampler_result *r, const char *text, size_t len)
{
	struct printer *p = arg;
	if (p->ids_only) {
		char buf[16];
		int k = snprintf(buf, sizeof buf, "%s%d", p->n ? "," : "", r->token);
		put(p, buf, (size_t)k);
	} else {
		put(p, text, len);
	}
	p->n++;
}

static void print_finish(void *arg, enum finish_reason why, const char *text, size_t len)
{
	struct printer *p = arg;
	(void)why;
	if (!p->ids_only)
		put(p, text, len);
}

int cli_run(const struct cli_opts *co)
{
	const char *model_dir = co->model_dir, *ids_arg = co->ids_arg, *text = co->text;
	const char *chat = co->chat, *system = co->system, *template_name = co->template_name;
	bool print_ids = co->print_ids;
	int max_tokens = co->max_tokens, parallel = co->parallel, kv_mb = co->kv_mb;
	int max_batch = co->max_batch;
	float temperature = co->temperature;
	bool temperature_set = co->temperature_set;
	uint64_t seed = co->seed;
	const char *const *stops = co->stops;
	int n_stop = co->n_stop;
	struct device_opts opts = {.threads = co->threads, .max_ctx = co->ctx,
				   .gpu_memory_fraction = co->gpu_memory_fraction};
	int family = -1;
	if (template_name && (family = chat_family_from_name(template_name)) < 0) {
		fprintf(stderr, "ember-worker: --chat-template %s is not one of " CHAT_FAMILY_NAMES "\n",
			template_name);
		return 2;
	}
	int32_t *ids = NULL;
	int n = 0;
	if (ids_arg && (n = parse_ids(ids_arg, &ids)) < 0) {
		fprintf(stderr, "ember-worker: --prompt-ids wants comma-separated token ids\n");
		return 2;
	}
	char err[EMBER_ERR_LEN];
	struct model *m = NULL;
	struct backend *b = NULL;
	struct tokenizer *tok = NULL;
	struct tok_ctx *ctx = NULL;
	struct sched *sched = NULL;
	struct printer *printers = NULL;
	int status = 1;
	double t0 = ember_now();
	if (model_open_dir(model_dir, &m, err) < 0) {
		fprintf(stderr, "ember-worker: %s\n", err);
		goto done;
	}
	char *rendered = NULL;
	if (text || chat) {
		size_t nn = 0, cap = 0;
		if (tok_load(m->files, &tok, err) < 0 || !(ctx = tok_ctx_create(tok))) {
			fprintf(stderr, "ember-worker: %s\n", tok ? "out of memory" : err);
			goto done;
		}
		if (chat) {
			/* The template writes the BOS itself, as text. */
			struct chat_msg msgs[2] = {{.role = "system", .content = system},
						   {.role = "user", .content = chat}};
			size_t blen = 0;
			const char *bos = tok_bos(tok) >= 0 ? tok_piece(tok, tok_bos(tok), &blen) : "";
			char bos_text[256];
			snprintf(bos_text, sizeof bos_text, "%.*s", (int)blen, bos ? bos : "");
			if (family < 0 && (family = chat_detect(tok_chat_template(tok), err)) < 0) {
				fprintf(stderr, "ember-worker: %s\n", err);
				goto done;
			}
			if (chat_render((enum chat_family)family, system ? msgs : msgs + 1, system ? 2 : 1, NULL,
					true, false, bos_text, &rendered, err) < 0) {
				fprintf(stderr, "ember-worker: %s\n", err);
				goto done;
			}
		}
		const char *in = chat ? rendered : text;
		int rc = tok_encode(tok, ctx, in, strlen(in), !chat, &ids, &nn, &cap, err);
		free(rendered);
		if (rc < 0) {
			fprintf(stderr, "ember-worker: %s\n", err);
			goto done;
		}
		if (nn == 0 || nn > INT_MAX / 2) {
			fprintf(stderr, "ember-worker: the prompt is empty\n");
			goto done;
		}
		n = (int)nn;
		if (print_ids) {
			fprintf(stderr, "prompt ids:");
			for (int i = 0; i < n; i++)
				fprintf(stderr, "%s%d", i ? "," : " ", ids[i]);
			fprintf(stderr, "\n");
		}
	}
	for (int i = 0; i < n; i++) {
		if (ids[i] >= m->cfg.vocab) {
			fprintf(stderr, "ember-worker: token id %d is outside the vocabulary of %d\n",
				ids[i], m->cfg.vocab);
			goto done;
		}
	}
	/* Every copy of the prompt has a sequence of its own in the pool. */
	int ctx_len = opts.max_ctx > 0 ? opts.max_ctx : 4096;
	if (ctx_len > m->cfg.max_pos)
		ctx_len = m->cfg.max_pos;
	opts.max_seqs = parallel;
	size_t block_bytes = device_resolve(co->device)->kv_block_bytes(m);
	opts.kv_blocks = kv_mb > 0 ? (int)((size_t)kv_mb * 1024 * 1024 / block_bytes)
				   : parallel * ((ctx_len + KV_BLOCK - 1) / KV_BLOCK);
	if (opts.kv_blocks < 1) {
		fprintf(stderr, "ember-worker: --kv-cache-mb %d holds no block of %zu bytes\n", kv_mb,
			block_bytes);
		goto done;
	}
	if (n + max_tokens > ctx_len) {
		fprintf(stderr, "ember-worker: %d prompt tokens and %d new ones exceed the context of %d\n",
			n, max_tokens, ctx_len);
		goto done;
	}
	if (device_backend_create(co->device, m, &opts, &b, err) < 0 ||
	    sched_create(b, &(struct sched_opts){.max_batch_tokens = max_batch, .tok = tok}, &sched,
			 err) < 0) {
		fprintf(stderr, "ember-worker: %s\n", err);
		goto done;
	}
	printers = calloc((size_t)parallel, sizeof *printers);
	if (!printers) {
		fprintf(stderr, "ember-worker: out of memory\n");
		goto done;
	}
	double t1 = ember_now();
	for (int i = 0; i < parallel; i++) {
		struct printer *pr = &printers[i];
		pr->ids_only = !tok || print_ids;
		pr->stream_now = parallel == 1;
		struct sched_request q = {.prompt = ids, .n_prompt = n, .max_tokens = max_tokens,
					  .on_token = print_token, .on_finish = print_finish, .arg = pr};
		/* generation_config.json's defaults, unless a flag says otherwise. */
		model_sampling_defaults(m, &q.sampling);
		if (temperature_set)
			q.sampling.temperature = temperature;
		q.sampling.seed = seed + (uint64_t)i;
		/* Text ends at an end-of-sequence token; ids run to --max-tokens. */
		if (tok) {
			for (int k = 0; k < m->n_stop_ids && q.n_stop_ids < SCHED_MAX_STOP_IDS; k++)
				q.stop_ids[q.n_stop_ids++] = m->stop_ids[k];
			if (tok_eos(tok) >= 0 && q.n_stop_ids < SCHED_MAX_STOP_IDS)
				q.stop_ids[q.n_stop_ids++] = tok_eos(tok);
		}
		for (int k = 0; k < n_stop; k++)
			q.stop[q.n_stop++] = stops[k];
		if (sched_submit(sched, &q, NULL, err) < 0) {
			fprintf(stderr, "ember-worker: %s\n", err);
			goto done;
		}
	}
	int left;
	while ((left = sched_step(sched, err)) > 0)
		;
	if (left < 0) {
		fprintf(stderr, "ember-worker: %s\n", err);
		goto done;
	}
	double t2 = ember_now();
	int made = 0;
	for (int i = 0; i < parallel; i++) {
		struct printer *pr = &printers[i];
		if (!pr->stream_now)
			printf("[%d] %.*s", i, (int)pr->out.len, pr->out.p ? pr->out.p : "");
		printf("\n");
		made += pr->n;
	}
	fflush(stdout); /* before the timing line on stderr */
	fprintf(stderr, "ember-worker: %s (%s), %d prompt + %d new tokens in %.3f s (load %.3f s)\n",
		m->cfg.arch_name, strcmp(b->name, "cpu") == 0 ? cpu_isa() : b->name, n, made, t2 - t1,
		t1 - t0);
	status = 0;
done:
	for (int i = 0; printers && i < parallel; i++)
		sbuf_free(&printers[i].out);
	free(printers);
	sched_destroy(sched);
	tok_ctx_destroy(ctx);
	tok_free(tok);
	be_destroy(b);
	model_close(m);
	free(ids);
	return status;
}
