/* The worker's start (serverint.h): the model (from emberd's weight image
 * or the directory), the tokenizer in a thread of its own beside the
 * device's backend, the chat template, the scheduler; and the ready line
 * saying where the start went. */
#include "serverint.h"
#include "wlog.h"
#include "../engine/chat.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A tokenizer loading in a thread of its own. */
struct tok_job {
	struct mfiles *files;
	struct tokenizer *tok;
	int rc;
	double seconds;
	char err[EMBER_ERR_LEN];
};

static void *tok_job_run(void *arg)
{
	struct tok_job *j = arg;
	double t0 = ember_now();
	j->rc = tok_load(j->files, &j->tok, j->err);
	j->seconds = ember_now() - t0;
	return NULL;
}

/* The backend on the device the flags name, with a KV cache for the
 * context (env.ctx, set here). Returns 0 or -1 (logged). */
static int start_device(struct server *s)
{
	const struct server_opts *o = s->o;
	char err[EMBER_ERR_LEN];
	int ctx = o->ctx > 0 ? o->ctx : 4096;
	s->env.ctx = ctx < s->m->cfg.max_pos ? ctx : s->m->cfg.max_pos;
	const struct device *dev = device_resolve(o->device);
	struct device_opts co = {.threads = o->threads, .max_ctx = s->env.ctx,
				 .max_seqs = o->slots, .max_tokens = o->max_batch_tokens,
				 .gpu_memory_fraction = o->gpu_memory_fraction, .stats = &s->dev};
	size_t block_bytes = dev->kv_block_bytes(s->m);
	/* Without --kv-cache-mb the device sizes the pool (device.h). */
	co.kv_blocks = o->kv_mb > 0 ? (int)((size_t)o->kv_mb * 1024 * 1024 / block_bytes) : -1;
	if (co.kv_blocks == 0) {
		wlog(3, "--kv-cache-mb %d holds no block of %zu bytes", o->kv_mb, block_bytes);
		return -1;
	}
	if (device_backend_create(dev, s->m, &co, &s->b, err) < 0) {
		wlog(3, "cannot start the engine: %s", err);
		return -1;
	}
	/* For the tests of a failed step: EMBER_FAULT_STEPS=N lets N steps
	 * run, then every step fails, as after a GPU's sticky error. */
	const char *fault = getenv("EMBER_FAULT_STEPS");
	if (fault) {
		char *end;
		long n = strtol(fault, &end, 10);
		if (*end || end == fault || n < 0) {
			wlog(3, "EMBER_FAULT_STEPS=%s is not a number of steps", fault);
			return -1;
		}
		if (be_fault_create(s->b, n, &s->b, err) < 0) {
			s->b = NULL;
			wlog(3, "EMBER_FAULT_STEPS: %s", err);
			return -1;
		}
		wlog(4, "EMBER_FAULT_STEPS=%ld: every step after the %ld-th fails", n, n);
	}
	return 0;
}

