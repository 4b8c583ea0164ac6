/* The pool's threads spin briefly on a generation counter (a forward pass
 * issues hundreds of short parallel steps) and then sleep on a condition
 * variable, so an idle engine costs no CPU. */
#include "threads.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define SPINS 20000

struct tpool {
	int n;
	pthread_t *threads;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	atomic_uint gen;      /* bumped once per tp_run */
	atomic_int pending;   /* helper threads still running this generation */
	atomic_bool stop;
	tp_fn fn;
	void *arg;
};

struct helper_arg {
	struct tpool *tp;
	int i;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static void *helper(void *p)
{
	struct helper_arg ha = *(struct helper_arg *)p;
	free(p);
	struct tpool *tp = ha.tp;
	unsigned seen = 0; /* the value at creation, whenever this thread starts */
	for (;;) {
		unsigned g;
		int spins = 0;
		while ((g = atomic_load_explicit(&tp->gen, memory_order_acquire)) == seen &&
		       !atomic_load(&tp->stop)) {
			if (++spins < SPINS) {
				cpu_relax();
				continue;
			}
			pthread_mutex_lock(&tp->mu);
			while (atomic_load(&tp->gen) == seen && !atomic_load(&tp->stop))
				pthread_cond_wait(&tp->cv, &tp->mu);
			pthread_mutex_unlock(&tp->mu);
		}
		if (atomic_load(&tp->stop))
			return NULL;
		seen = g;
		tp->fn(tp->arg, ha.i, tp->n);
		atomic_fetch_sub_explicit(&tp->pending, 1, memory_order_release);
	}
}

int tp_create(int n, struct tpool **out, char *err)
{
	*out = NULL;
	if (n < 1)
		n = 1;
	struct tpool *tp = calloc(1, sizeof *tp);
	if (!tp)
		return ember_err(err, -ENOMEM, "out of memory");
	tp->threads = calloc((size_t)n, sizeof *tp->threads);
	if (!tp->threads) {
		free(tp);
		return ember_err(err, -ENOMEM, "out of memory");
	}
	pthread_mutex_init(&tp->mu, NULL);
	pthread_cond_init(&tp->cv, NULL);
	tp->n = 1;
	for (int i = 1; i < n; i++) {
		struct helper_arg *ha = malloc(sizeof *ha);
		if (ha)
			*ha = (struct helper_arg){tp, i};
		int rc = ha ? pthread_create(&tp->threads[i], NULL, helper, ha) : ENOMEM;
		if (rc) {
			free(ha);
			tp_destroy(tp);
			return ember_err(err, -rc, "pthread_create failed: %s", strerror(rc));
		}
		tp->n = i + 1;
	}
	*out = tp;
	return 0;
}

void tp_destroy(struct tpool *tp)
{
	if (!tp)
		return;
	pthread_mutex_lock(&tp->mu);
	atomic_store(&tp->stop, true);
	pthread_cond_broadcast(&tp->cv);
	pthread_mutex_unlock(&tp->mu);
	for (int i = 1; i < tp->n; i++)
		pthread_join(tp->threads[i], NULL);
	pthread_mutex_destroy(&tp->mu);
	pthread_cond_destroy(&tp->cv);
	free(tp->threads);
	free(tp);
}

int tp_size(const struct tpool *tp)
{
	return tp->n;
}

void tp_run(struct tpool *tp, tp_fn fn, void *arg)
{
	if (tp->n == 1) {
		fn(arg, 0, 1);
		return;
	}
	tp->fn = fn;
	tp->arg = arg;
	atomic_store(&tp->pending, tp->n - 1);
	pthread_mutex_lock(&tp->mu);
	atomic_fetch_add_explicit(&tp->gen, 1, memory_order_release);
	pthread_cond_broadcast(&tp->cv);
	pthread_mutex_unlock(&tp->mu);
	fn(arg, 0, tp->n);
	while (atomic_load_explicit(&tp->pending, memory_order_acquire) > 0)
		cpu_relax();
}

int tp_cpu_count(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}
