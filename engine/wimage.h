/* The weight image: a model directory's files laid out in one memory file
 * (the supervisor's sealed memfd), so that workers map the weights once
 * and open the model from it exactly as from the directory. Layout, all
 * little-endian:
 *   0      header: magic "EMBERWI1", version, file count, image size, the
 *          model digest (sha256 of the table)
 *   4096   table: per file its name (NUL-padded), offset, length, sha256
 *          (zeros when not verified)
 *   ...    each file's bytes at an offset aligned to WIMG_ALIGN (2 MiB)
 * This module defines the layout and checks an image; it reads no files
 * (supervisor/wstore.c fills images, engine/modelfiles.c opens them). Runs
 * in the supervisor and the worker. */
#ifndef EMBER_WIMAGE_H
#define EMBER_WIMAGE_H

#include "common.h"

#define WIMG_MAGIC "EMBERWI1"
#define WIMG_VERSION 1
#define WIMG_ALIGN ((size_t)2 << 20)
#define WIMG_TABLE_OFFSET 4096
#define WIMG_NAME_LEN 256          /* bytes for a name, NUL-padded (255 + NUL) */
#define WIMG_MAX_FILES 4096

struct wimg_file {
	char name[WIMG_NAME_LEN];
	uint64_t offset, length;
	uint8_t sha256[32];
};

struct wimg_header {
	char magic[8];
	uint32_t version;
	uint32_t n_files;
	uint64_t size;                  /* of the whole image */
	uint8_t digest[32];             /* sha256 of the table */
};

/* Bytes of the table for n files, and the offset of the first file. */
size_t wimg_table_bytes(size_t n);
size_t wimg_data_offset(size_t n);

/* Lays out n files of the given lengths: fills offsets[] and returns the
 * image size, with each file's room rounded up to WIMG_ALIGN (so reads of
 * whole blocks past a file's end stay inside its room). Returns 0 when the
 * sizes overflow. */
size_t wimg_layout(const uint64_t *lengths, size_t n, uint64_t *offsets);

/* Writes the header and table for files[0..n) at the start of image
 * (size bytes, at least wimg_data_offset(n)); computes the digest. */
void wimg_write_table(uint8_t *image, size_t size, const struct wimg_file *files, size_t n);

/* Checks image[0..size) (untrusted): magic, version, a table that fits,
 * names that are plain and unique, files inside the image at aligned,
 * non-overlapping offsets, and the digest. On success *files points at the
 * table inside the image and *n is its length. Returns 0 or -EINVAL with
 * err saying what is wrong. */
int wimg_check(const uint8_t *image, size_t size, const struct wimg_file **files, size_t *n,
	       char *err);

#endif
