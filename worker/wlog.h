/* The worker's log: under journald (JOURNAL_STREAM names stderr) entries
 * with EMBER_* fields through sd_journal_send, otherwise one JSON object per
 * line on stderr. Never given prompt or completion text. Any thread. */
#ifndef EMBER_WLOG_H
#define EMBER_WLOG_H

/* Decides where logs go; call once at start. */
void wlog_init(void);

/* A message at syslog priority (3 error, 4 warning, 6 info). */
void wlog(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line per answered request. Strings may be NULL. */
struct wlog_req {
	const char *request_id, *method, *route, *model, *finish_reason, *error_code;
	int status;
	int prompt_tokens, completion_tokens;
	double duration_ms, ttft_ms, queue_ms;
	int stream;
};
void wlog_request(const struct wlog_req *r);

#endif
