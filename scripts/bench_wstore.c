/* Benchmark of the weight store: the rate at which emberd fills its memfd
 * from a model directory with io_uring, from a cold page cache and a warm
 * one, beside `cat FILE > /dev/null` and a plain read() loop over the same
 * files in the same run.
 *   bench-wstore --model DIR */
#include "../engine/common.h"
#include "../supervisor/wstore.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *dir;
static char names[64][512];
static int n_names;
static size_t total;

/* Drops the files from the page cache: all caches when root may, else
 * each file's pages (clean pages of a file can always be dropped). */
static const char *drop_caches(void)
{
	sync();
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
	if (fd >= 0 && write(fd, "1", 1) == 1) {
		close(fd);
		return "drop_caches";
	}
	if (fd >= 0)
		close(fd);
	for (int i = 0; i < n_names; i++) {
		int f = open(names[i], O_RDONLY);
		if (f >= 0) {
			posix_fadvise(f, 0, 0, POSIX_FADV_DONTNEED);
			close(f);
		}
	}
	return "fadvise";
}

static double read_loop(void)
{
	static char buf[4 << 20];
	double t0 = ember_now();
	for (int i = 0; i < n_names; i++) {
		int f = open(names[i], O_RDONLY);
		while (f >= 0 && read(f, buf, sizeof buf) > 0)
			;
		if (f >= 0)
			close(f);
	}
	return ember_now() - t0;
}

static double cat_all(void)
{
	char cmd[40000] = "cat";
	for (int i = 0; i < n_names; i++) {
		strcat(cmd, " '");
		strcat(cmd, names[i]);
		strcat(cmd, "'");
	}
	strcat(cmd, " > /dev/null");
	double t0 = ember_now();
	if (system(cmd) != 0)
		fprintf(stderr, "bench-wstore: cat failed\n");
	return ember_now() - t0;
}

/* The other limit: writing fresh pages of a memfd as large as the files
 * (the page allocation every fill pays), with memset. */
static double memfd_first_touch(void)
{
	int fd = memfd_create("bench", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)total) < 0)
		return 0;
	void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	double t0 = ember_now();
	if (p != MAP_FAILED) {
		memset(p, 1, total);
		munmap(p, total);
	}
	close(fd);
	return p == MAP_FAILED ? 0 : ember_now() - t0;
}

static double store(bool direct)
{
	struct wstore_opts o = {.no_direct = !direct};
	struct wstore_stats st;
	char err[EMBER_ERR_LEN];
	int fd;
	if (wstore_load(dir, &o, &fd, &st, err) < 0) {
		fprintf(stderr, "bench-wstore: %s\n", err);
		exit(1);
	}
	close(fd);
	return st.seconds;
}

int main(int argc, char **argv)
{
	if (argc != 3 || strcmp(argv[1], "--model") != 0) {
		fprintf(stderr, "usage: bench-wstore --model DIR\n");
		return 2;
	}
	dir = argv[2];
	DIR *d = opendir(dir);
	struct dirent *e;
	while (d && (e = readdir(d)) && n_names < 64) {
		if (!wstore_wanted(e->d_name))
			continue;
		snprintf(names[n_names], sizeof names[0], "%s/%s", dir, e->d_name);
		struct stat st;
		if (stat(names[n_names], &st) == 0 && S_ISREG(st.st_mode)) {
			total += (size_t)st.st_size;
			n_names++;
		}
	}
	if (d)
		closedir(d);
	double gb = (double)total / 1e9;
	printf("bench-wstore: %s, %d files, %.3f GB\n", dir, n_names, gb);
	const char *how = drop_caches();
	double s_direct = store(true);
	drop_caches();
	double s_buf_cold = store(false);
	double s_buf_warm = store(false);
	drop_caches();
	double s_cat_cold = cat_all();
	double s_cat_warm = cat_all();
	drop_caches();
	double s_read_cold = read_loop();
	double s_read_warm = read_loop();
	double s_touch = memfd_first_touch();
	printf("cold page cache (emptied with %s before each cold run):\n", how);
	printf("  weight store, io_uring + O_DIRECT   %6.2f GB/s\n", gb / s_direct);
	printf("  weight store, io_uring, buffered    %6.2f GB/s\n", gb / s_buf_cold);
	printf("  cat FILES > /dev/null               %6.2f GB/s\n", gb / s_cat_cold);
	printf("  read() loop, 4 MiB buffer           %6.2f GB/s\n", gb / s_read_cold);
	printf("warm page cache:\n");
	printf("  weight store, io_uring, buffered    %6.2f GB/s\n", gb / s_buf_warm);
	printf("  cat FILES > /dev/null               %6.2f GB/s\n", gb / s_cat_warm);
	printf("  read() loop, 4 MiB buffer           %6.2f GB/s\n", gb / s_read_warm);
	printf("  memset into a fresh memfd           %6.2f GB/s\n", s_touch > 0 ? gb / s_touch : 0);
	printf("(the weight store also writes every byte into fresh memfd pages; cat and read() only read)\n");
	return 0;
}
