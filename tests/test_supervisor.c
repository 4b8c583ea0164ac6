/* Tests of the supervisor's weight store: a model directory read with
 * io_uring into a sealed memfd, opened by the engine as from the files
 * (byte for byte, and by a worker that never sees the directory); header
 * checks before copying; --verify against ember.sha256; the image's own
 * checks. And the scoreboard's pool sums while workers are retired. */
#include "../engine/modelfiles.h"
#include "../engine/sha256.h"
#include "../engine/wimage.h"
#include "../supervisor/scoreboard.h"
#include "../supervisor/wstore.h"
#include "runner.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *models = "build/models";
static const char *worker = "build/ember-worker";
static char tmp[256];

/* Every file of dir in the image in fd, byte for byte. */
static int same_files(const char *dir, int fd, int *n_checked)
{
	char err[EMBER_ERR_LEN];
	struct mfiles *a = NULL, *b = NULL;
	CHECK(mf_open_dir(dir, &a, err) == 0, "%s", err);
	CHECK(mf_open_image(fd, &b, err) == 0, "%s", err);
	static const char *const names[] = {"config.json", "tokenizer.json", "tokenizer_config.json",
					    "model.safetensors", "model-00001-of-00002.safetensors",
					    "model-00002-of-00002.safetensors",
					    "model.safetensors.index.json", "generation_config.json"};
	int rc = 0;
	*n_checked = 0;
	for (size_t i = 0; i < sizeof names / sizeof names[0] && rc == 0; i++) {
		const uint8_t *pa, *pb;
		size_t la, lb;
		int ra = mf_get(a, names[i], &pa, &la, err);
		int rb = mf_get(b, names[i], &pb, &lb, err);
		if (ra == -ENOENT && rb == -ENOENT)
			continue;
		if (ra || rb || la != lb || memcmp(pa, pb, la) != 0)
			rc = fail("%s differs between %s and the image (%d %d, %zu %zu)", names[i], dir,
				  ra, rb, la, lb);
		(*n_checked)++;
	}
	mf_close(a);
	mf_close(b);
	return rc;
}

/* Progress reports: never backwards, never past the total, ending at it. */
struct progress {
	size_t calls, done, total;
	int backwards;
};

static void on_progress(void *arg, const char *what, size_t done, size_t total)
{
	struct progress *p = arg;
	if (strcmp(what, "reading") != 0)
		return;
	p->backwards += done < p->done || done > total || (p->total && total != p->total);
	p->calls++;
	p->done = done;
	p->total = total;
}

static int test_image_matches_files(void)
{
	static const char *const shapes[] = {"tiny-qwen2", "tiny-llama"};
	for (int direct = 0; direct < 2; direct++)
		for (size_t s = 0; s < 2; s++) {
			char dir[512], err[EMBER_ERR_LEN];
			snprintf(dir, sizeof dir, "%s/%s", models, shapes[s]);
			struct progress pr = {0};
			struct wstore_opts o = {.no_direct = !direct, .chunk = 64 << 10, .queue_depth = 4,
						.progress = on_progress, .progress_arg = &pr};
			struct wstore_stats st;
			int fd;
			CHECK(wstore_load(dir, &o, &fd, &st, err) == 0, "%s", err);
			CHECK(pr.calls > 10 && !pr.backwards && pr.done == st.bytes && pr.total == st.bytes,
			      "progress: %zu calls, %zu of %zu bytes at the end (%zu read), %d wrong",
			      pr.calls, pr.done, pr.total, st.bytes, pr.backwards);
			printf("    %s: %d files, %zu bytes, %d with O_DIRECT, %.3f s\n", shapes[s],
			       st.files, st.bytes, st.direct_files, st.seconds);
			int seals = fcntl(fd, F_GET_SEALS);
			int want = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;
			CHECK(seals >= 0 && (seals & want) == want, "seals %#x", seals);
			CHECK(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED &&
				      errno == EPERM,
			      "a writable mapping of the sealed image");
			CHECK(ftruncate(fd, 0) < 0, "the image shrank");
			int n = 0, rc = same_files(dir, fd, &n);
			close(fd);
			if (rc)
				return rc;
			CHECK(n >= 5, "only %d files compared", n);
		}
	return 0;
}

