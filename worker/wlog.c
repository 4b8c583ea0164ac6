/* Logs to journald with fields, or as JSON lines on stderr. Any thread. */
#include "wlog.h"
#include "api.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <systemd/sd-journal.h>
#include <time.h>

static int use_journal;
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;

void wlog_init(void)
{
	use_journal = ember_stderr_is_journal();
}

static const char *level_name(int p)
{
	return p <= LOG_ERR ? "error" : p == LOG_WARNING ? "warning" : p == LOG_NOTICE ? "notice"
								 : "info";
}

/* Writes one finished line to stderr at once, so that threads' lines do not mix. */
static void emit(struct sbuf *b)
{
	if (b->failed)
		return;
	pthread_mutex_lock(&out_mu);
	fwrite(b->p, 1, b->len, stderr);
	fflush(stderr);
	pthread_mutex_unlock(&out_mu);
}

static void ts(struct sbuf *b)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	struct tm tm;
	gmtime_r(&t.tv_sec, &tm);
	char s[40];
	strftime(s, sizeof s, "%Y-%m-%dT%H:%M:%S", &tm);
	sbuf_printf(b, "{\"ts\":\"%s.%03ldZ\"", s, t.tv_nsec / 1000000);
}

void wlog(int priority, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (use_journal) {
		sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%d", priority,
				"SYSLOG_IDENTIFIER=ember-worker", NULL);
		return;
	}
	struct sbuf b = {0};
	ts(&b);
	sbuf_printf(&b, ",\"level\":\"%s\",\"msg\":", level_name(priority));
	sbuf_json_str(&b, msg, strlen(msg));
	sbuf_puts(&b, "}\n");
	emit(&b);
	sbuf_free(&b);
}

#define S(x) ((x) ? (x) : "")

void wlog_request(const struct wlog_req *r)
{
	int prio = r->status >= 500 ? LOG_ERR : LOG_INFO;
	if (use_journal) {
		sd_journal_send("MESSAGE=%s %s %d %.1f ms", S(r->method), S(r->route), r->status,
				r->duration_ms, "PRIORITY=%d", prio, "SYSLOG_IDENTIFIER=ember-worker",
				"EMBER_REQUEST_ID=%s", S(r->request_id), "EMBER_METHOD=%s",
				S(r->method), "EMBER_ROUTE=%s", S(r->route), "EMBER_STATUS=%d",
				r->status, "EMBER_DURATION_MS=%.3f", r->duration_ms,
				"EMBER_PROMPT_TOKENS=%d", r->prompt_tokens,
				"EMBER_COMPLETION_TOKENS=%d", r->completion_tokens,
				"EMBER_TTFT_MS=%.3f", r->ttft_ms, "EMBER_QUEUE_MS=%.3f", r->queue_ms,
				"EMBER_STREAM=%d", r->stream, "EMBER_MODEL=%s", S(r->model),
				"EMBER_FINISH_REASON=%s", S(r->finish_reason), "EMBER_ERROR_CODE=%s",
				S(r->error_code), NULL);
		return;
	}
	struct sbuf b = {0};
	ts(&b);
	sbuf_printf(&b, ",\"level\":\"%s\",\"msg\":\"request\",\"request_id\":", level_name(prio));
	sbuf_json_str(&b, S(r->request_id), strlen(S(r->request_id)));
	/* The method comes from the front end: escaped like any outside text. */
	sbuf_puts(&b, ",\"method\":");
	sbuf_json_str(&b, S(r->method), strlen(S(r->method)));
	sbuf_printf(&b, ",\"route\":\"%s\",\"status\":%d,\"duration_ms\":%.3f", S(r->route),
		    r->status, r->duration_ms);
	if (r->model) {
		sbuf_puts(&b, ",\"model\":");
		sbuf_json_str(&b, r->model, strlen(r->model));
	}
	if (r->prompt_tokens || r->completion_tokens)
		sbuf_printf(&b, ",\"prompt_tokens\":%d,\"completion_tokens\":%d,\"ttft_ms\":%.3f,"
				"\"queue_ms\":%.3f,\"stream\":%s",
			    r->prompt_tokens, r->completion_tokens, r->ttft_ms, r->queue_ms,
			    r->stream ? "true" : "false");
	if (r->finish_reason)
		sbuf_printf(&b, ",\"finish_reason\":\"%s\"", r->finish_reason);
	if (r->error_code)
		sbuf_printf(&b, ",\"error_code\":\"%s\"", r->error_code);
	sbuf_puts(&b, "}\n");
	emit(&b);
	sbuf_free(&b);
}
