/* Model files into a sealed memfd through io_uring: many large reads in
 * flight, straight from the disk with O_DIRECT where the file system
 * allows it (else through the page cache), each into its file's place in
 * the image. Runs in emberd. */
#include "wstore.h"
#include "../engine/common.h"
#include "../engine/safetensors.h"
#include "../engine/sha256.h"
#include "../engine/wimage.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIRECT_BLOCK 4096   /* O_DIRECT reads: lengths and offsets in these */
#define MANIFEST "ember.sha256"

bool wstore_wanted(const char *name)
{
	static const char *const ext[] = {".json", ".safetensors", ".txt", ".model", ".jinja"};
	size_t n = strlen(name);
	if (name[0] == '.' || n >= WIMG_NAME_LEN)
		return false;
	for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
		size_t k = strlen(ext[i]);
		if (n > k && strcmp(name + n - k, ext[i]) == 0)
			return true;
	}
	return false;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(((const struct wimg_file *)a)->name, ((const struct wimg_file *)b)->name);
}

/* The files of dir that go into the image, with their lengths. */
static int list_files(int dirfd, const char *dir, struct wimg_file **out, size_t *n, char *err)
{
	int fd = dup(dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return ember_err(err, -errno, "opendir(%s) failed: %s", dir, strerror(errno));
	}
	struct wimg_file *files = NULL;
	size_t cap = 0, k = 0;
	int rc = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		struct stat st;
		if (!wstore_wanted(e->d_name) || fstatat(dirfd, e->d_name, &st, 0) < 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		if (k == WIMG_MAX_FILES) {
			rc = ember_err(err, -E2BIG, "%s has more than %d model files", dir, WIMG_MAX_FILES);
			goto fail;
		}
		if (k == cap) {
			cap = cap ? 2 * cap : 16;
			struct wimg_file *f = realloc(files, cap * sizeof *f);
			if (!f) {
				rc = ember_err(err, -ENOMEM, "out of memory");
				goto fail;
			}
			files = f;
		}
		memset(&files[k], 0, sizeof files[k]);
		snprintf(files[k].name, sizeof files[k].name, "%s", e->d_name);
		files[k].length = (uint64_t)st.st_size;
		k++;
	}
	closedir(d);
	if (k == 0) {
		free(files);
		return ember_err(err, -ENOENT, "%s holds no model files", dir);
	}
	qsort(files, k, sizeof *files, cmp_names);
	*out = files;
	*n = k;
	return 0;
fail:
	closedir(d);
	free(files);
	return rc;
}

/* Checks each safetensors header (mapping the file reads its header pages
 * only), so that a broken model is refused before anything is copied. */
static int check_headers(int dirfd, const char *dir, const struct wimg_file *files, size_t n,
			 char *err)
{
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(files[i].name);
		if (len < 12 || strcmp(files[i].name + len - 12, ".safetensors") != 0)
			continue;
		int fd = openat(dirfd, files[i].name, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return ember_err(err, -errno, "%s/%s: %s", dir, files[i].name, strerror(errno));
		struct stat sb;
		if (fstat(fd, &sb) < 0 || (uint64_t)sb.st_size != files[i].length) {
			close(fd);
			return ember_err(err, -EAGAIN, "%s/%s changed while being loaded", dir,
					 files[i].name);
		}
		void *p = files[i].length ? mmap(NULL, files[i].length, PROT_READ, MAP_SHARED, fd, 0)
					  : MAP_FAILED;
		close(fd);
		if (p == MAP_FAILED)
			return ember_err(err, -EINVAL, "%s/%s: cannot map an empty or unreadable file",
					 dir, files[i].name);
		struct st_file st;
		char why[EMBER_ERR_LEN];
		int rc = st_parse(p, files[i].length, &st, why);
		munmap(p, files[i].length);
		if (rc < 0)
			return ember_err(err, rc, "%s/%s: %s", dir, files[i].name, why);
		st_free(&st);
	}
	return 0;
}