static int test_worker_from_image(void)
{
	char dir[512], err[EMBER_ERR_LEN];
	snprintf(dir, sizeof dir, "%s/tiny-llama", models);
	struct wstore_opts o = {0};
	struct wstore_stats st;
	int fd;
	CHECK(wstore_load(dir, &o, &fd, &st, err) == 0, "%s", err);
	CHECK(fcntl(fd, F_SETFD, 0) == 0, "inheritable"); /* handed to the worker */
	const char body[] = "{\"prompt\":\"The weight image\",\"max_tokens\":12,\"seed\":5}";
	char cmd[2048], a[8192], b[8192];
	const char *cgi = "GATEWAY_INTERFACE=CGI/1.1 REQUEST_METHOD=POST REQUEST_URI=/v1/completions";
	/* From the image, with a --model that does not exist as a directory. */
	snprintf(cmd, sizeof cmd,
		 "printf '%%s' '%s' | EMBER_WEIGHTS_FD=%d %s CONTENT_LENGTH=%zu %s --model "
		 "/nonexistent/tiny-llama --threads 1 2>/dev/null",
		 body, fd, cgi, sizeof body - 1, worker);
	int ra = run_capture(cmd, a, sizeof a);
	snprintf(cmd, sizeof cmd,
		 "printf '%%s' '%s' | %s CONTENT_LENGTH=%zu %s --model %s --threads 1 2>/dev/null", body,
		 cgi, sizeof body - 1, worker, dir);
	int rb = run_capture(cmd, b, sizeof b);
	close(fd);
	CHECK(ra == 0 && rb == 0, "exit statuses %d and %d", ra, rb);
	const char *ta = strstr(a, "\"text\":"), *tb = strstr(b, "\"text\":");
	CHECK(ta && tb, "no text: %s | %s", a, b);
	size_t la = strcspn(ta, "}"), lb = strcspn(tb, "}");
	CHECK(la == lb && memcmp(ta, tb, la) == 0, "image: %.*s\nfiles: %.*s", (int)la, ta, (int)lb, tb);
	return 0;
}

static int copy_model(const char *from, const char *to)
{
	char cmd[2048];
	snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", to, from, to);
	return system(cmd);
}

static int write_manifest(const char *dir)
{
	char cmd[1024];
	snprintf(cmd, sizeof cmd, "cd '%s' && sha256sum *.json *.safetensors > ember.sha256", dir);
	return system(cmd);
}

static int test_verify(void)
{
	char from[512], dir[512], path[600], err[EMBER_ERR_LEN];
	snprintf(from, sizeof from, "%s/tiny-qwen2", models);
	snprintf(dir, sizeof dir, "%s/verify", tmp);
	CHECK(copy_model(from, dir) == 0, "copy");
	struct wstore_opts o = {.verify = true};
	struct wstore_stats st;
	int fd;
	CHECK(wstore_load(dir, &o, &fd, &st, err) == -ENOENT && strstr(err, "ember.sha256"),
	      "no manifest: %s", err);
	CHECK(write_manifest(dir) == 0, "sha256sum");
	CHECK(wstore_load(dir, &o, &fd, &st, err) == 0, "a good manifest: %s", err);
	close(fd);
	/* One byte of weights changes on disk. */
	snprintf(path, sizeof path, "%s/model.safetensors", dir);
	int f = open(path, O_RDWR);
	struct stat sb;
	CHECK(f >= 0 && fstat(f, &sb) == 0, "open");
	char c;
	CHECK(pread(f, &c, 1, sb.st_size - 3) == 1, "read");
	c ^= 1;
	CHECK(pwrite(f, &c, 1, sb.st_size - 3) == 1, "write");
	close(f);
	CHECK(wstore_load(dir, &o, &fd, &st, err) == -EINVAL && strstr(err, "model.safetensors") &&
		      strstr(err, "does not match"),
	      "a changed file: %s", err);
	printf("    %s\n", err);
	/* A file the manifest does not list. */
	CHECK(write_manifest(dir) == 0, "sha256sum");
	snprintf(path, sizeof path, "%s/extra.json", dir);
	FILE *x = fopen(path, "w");
	CHECK(x && fputs("{}", x) >= 0 && fclose(x) == 0, "extra file");
	CHECK(wstore_load(dir, &o, &fd, &st, err) == -EINVAL && strstr(err, "extra.json"),
	      "an unlisted file: %s", err);
	return 0;
}

