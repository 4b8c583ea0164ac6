/* Model files by name: the engine reads config.json, safetensors and tokenizer
 * files through this, never by path, so a model opens the same way from a
 * directory and from the supervisor's weight image (engine/wimage.h). Parses
 * nothing but the image's table. Runs in the worker, the command-line tool
 * and the supervisor. */
#ifndef EMBER_MODELFILES_H
#define EMBER_MODELFILES_H

#include "common.h"

#define MF_MAX_NAME 255

struct mfiles;

/* Opens the model directory dir. Files are mapped read-only on first use and
 * stay mapped until mf_close. Returns 0 or a negative errno, with err set. */
int mf_open_dir(const char *dir, struct mfiles **out, char *err);

/* Opens the weight image in file fd (a memfd from the supervisor, or any
 * file holding an image): maps it read-only and shared, checks its table.
 * fd stays the caller's. Returns 0 or a negative errno, with err set. */
int mf_open_image(int fd, struct mfiles **out, char *err);

void mf_close(struct mfiles *mf);

/* Finds the file called name (a plain file name: no '/', not "." or "..").
 * On success *data and *len describe its bytes, owned by mf. Returns -ENOENT
 * when the model has no such file (err names it), another negative errno on
 * failure. */
int mf_get(struct mfiles *mf, const char *name, const uint8_t **data, size_t *len,
	   char *err);

/* Where the files come from, for messages: the directory's path. */
const char *mf_origin(const struct mfiles *mf);

#endif
