/* The weight store: a model directory's files read once, with io_uring,
 * into a sealed memfd laid out as a weight image (engine/wimage.h), which
 * workers map instead of the files. Not the workers' side (modelfiles.c).
 * Runs in emberd. */
#ifndef EMBER_WSTORE_H
#define EMBER_WSTORE_H

#include <stdbool.h>
#include <stddef.h>

struct wstore_opts {
	bool verify;        /* check every file against DIR/ember.sha256 */
	bool no_direct;     /* do not try O_DIRECT */
	int queue_depth;    /* reads in flight (0: 32) */
	size_t chunk;       /* bytes per read (0: 4 MiB) */
	/* Called now and then while reading (and again while verifying) with
	 * the bytes done of the total, on the loading thread; may be NULL. */
	void (*progress)(void *arg, const char *what, size_t done, size_t total);
	void *progress_arg;
};

struct wstore_stats {
	size_t bytes;       /* of the files */
	int files;
	int direct_files;   /* read with O_DIRECT */
	double seconds;     /* reading, checks included */
};

/* The files of a model directory that go into its image: *.json,
 * *.safetensors, *.txt, *.model and *.jinja (not ember.sha256), sorted by
 * name. */
bool wstore_wanted(const char *name);

/* Reads the model directory dir into a new memfd, sealed against writes,
 * growing and shrinking. Every safetensors header is checked before a byte
 * of data is copied; with o->verify every file must match its line of
 * DIR/ember.sha256 (sha256sum's format), else nothing is served. On
 * success *fd is the memfd (close-on-exec; the caller owns it). Returns 0
 * or a negative errno with err naming the file and what failed. */
int wstore_load(const char *dir, const struct wstore_opts *o, int *fd,
		struct wstore_stats *stats, char *err);

#endif
