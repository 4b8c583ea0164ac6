/* Model files mapped from a directory, or found in a weight image. Each
 * file of a directory is opened relative to the directory's fd (O_NOFOLLOW
 * is not used: model directories are often links into a download cache)
 * and mapped once; an image is mapped whole. */
#include "modelfiles.h"
#include "wimage.h"

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
	int dirfd;                        /* -1 for an image */
	const uint8_t *image;             /* (image_len) the mapped image, or NULL */
	size_t image_len;
	const struct wimg_file *table;    /* (n_table) inside the image */
	size_t n_table;
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

int mf_open_image(int fd, struct mfiles **out, char *err)
{
	*out = NULL;
	struct stat st;
	if (fstat(fd, &st) < 0)
		return ember_err(err, -errno, "fstat(weight image) failed: %s", strerror(errno));
	if (st.st_size <= 0)
		return ember_err(err, -EINVAL, "the weight image is empty");
	/* Sealed, so that the bytes checked below cannot change or vanish. */
	int seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || (seals & (F_SEAL_WRITE | F_SEAL_SHRINK)) != (F_SEAL_WRITE | F_SEAL_SHRINK))
		return ember_err(err, -EINVAL, "the weight image is not sealed against writes");
	struct mfiles *mf = calloc(1, sizeof *mf);
	if (!mf)
		return ember_err(err, -ENOMEM, "out of memory");
	mf->dirfd = -1;
	void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		int rc = -errno;
		free(mf);
		return ember_err(err, rc, "mmap(weight image) failed: %s", strerror(-rc));
	}
	mf->image = p;
	mf->image_len = (size_t)st.st_size;
	int rc = wimg_check(mf->image, mf->image_len, &mf->table, &mf->n_table, err);
	if (rc < 0) {
		mf_close(mf);
		return rc;
	}
	mf->origin = strdup("the weight image");
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
	if (mf->image)
		munmap((void *)mf->image, mf->image_len);
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
	if (mf->image) {
		for (size_t i = 0; i < mf->n_table; i++) {
			if (strcmp(mf->table[i].name, name) == 0) {
				*data = mf->image + mf->table[i].offset;
				*len = (size_t)mf->table[i].length;
				return 0;
			}
		}
		return ember_err(err, -ENOENT, "%s has no file %s", mf->origin, name);
	}
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
