/* Stop strings: matching a sequence's decoded text against up to four stop
 * strings across token boundaries, holding back only what could still turn
 * out to be the start of one, and never emitting the stop string itself.
 * Runs wherever a sequence's text is written out (the worker). */
#ifndef EMBER_STOP_H
#define EMBER_STOP_H

#include "common.h"

#define STOP_MAX 4
#define STOP_MAX_LEN 256 /* bytes of one stop string */

struct stop_matcher {
	char stop[STOP_MAX][STOP_MAX_LEN];
	size_t len[STOP_MAX];
	int n;
	char held[STOP_MAX_LEN]; /* text that may begin a stop string */
	size_t n_held;
	bool stopped;
};

/* Sets up m for stops[0..n) (n <= STOP_MAX, each non-empty valid UTF-8 of at
 * most STOP_MAX_LEN bytes). Returns 0 or -EINVAL with err naming the one at
 * fault. */
int stop_init(struct stop_matcher *m, const char *const *stops, int n, char *err);

/* Feeds text in[0..len) (valid UTF-8, split anywhere between characters)
 * and writes to out the text that can no longer be part of a stop string.
 * out needs room for len + STOP_MAX_LEN bytes. When a stop string
 * completes (the earliest in the text, when several complete in one feed),
 * the text before it is written, m->stopped is set and every later feed
 * writes nothing. Returns the bytes written. */
size_t stop_feed(struct stop_matcher *m, const char *in, size_t len, char *out);

/* At the end of a sequence that did not stop: writes the held text to out
 * (room for STOP_MAX_LEN bytes) and returns its length. */
size_t stop_flush(struct stop_matcher *m, char *out);

#endif