static int test_bad_header(void)
{
	char from[512], dir[512], path[600], err[EMBER_ERR_LEN];
	snprintf(from, sizeof from, "%s/tiny-llama", models);
	snprintf(dir, sizeof dir, "%s/badheader", tmp);
	CHECK(copy_model(from, dir) == 0, "copy");
	snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
	int f = open(path, O_RDWR);
	CHECK(f >= 0 && pwrite(f, "{\"x\":", 5, 8) == 5, "corrupt");
	close(f);
	struct wstore_opts o = {0};
	struct wstore_stats st = {.bytes = 1};
	int fd = -1;
	CHECK(wstore_load(dir, &o, &fd, &st, err) < 0 && fd == -1 &&
		      strstr(err, "model-00002-of-00002.safetensors"),
	      "a broken header: %s", err);
	CHECK(st.bytes == 0, "bytes were counted as read before the headers were checked");
	printf("    %s\n", err);
	return 0;
}

static int test_image_checks(void)
{
	/* A small image made by hand: one file, then broken in every way. */
	size_t n = 1;
	uint64_t len = 10, off;
	size_t size = wimg_layout(&len, n, &off);
	CHECK(size == wimg_data_offset(1) + WIMG_ALIGN, "size %zu", size);
	uint8_t *img = calloc(1, size);
	CHECK(img, "calloc");
	struct wimg_file f = {.name = "config.json", .offset = off, .length = len};
	wimg_write_table(img, size, &f, n);
	const struct wimg_file *t;
	size_t k;
	char err[EMBER_ERR_LEN];
	int rc = 0;
	if (wimg_check(img, size, &t, &k, err) != 0 || k != 1)
		rc = fail("a good image: %s", err);
	else if (wimg_check(img, size - 1, &t, &k, err) != -EINVAL)
		rc = fail("a truncated image passed");
	struct wimg_file *tab = (struct wimg_file *)(img + WIMG_TABLE_OFFSET);
	tab->length = WIMG_ALIGN * 2; /* past the end: the digest catches it first */
	if (!rc && (wimg_check(img, size, &t, &k, err) != -EINVAL || !strstr(err, "digest")))
		rc = fail("a changed table passed: %s", err);
	wimg_write_table(img, size, &(struct wimg_file){.name = "a/b", .offset = off, .length = 1}, 1);
	if (!rc && wimg_check(img, size, &t, &k, err) != -EINVAL)
		rc = fail("a name with a slash passed");
	wimg_write_table(img, size, &(struct wimg_file){.name = "x", .offset = off + 1, .length = 1}, 1);
	if (!rc && wimg_check(img, size, &t, &k, err) != -EINVAL)
		rc = fail("an unaligned file passed");
	wimg_write_table(img, size, &(struct wimg_file){.name = "x", .offset = off, .length = size}, 1);
	if (!rc && wimg_check(img, size, &t, &k, err) != -EINVAL)
		rc = fail("a file past the end passed");
	free(img);
	return rc;
}