/* Reads DIR/ember.sha256 into the files' sha256 fields; every file must be
 * listed. */
static int read_manifest(int dirfd, const char *dir, struct wimg_file *files, size_t n,
			 bool *listed, char *err)
{
	int fd = openat(dirfd, MANIFEST, O_RDONLY | O_CLOEXEC);
	FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
	if (!f) {
		if (fd >= 0)
			close(fd);
		return ember_err(err, -ENOENT, "--verify: %s/%s: %s", dir, MANIFEST, strerror(errno));
	}
	char line[WIMG_NAME_LEN + 80];
	int rc = 0, lineno = 0;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		size_t len = strcspn(line, "\r\n");
		line[len] = 0;
		if (len == 0 || line[0] == '#')
			continue;
		/* "HEX  NAME" or "HEX *NAME" (binary mode) */
		uint8_t digest[32];
		bool ok = len > 66 && line[64] == ' ' && (line[65] == ' ' || line[65] == '*');
		for (int i = 0; ok && i < 32; i++) {
			unsigned v;
			ok = sscanf(line + 2 * i, "%2x", &v) == 1;
			digest[i] = (uint8_t)v;
		}
		if (!ok) {
			rc = ember_err(err, -EINVAL, "--verify: %s/%s:%d is not a sha256sum line", dir,
				       MANIFEST, lineno);
			break;
		}
		const char *name = line + 66;
		for (size_t i = 0; i < n; i++)
			if (strcmp(files[i].name, name) == 0) {
				memcpy(files[i].sha256, digest, 32);
				listed[i] = true;
			}
	}
	fclose(f);
	for (size_t i = 0; rc == 0 && i < n; i++)
		if (!listed[i])
			rc = ember_err(err, -EINVAL, "--verify: %s is not in %s/%s; refusing to serve it",
				       files[i].name, dir, MANIFEST);
	return rc;
}

/* One file being read: where its bytes go, and how far the reads are. */
struct job {
	int fd;
	bool direct;
	uint8_t *dst;       /* (room) its place in the image */
	size_t length;      /* bytes of the file */
	size_t next;        /* first byte not yet asked for */
	int pending;        /* reads in flight */
};

/* Opens a file for reading, with O_DIRECT when asked and allowed: a
 * first aligned read tells (some file systems accept the flag and fail
 * the reads). */
static int open_for_reading(int dirfd, const char *name, bool try_direct, uint8_t *probe,
			    bool *direct)
{
	*direct = false;
	if (try_direct) {
		int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_DIRECT);
		if (fd >= 0) {
			if (pread(fd, probe, DIRECT_BLOCK, 0) >= 0) {
				*direct = true;
				return fd;
			}
			close(fd);
		}
	}
	return openat(dirfd, name, O_RDONLY | O_CLOEXEC);
}

