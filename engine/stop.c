/* Stop-string matching over a window: what is held plus the new text, cut
 * into slices no longer than a stop string so the window stays bounded. */
#include "stop.h"

#include <errno.h>

int stop_init(struct stop_matcher *m, const char *const *stops, int n, char *err)
{
	memset(m, 0, sizeof *m);
	if (n < 0 || n > STOP_MAX)
		return ember_err(err, -EINVAL, "at most %d stop strings", STOP_MAX);
	for (int i = 0; i < n; i++) {
		size_t len = strlen(stops[i]);
		if (len == 0 || len > STOP_MAX_LEN)
			return ember_err(err, -EINVAL, "stop string %d must be 1 to %d bytes", i,
					 STOP_MAX_LEN);
		if (utf8_valid_prefix((const uint8_t *)stops[i], len) != len)
			return ember_err(err, -EINVAL, "stop string %d is not valid UTF-8", i);
		memcpy(m->stop[i], stops[i], len);
		m->len[i] = len;
	}
	m->n = n;
	return 0;
}

/* Where the window's text can no longer begin a stop string: the start of
 * the longest suffix that is a proper prefix of one (or the end). */
static size_t keep_from(const struct stop_matcher *m, const char *w, size_t n)
{
	for (size_t start = 0; start < n; start++) {
		size_t tail = n - start;
		for (int i = 0; i < m->n; i++)
			if (tail < m->len[i] && memcmp(w + start, m->stop[i], tail) == 0)
				return start;
	}
	return n;
}

/* The earliest complete stop string in w[0..n), or n. */
static size_t find_stop(const struct stop_matcher *m, const char *w, size_t n)
{
	for (size_t pos = 0; pos < n; pos++)
		for (int i = 0; i < m->n; i++)
			if (m->len[i] <= n - pos && memcmp(w + pos, m->stop[i], m->len[i]) == 0)
				return pos;
	return n;
}

size_t stop_feed(struct stop_matcher *m, const char *in, size_t len, char *out)
{
	if (m->stopped)
		return 0;
	if (m->n == 0) {
		memcpy(out, in, len);
		return len;
	}
	size_t w = 0;
	char win[2 * STOP_MAX_LEN];
	while (len > 0) {
		/* A slice that ends between characters. */
		size_t take = len < STOP_MAX_LEN ? len : STOP_MAX_LEN;
		while (take < len && take > 1 && ((uint8_t)in[take] & 0xc0) == 0x80)
			take--;
		memcpy(win, m->held, m->n_held);
		memcpy(win + m->n_held, in, take);
		size_t n = m->n_held + take;
		in += take;
		len -= take;
		size_t at = find_stop(m, win, n);
		if (at < n) {
			memcpy(out + w, win, at);
			w += at;
			m->n_held = 0;
			m->stopped = true;
			return w;
		}
		size_t keep = keep_from(m, win, n);
		memcpy(out + w, win, keep);
		w += keep;
		m->n_held = n - keep;
		memmove(m->held, win + keep, m->n_held);
	}
	return w;
}

size_t stop_flush(struct stop_matcher *m, char *out)
{
	size_t n = m->stopped ? 0 : m->n_held;
	memcpy(out, m->held, n);
	m->n_held = 0;
	return n;
}