/* Readers of the pool's sums while emberd retires workers: every worker
 * counts 1 in counter word 0 and 5 in word 255 whether it runs or has
 * exited, so every sum must be exactly the number of workers so far. */
struct sum_reader {
	struct scoreboard *sb;
	_Atomic int stop;
	_Atomic int64_t at_least;      /* workers started before the read began */
	_Atomic int64_t sums, bad;
	char what[128];
};

static void *sum_reader(void *arg)
{
	struct sum_reader *r = arg;
	while (!atomic_load(&r->stop)) {
		_Atomic uint64_t c[SB_COUNTER_WORDS];
		_Atomic int64_t g[SB_GAUGE_WORDS];
		int64_t lo = atomic_load(&r->at_least);
		sb_sum(r->sb, c, g);
		uint64_t n = atomic_load(&c[0]), n5 = atomic_load(&c[SB_COUNTER_WORDS - 1]);
		if (n < (uint64_t)lo || n5 != 5 * n || atomic_load(&g[0]) > 3) {
			if (!atomic_fetch_add(&r->bad, 1))
				snprintf(r->what, sizeof r->what, "sum %llu and %llu with %lld workers, gauge %lld",
					 (unsigned long long)n, (unsigned long long)n5, (long long)lo,
					 (long long)atomic_load(&g[0]));
		}
		atomic_fetch_add(&r->sums, 1);
	}
	return NULL;
}

static int test_scoreboard_sums(void)
{
	char err[EMBER_ERR_LEN];
	int fd;
	struct scoreboard *sb = sb_create(3, &fd, err);
	CHECK(sb, "%s", err);
	struct sum_reader r = {.sb = sb};
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, sum_reader, &r);
	/* 5000 workers through 3 slots, one every 50 us (emberd retires a few
	 * a second at most): start one (its counters and a gauge set before it
	 * counts as started), retire the oldest. */
	int64_t started = 0;
	for (int k = 0; k < 5000; k++) {
		nanosleep(&(struct timespec){.tv_nsec = 50000}, NULL);
		int i = k % 3;
		if (k >= 3)
			sb_retire(sb, i);
		struct sb_slot *s = &sb->slot[i];
		atomic_store(&s->counters[0], 1);
		atomic_store(&s->counters[SB_COUNTER_WORDS - 1], 5);
		atomic_store(&s->gauges[0], 1);
		atomic_store(&s->state, SB_READY);
		atomic_store(&r.at_least, ++started);
	}
	atomic_store(&r.stop, 1);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	_Atomic uint64_t c[SB_COUNTER_WORDS];
	_Atomic int64_t g[SB_GAUGE_WORDS];
	sb_sum(sb, c, g);
	int rc = 0;
	if (atomic_load(&c[0]) != 5000 || atomic_load(&g[0]) != 3)
		rc = fail("final sums %llu, gauge %lld", (unsigned long long)atomic_load(&c[0]),
			  (long long)atomic_load(&g[0]));
	else if (atomic_load(&r.bad))
		rc = fail("%lld of %lld sums wrong, first: %s", (long long)atomic_load(&r.bad),
			  (long long)atomic_load(&r.sums), r.what);
	else
		printf("    %lld sums read while 4997 workers were retired, all exact\n",
		       (long long)atomic_load(&r.sums));
	sb_unmap(sb);
	close(fd);
	return rc;
}

/* The next event byte on fd within 60 s, or 0. */
static char next_event(int fd)
{
	struct pollfd q = {.fd = fd, .events = POLLIN};
	char b = 0;
	if (poll(&q, 1, 60000) == 1 && read(fd, &b, 1) != 1)
		b = 0;
	return b;
}

/* A worker under a scoreboard and an event pipe, as emberd starts it: it
 * says when it is ready and when its one slot is taken. */