static int fill(int dirfd, const char *dir, const struct wimg_file *files, size_t n,
		uint8_t *image, const struct wstore_opts *o, struct wstore_stats *stats, char *err)
{
	int qd = o->queue_depth > 0 ? o->queue_depth : 32;
	size_t chunk = o->chunk ? o->chunk : (size_t)4 << 20;
	chunk = (chunk + DIRECT_BLOCK - 1) / DIRECT_BLOCK * DIRECT_BLOCK;
	struct io_uring ring;
	int rc = io_uring_queue_init((unsigned)qd, &ring, 0);
	if (rc < 0)
		return ember_err(err, rc, "io_uring_queue_init failed: %s", strerror(-rc));
	struct job *jobs = calloc(n, sizeof *jobs);
	if (!jobs) {
		io_uring_queue_exit(&ring);
		return ember_err(err, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < n; i++)
		jobs[i].fd = -1;
	size_t total = 0, done = 0; /* bytes, for o->progress */
	for (size_t i = 0; i < n; i++)
		total += (size_t)files[i].length;
	size_t cur = 0;         /* the file whose reads are being queued */
	int in_flight = 0;      /* submitted and not yet completed */
	bool failed = false;    /* then: queue nothing more, let what was submitted land */
	rc = 0;
	for (;;) {
		/* Queue reads until the ring is full or every byte is asked for. */
		while (!failed && in_flight + (int)io_uring_sq_ready(&ring) < qd && cur < n) {
			struct job *j = &jobs[cur];
			if (j->fd < 0) {
				j->dst = image + files[cur].offset;
				j->length = (size_t)files[cur].length;
				if (j->length == 0) {
					cur++;
					continue;
				}
				j->fd = open_for_reading(dirfd, files[cur].name, !o->no_direct, j->dst,
							 &j->direct);
				if (j->fd < 0) {
					rc = ember_err(err, -errno, "%s/%s: %s", dir, files[cur].name,
						       strerror(errno));
					failed = true;
					break;
				}
				stats->direct_files += j->direct;
			}
			size_t want = j->length - j->next < chunk ? j->length - j->next : chunk;
			if (j->direct) /* whole blocks: the file's room in the image has space */
				want = (want + DIRECT_BLOCK - 1) / DIRECT_BLOCK * DIRECT_BLOCK;
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
			io_uring_prep_read(sqe, j->fd, j->dst + j->next, (unsigned)want, j->next);
			/* user data: the file and the block this read starts at
			 * (reads start at multiples of chunk, itself of blocks) */
			io_uring_sqe_set_data64(sqe, (uint64_t)cur << 40 | j->next / DIRECT_BLOCK);
			j->next += want;
			j->pending++;
			if (j->next >= j->length)
				cur++;
		}
		if (!failed && io_uring_sq_ready(&ring) > 0) {
			int k = io_uring_submit(&ring);
			if (k < 0) {
				rc = ember_err(err, k, "io_uring_submit failed: %s", strerror(-k));
				failed = true; /* what was not submitted is never read */
			} else {
				in_flight += k;
			}
		}
		if (in_flight == 0)
			break;
		struct io_uring_cqe *cqe;
		int w = io_uring_wait_cqe(&ring, &cqe);
		if (w < 0 && w != -EINTR) {
			/* Cannot happen with reads in flight; if it does, the image
			 * must not be unmapped under them: give up loudly. */
			fprintf(stderr, "<2>emberd: io_uring_wait_cqe failed with reads in flight: %s\n",
				strerror(-w));
			abort();
		}
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&ring, head, cqe) {
			seen++;
			in_flight--;
			size_t fi = (size_t)(cqe->user_data >> 40);
			size_t at = (size_t)(cqe->user_data & ((1ull << 40) - 1)) * DIRECT_BLOCK;
			struct job *j = &jobs[fi];
			j->pending--;
			if (failed)
				continue;
			size_t expect = j->length - at < chunk ? j->length - at : chunk;
			if (cqe->res < 0) {
				rc = ember_err(err, cqe->res, "reading %s/%s failed: %s", dir,
					       files[fi].name, strerror(-cqe->res));
				failed = true;
				continue;
			}
			/* A short read inside the file: read the rest the plain way
			 * (whole blocks for O_DIRECT: the room has space for them). */
			size_t got = (size_t)cqe->res;
			while (!failed && got < expect) {
				size_t ask = expect - got;
				if (j->direct)
					ask = (ask + DIRECT_BLOCK - 1) / DIRECT_BLOCK * DIRECT_BLOCK;
				ssize_t k = pread(j->fd, j->dst + at + got, ask, (off_t)(at + got));
				if (k <= 0) {
					rc = ember_err(err, k < 0 ? -errno : -EIO,
						       "%s/%s: the file shrank or failed while being read",
						       dir, files[fi].name);
					failed = true;
					break;
				}
				got += (size_t)k;
			}
			done += expect;
			if (j->pending == 0 && j->next >= j->length && j->fd >= 0) { /* the file is in */
				close(j->fd);
				j->fd = -1;
			}
		}
		io_uring_cq_advance(&ring, seen);
		if (o->progress && !failed)
			o->progress(o->progress_arg, "reading", done, total);
	}
	for (size_t i = 0; i < n; i++)
		if (jobs[i].fd >= 0)
			close(jobs[i].fd);
	free(jobs);
	io_uring_queue_exit(&ring);
	return rc;
}

