/* A fixed pool of threads that run one function together and wait for each
 * other: the engine's only form of parallelism. Not a task queue. Runs in
 * the worker's engine thread. */
#ifndef EMBER_THREADS_H
#define EMBER_THREADS_H

#include "common.h"

struct tpool;

/* fn(arg, i, n) runs on n threads at once, i in 0..n-1; i == 0 is the caller. */
typedef void (*tp_fn)(void *arg, int i, int n);

/* Starts n - 1 threads (n >= 1; the caller is the n-th). Returns 0 or a
 * negative errno with nothing left running. */
int tp_create(int n, struct tpool **out, char *err);

void tp_destroy(struct tpool *tp);

int tp_size(const struct tpool *tp);

/* Runs fn on every thread of the pool and returns when all have finished.
 * Not reentrant: one caller at a time. */
void tp_run(struct tpool *tp, tp_fn fn, void *arg);

/* The number of online processors, at least 1. */
int tp_cpu_count(void);

#endif