static int test_worker_events(void)
{
	char err[EMBER_ERR_LEN], sock[512], body[512], cmd[2048], out[8192];
	int sbfd, ev[2];
	struct scoreboard *sb = sb_create(1, &sbfd, err);
	CHECK(sb && pipe2(ev, O_CLOEXEC) == 0, "%s", sb ? strerror(errno) : err);
	atomic_store(&sb->slot[0].state, SB_STARTING);
	snprintf(sock, sizeof sock, "%s/events.sock", tmp);
	pid_t pid = fork();
	if (pid == 0) {
		char a[16], b[16];
		snprintf(a, sizeof a, "%d", sbfd);
		snprintf(b, sizeof b, "%d", ev[1]);
		fcntl(sbfd, F_SETFD, 0);
		fcntl(ev[1], F_SETFD, 0);
		char log[512];
		snprintf(log, sizeof log, "%s/events.log", tmp);
		int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (lfd >= 0)
			dup2(lfd, 2);
		setenv("EMBER_SCOREBOARD_FD", a, 1);
		setenv("EMBER_WORKER_SLOT", "0", 1);
		setenv("EMBER_EVENT_FD", b, 1);
		char model[512];
		snprintf(model, sizeof model, "%s/tiny-qwen2", models);
		execl(worker, worker, "--model", model, "--listen", sock, "--slots", "1", "--threads", "1",
		      (char *)NULL);
		_exit(127);
	}
	close(ev[1]);
	int rc = 0;
	char e = next_event(ev[0]);
	if (e != SB_EV_READY || atomic_load(&sb->slot[0].state) != SB_READY) {
		rc = fail("first event '%c', state %d", e ? e : '0', atomic_load(&sb->slot[0].state));
		goto out;
	}
	snprintf(body, sizeof body, "%s/events.json", tmp);
	FILE *f = fopen(body, "w");
	if (!f || fputs("{\"prompt\":\"Events\",\"max_tokens\":4}", f) < 0 || fclose(f) != 0) {
		rc = fail("cannot write %s", body);
		goto out;
	}
	snprintf(cmd, sizeof cmd,
		 "REQUEST_METHOD=POST REQUEST_URI=/v1/completions CONTENT_LENGTH=%ld "
		 "cgi-fcgi -bind -connect %s < %s 2>&1",
		 (long)strlen("{\"prompt\":\"Events\",\"max_tokens\":4}"), sock, body);
	int st = run_capture(cmd, out, sizeof out);
	e = next_event(ev[0]);
	if (st != 0 || !strstr(out, "\"text_completion\""))
		rc = fail("the request through cgi-fcgi: %d %s", st, out);
	else if (e != SB_EV_FULL)
		rc = fail("no event when its one slot was taken: '%c'", e ? e : '0');
	else if (atomic_load(&sb->slot[0].requests) != 1)
		rc = fail("%llu requests on the scoreboard",
			  (unsigned long long)atomic_load(&sb->slot[0].requests));
out:
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	close(ev[0]);
	sb_unmap(sb);
	close(sbfd);
	return rc;
}

static const struct test tests[] = {
	{"image_matches_files", test_image_matches_files},
	{"worker_from_image", test_worker_from_image},
	{"verify", test_verify},
	{"bad_header", test_bad_header},
	{"image_checks", test_image_checks},
	{"scoreboard_sums", test_scoreboard_sums},
	{"worker_events", test_worker_events},
};

int main(int argc, char **argv)
{
	const char *only;
	const struct runner_opt opts[] = {{"--models", &models}, {"--worker", &worker}};
	if (runner_args(argc, argv, "test-supervisor", opts, 2, &only) < 0)
		return 2;
	snprintf(tmp, sizeof tmp, "/tmp/ember-test-supervisor.XXXXXX");
	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 1;
	}
	printf("test-supervisor: no random inputs; scratch in %s\n", tmp);
	int rc = run_tests(tests, sizeof tests / sizeof tests[0], only, NULL);
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmp);
	return rc;
}
