/* Model files mapped from a directory. Each file is opened relative to the
 * directory's fd (O_NOFOLLOW is not used: model directories are often links
 * into a download cache) and mapped once. */
#include "modelfiles.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct mfile {
	char name[MF_MAX_NAME + 1];
	const uint8_t *data;
	size_t len;
};

struct mfiles {
	int dirfd;
	char *origin;
	struct mfile *files;
	size_t n, cap;
};

int mf_open_dir(const char *dir, struct mfiles **out, char *err)
{
	*out = NULL;
	struct mfiles *mf = calloc(1, sizeof *mf);
	if (!mf)
		return ember_err(err, -ENOMEM, "out of memory");
	mf->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (mf->dirfd < 0) {
		int rc = -errno;
		free(mf);
		return ember_err(err, rc, "open(%s) failed: %s", dir, strerror(-rc));
	}
	mf->origin = strdup(dir);
	if (!mf->origin) {
		mf_close(mf);
		return ember_err(err, -ENOMEM, "out of memory");
	}
	*out = mf;
	return 0;
}

void mf_close(struct mfiles *mf)
{
	if (!mf)
		return;
	for (size_t i = 0; i < mf->n; i++)
		if (mf->files[i].len)
			munmap((void *)mf->files[i].data, mf->files[i].len);
	free(mf->files);
	free(mf->origin);
	if (mf->dirfd >= 0)
		close(mf->dirfd);
	free(mf);
}

const char *mf_origin(const struct mfiles *mf)
{
	return mf->origin;
}

static bool plain_name(const char *name)
{
	size_t n = strlen(name);
	return n > 0 && n <= MF_MAX_NAME && !strchr(name, '/') && strcmp(name, ".") != 0 &&
	       strcmp(name, "..") != 0;
}

int mf_get(struct mfiles *mf, const char *name, const uint8_t **data, size_t *len,
	   char *err)
{
	if (!plain_name(name))
		return ember_err(err, -EINVAL, "'%s' is not a plain file name", name);
	for (size_t i = 0; i < mf->n; i++) {
		if (strcmp(mf->files[i].name, name) == 0) {
			*data = mf->files[i].data;
			*len = mf->files[i].len;
			return 0;
		}
	}
	int fd = openat(mf->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int rc = -errno;
		return ember_err(err, rc, "%s/%s: %s", mf->origin, name, strerror(-rc));
	}
	struct stat st;
	int rc = 0;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		ember_err(err, rc, "fstat(%s/%s) failed: %s", mf->origin, name, strerror(-rc));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = ember_err(err, -EINVAL, "%s/%s is not a regular file", mf->origin, name);
		goto out;
	}
	if (mf->n == mf->cap) {
		size_t cap = mf->cap ? mf->cap * 2 : 8;
		struct mfile *f = realloc(mf->files, cap * sizeof *f);
		if (!f) {
			rc = ember_err(err, -ENOMEM, "out of memory");
			goto out;
		}
		mf->files = f;
		mf->cap = cap;
	}
	struct mfile *f = &mf->files[mf->n];
	memset(f, 0, sizeof *f);
	strcpy(f->name, name);
	/* An empty file maps to nothing; give it a valid empty buffer. */
	static const uint8_t empty[1];
	f->data = empty;
	if (st.st_size > 0) {
		void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
		if (p == MAP_FAILED) {
			rc = -errno;
			ember_err(err, rc, "mmap(%s/%s) failed: %s", mf->origin, name, strerror(-rc));
			goto out;
		}
		f->data = p;
		f->len = (size_t)st.st_size;
	}
	mf->n++;
	*data = f->data;
	*len = f->len;
out:
	close(fd);
	return rc;
}
