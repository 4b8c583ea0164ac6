/* The scoreboard's memory. Runs in emberd and the workers. */
#include "scoreboard.h"
#include "../engine/common.h"

#include <errno.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *sb_state_name(int state)
{
	static const char *const names[] = {"free", "starting", "ready", "draining"};
	return state >= 0 && state <= SB_DRAINING ? names[state] : "unknown";
}

int64_t sb_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sb_event(int fd, enum sb_event ev)
{
	char b = (char)ev;
	/* A full pipe (EAGAIN) holds events emberd has yet to read; another
	 * error means emberd is gone. Nothing to do either way. */
	ssize_t k = fd >= 0 ? write(fd, &b, 1) : 0;
	(void)k;
}

static size_t sb_bytes(int n)
{
	return sizeof(struct sb_pool) + (size_t)n * sizeof(struct sb_slot);
}

struct scoreboard *sb_create(int n, int *fd, char *err)
{
	if (n < 1 || n > SB_MAX_WORKERS) {
		ember_err(err, -EINVAL, "a scoreboard of %d slots (1..%d)", n, SB_MAX_WORKERS);
		return NULL;
	}
	*fd = memfd_create("ember-scoreboard", MFD_CLOEXEC);
	if (*fd < 0 || ftruncate(*fd, (off_t)sb_bytes(n)) < 0) {
		ember_err(err, -errno, "memfd(scoreboard) failed: %s", strerror(errno));
		if (*fd >= 0)
			close(*fd);
		return NULL;
	}
	struct scoreboard *sb = mmap(NULL, sb_bytes(n), PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
	if (sb == MAP_FAILED) {
		ember_err(err, -errno, "mmap(scoreboard) failed: %s", strerror(errno));
		close(*fd);
		return NULL;
	}
	sb->pool.magic = SB_MAGIC;
	sb->pool.n_slots = (uint32_t)n;
	sb->pool.started_unix = (int64_t)time(NULL);
	return sb;
}

struct scoreboard *sb_attach(int fd, char *err)
{
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_size < (off_t)sb_bytes(1)) {
		ember_err(err, -EINVAL, "the scoreboard fd %d is not a scoreboard", fd);
		return NULL;
	}
	struct scoreboard *sb = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED,
				     fd, 0);
	if (sb == MAP_FAILED) {
		ember_err(err, -errno, "mmap(scoreboard) failed: %s", strerror(errno));
		return NULL;
	}
	if (sb->pool.magic != SB_MAGIC || sb->pool.n_slots < 1 ||
	    sb->pool.n_slots > SB_MAX_WORKERS || (off_t)sb_bytes((int)sb->pool.n_slots) > st.st_size) {
		munmap(sb, (size_t)st.st_size);
		ember_err(err, -EINVAL, "the scoreboard's header is wrong");
		return NULL;
	}
	return sb;
}

void sb_unmap(struct scoreboard *sb)
{
	if (sb)
		munmap(sb, sb_bytes((int)sb->pool.n_slots));
}

void sb_retire(struct scoreboard *sb, int i)
{
	struct sb_slot *s = &sb->slot[i];
	atomic_fetch_add(&sb->pool.retire_seq, 1); /* odd: readers wait */
	for (int w = 0; w < SB_COUNTER_WORDS; w++) {
		atomic_fetch_add(&sb->pool.retired[w], atomic_load(&s->counters[w]));
		atomic_store(&s->counters[w], 0);
	}
	for (int w = 0; w < SB_GAUGE_WORDS; w++)
		atomic_store(&s->gauges[w], 0);
	atomic_store(&s->pid, 0);
	atomic_store(&s->busy, 0);
	atomic_store(&s->state, SB_FREE);
	atomic_fetch_add(&sb->pool.retire_seq, 1);
}

/* One pass of sb_sum, unchecked. */
static void sum_once(const struct scoreboard *sb, _Atomic uint64_t *counters,
		     _Atomic int64_t *gauges)
{
	for (int w = 0; w < SB_COUNTER_WORDS; w++)
		atomic_store_explicit(&counters[w], atomic_load(&sb->pool.retired[w]),
				      memory_order_relaxed);
	for (int w = 0; w < SB_GAUGE_WORDS; w++)
		atomic_store_explicit(&gauges[w], 0, memory_order_relaxed);
	for (uint32_t i = 0; i < sb->pool.n_slots; i++) {
		const struct sb_slot *s = &sb->slot[i];
		if (atomic_load(&s->state) == SB_FREE)
			continue;
		for (int w = 0; w < SB_COUNTER_WORDS; w++)
			atomic_fetch_add_explicit(&counters[w], atomic_load(&s->counters[w]),
						  memory_order_relaxed);
		for (int w = 0; w < SB_GAUGE_WORDS; w++)
			atomic_fetch_add_explicit(&gauges[w], atomic_load(&s->gauges[w]),
						  memory_order_relaxed);
	}
}

void sb_sum(const struct scoreboard *sb, _Atomic uint64_t counters[SB_COUNTER_WORDS],
	    _Atomic int64_t gauges[SB_GAUGE_WORDS])
{
	/* A seqlock read: again when emberd retired a worker meanwhile (a few
	 * times a second at most). Should emberd be stopped in the middle of
	 * one, take an unchecked pass after 100 ms. */
	int64_t give_up = sb_now_ms() + 100;
	while (sb_now_ms() <= give_up) {
		uint64_t seq = atomic_load(&sb->pool.retire_seq);
		if (seq & 1) {
			sched_yield();
			continue;
		}
		sum_once(sb, counters, gauges);
		if (atomic_load(&sb->pool.retire_seq) == seq)
			return;
	}
	sum_once(sb, counters, gauges);
}