int wstore_load(const char *dir, const struct wstore_opts *o, int *out_fd,
		struct wstore_stats *stats, char *err)
{
	double t0 = ember_now();
	memset(stats, 0, sizeof *stats);
	*out_fd = -1;
	struct wimg_file *files = NULL;
	bool *listed = NULL;
	uint64_t *lengths = NULL, *offsets = NULL;
	uint8_t *image = MAP_FAILED;
	size_t n = 0, size = 0;
	int fd = -1, rc;
	int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0)
		return ember_err(err, -errno, "open(%s) failed: %s", dir, strerror(errno));
	if ((rc = list_files(dirfd, dir, &files, &n, err)) < 0 ||
	    (rc = check_headers(dirfd, dir, files, n, err)) < 0)
		goto fail;
	if (o->verify) {
		listed = calloc(n, sizeof *listed);
		if (!listed) {
			rc = ember_err(err, -ENOMEM, "out of memory");
			goto fail;
		}
		if ((rc = read_manifest(dirfd, dir, files, n, listed, err)) < 0)
			goto fail;
	}
	lengths = malloc(n * sizeof *lengths);
	offsets = malloc(n * sizeof *offsets);
	if (!lengths || !offsets) {
		rc = ember_err(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		lengths[i] = files[i].length;
		stats->bytes += (size_t)files[i].length;
	}
	size = wimg_layout(lengths, n, offsets);
	if (size == 0) {
		rc = ember_err(err, -EFBIG, "%s: the files are too large for an image", dir);
		goto fail;
	}
	for (size_t i = 0; i < n; i++)
		files[i].offset = offsets[i];
	fd = memfd_create("ember-weights", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
		rc = ember_err(err, -errno, "memfd for the weights (%zu bytes) failed: %s", size,
			       strerror(errno));
		goto fail;
	}
	image = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (image == MAP_FAILED) {
		rc = ember_err(err, -errno, "mmap(memfd) failed: %s", strerror(errno));
		goto fail;
	}
	if ((rc = fill(dirfd, dir, files, n, image, o, stats, err)) < 0)
		goto fail;
	/* O_DIRECT reads write whole blocks: clear what lies past each file's
	 * end in its last block (its room reaches the next 2 MiB boundary). */
	for (size_t i = 0; i < n; i++) {
		size_t end = (size_t)(files[i].offset + files[i].length);
		if (end % DIRECT_BLOCK)
			memset(image + end, 0, DIRECT_BLOCK - end % DIRECT_BLOCK);
	}
	if (o->verify) {
		size_t checked = 0;
		for (size_t i = 0; i < n; i++) {
			if (o->progress)
				o->progress(o->progress_arg, "verifying", checked, stats->bytes);
			checked += (size_t)files[i].length;
			uint8_t digest[32];
			struct sha256 s;
			sha256_init(&s);
			sha256_update(&s, image + files[i].offset, (size_t)files[i].length);
			sha256_final(&s, digest);
			if (memcmp(digest, files[i].sha256, 32) != 0) {
				rc = ember_err(err, -EINVAL,
					       "--verify: %s/%s does not match its sha256 in %s; refusing to serve it",
					       dir, files[i].name, MANIFEST);
				goto fail;
			}
		}
	}
	wimg_write_table(image, size, files, n);
	munmap(image, size);
	image = MAP_FAILED;
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
		rc = ember_err(err, -errno, "sealing the weights' memfd failed: %s", strerror(errno));
		goto fail;
	}
	stats->files = (int)n;
	stats->seconds = ember_now() - t0;
	*out_fd = fd;
	fd = -1;
	rc = 0;
fail:
	if (image != MAP_FAILED)
		munmap(image, size);
	if (fd >= 0)
		close(fd);
	free(offsets);
	free(lengths);
	free(listed);
	free(files);
	close(dirfd);
	return rc;
}