int server_load(struct server *s)
{
	const struct server_opts *o = s->o;
	char err[EMBER_ERR_LEN];
	double t0 = ember_now();
	/* From the supervisor's weight image when it hands one over, else
	 * from the directory's files. */
	const char *wfd = getenv("EMBER_WEIGHTS_FD");
	int rc;
	if (wfd) {
		char *end;
		long fd = strtol(wfd, &end, 10);
		struct mfiles *mf = NULL;
		if (*end || end == wfd || fd < 0 || fd > INT_MAX) {
			wlog(3, "EMBER_WEIGHTS_FD=%s is not a file descriptor", wfd);
			return -1;
		}
		rc = mf_open_image((int)fd, &mf, err);
		if (rc == 0)
			rc = model_open(mf, &s->m, err);
	} else {
		rc = model_open_dir(o->model_dir, &s->m, err);
	}
	if (rc < 0) {
		wlog(3, "cannot load the model: %s", err);
		return -1;
	}
	s->t_model = ember_now() - t0;
	/* The tokenizer (parsing tokenizer.json takes a good part of a cold
	 * start) loads in a thread of its own while the device takes the
	 * weights: meanwhile that thread alone reads the model's files, the
	 * device only the tensors model_open mapped. */
	struct tok_job tj = {s->m->files, NULL, 0, 0, ""};
	pthread_t tok_thread;
	bool tok_threaded = pthread_create(&tok_thread, NULL, tok_job_run, &tj) == 0;
	if (!tok_threaded)
		tok_job_run(&tj);
	double t1 = ember_now();
	rc = start_device(s);
	if (tok_threaded)
		pthread_join(tok_thread, NULL);
	s->t_both = ember_now() - t1;
	s->tok = tj.tok;
	s->t_tok = tj.seconds;
	if (tj.rc < 0) {
		wlog(3, "cannot load the tokenizer: %s", tj.err);
		return -1;
	}
	if (rc < 0)
		return -1;
	struct comp_env *env = &s->env;
	env->m = s->m;
	env->tok = s->tok;
	env->met = &s->met;
	env->model_name = s->model_name;
	env->max_prompt_tokens = o->max_prompt_tokens;
	env->request_timeout = o->request_timeout;
	env->keepalive = o->keepalive;
	env->queue_timeout = o->queue_timeout;
	env->slots = o->slots;
	env->family = -1;
	if (o->chat_template) {
		env->family = chat_family_from_name(o->chat_template);
		if (env->family < 0) {
			wlog(3, "--chat-template %s is not one of " CHAT_FAMILY_NAMES,
			     o->chat_template);
			return -1;
		}
	} else {
		env->family = chat_detect(tok_chat_template(s->tok), env->family_err);
		if (env->family < 0)
			wlog(4, "chat completions are off: %s", env->family_err);
	}
	size_t blen = 0;
	const char *bos = tok_bos(s->tok) >= 0 ? tok_piece(s->tok, tok_bos(s->tok), &blen) : "";
	snprintf(env->bos, sizeof env->bos, "%.*s", (int)blen, bos ? bos : "");
	for (int k = 0; k < s->m->n_stop_ids && env->n_stop_ids < SCHED_MAX_STOP_IDS; k++)
		env->stop_ids[env->n_stop_ids++] = s->m->stop_ids[k];
	if (tok_eos(s->tok) >= 0 && env->n_stop_ids < SCHED_MAX_STOP_IDS)
		env->stop_ids[env->n_stop_ids++] = tok_eos(s->tok);

	struct sched_opts so = {.max_batch_tokens = o->max_batch_tokens, .tok = s->tok};
	int32_t *forced = NULL;
	size_t n_forced = 0, cap_forced = 0;
	if (o->forced_output) {
		struct tok_ctx *tc = tok_ctx_create(s->tok);
		int rc = tc ? tok_encode(s->tok, tc, o->forced_output, strlen(o->forced_output), false,
					 &forced, &n_forced, &cap_forced, err)
			    : ember_err(err, -ENOMEM, "out of memory");
		tok_ctx_destroy(tc);
		if (rc < 0 || n_forced == 0 || n_forced > INT_MAX) {
			wlog(3, "--forced-output: %s", rc < 0 ? err : "no tokens");
			free(forced);
			return -1;
		}
		so.forced = forced;
		so.n_forced = (int)n_forced;
		wlog(4, "--forced-output: every answer is the same %zu tokens (a test seam)", n_forced);
	}
	int src = sched_create(s->b, &so, &env->sched, err);
	free(forced);
	if (src < 0) {
		wlog(3, "cannot start the engine: %s", err);
		return -1;
	}
	int blocks = s->b->kv_blocks;
	env->kv_tokens = blocks > INT_MAX / KV_BLOCK ? INT_MAX : blocks * KV_BLOCK;
	wlog(6, "model %s loaded on %s (%s, %d layers, context %d, %d slots, %d KV blocks) in %.3f s",
	     s->model_name, s->b->name, s->m->cfg.arch_name, s->m->cfg.n_layers, env->ctx, o->slots,
	     blocks, ember_now() - t0);
	return 0;
}

/* Where the start went, for cold-start budgets: under emberd from its
 * fork (the scoreboard's started_ms, on the same monotonic clock); the
 * tokenizer beside the device, and on a GPU the weights' upload and the
 * graphs' capture. */
void server_log_start(const struct server *s)
{
	double now = ember_now(), before = 0;
	if (s->slot)
		before = s->t_run - (double)atomic_load(&s->slot->started_ms) / 1000;
	const struct device_stats *d = &s->dev;
	char gpu[160] = "";
	if (d->upload_s > 0)
		snprintf(gpu, sizeof gpu,
			 ", weights to the GPU %.3f s (%.2f GB/s), graph capture %.3f s (%d graphs)",
			 d->upload_s, (double)d->upload_bytes / 1e9 / d->upload_s, d->graph_s, d->graphs);
	if (d->graph_error[0])
		wlog(4, "CUDA graphs stopped after %d batch sizes (larger decode steps run kernel by "
		     "kernel): %s", d->graphs, d->graph_error);
	wlog(6, "ready %.3f s after %s: process start %.3f s, model %.3f s, tokenizer %.3f s, %s "
	     "init %.3f s%s, tokenizer and device side by side %.3f s, the rest %.3f s",
	     now - s->t_run + before, s->slot ? "emberd's fork" : "the process started", before,
	     s->t_model, s->t_tok, s->b->name, d->init_s, gpu, s->t_both,
	     now - s->t_run - s->t_model - s->t_both);
}
