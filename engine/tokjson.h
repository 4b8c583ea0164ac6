/* The two large parts of tokenizer.json, model.vocab and model.merges (some
 * 300,000 strings), read straight from the file's bytes without building a
 * JSON tree, which is most of a worker's start otherwise. Plain JSON only:
 * at anything this reader does not take exactly as jansson would (an escape
 * it does not know, invalid UTF-8, a number that is not a plain integer, a
 * key given twice) it says no, and the caller parses the file whole with
 * jansson, whose errors are the ones users see. Not the rest of the
 * tokenizer (tokenizer.c). Runs in the thread that loads a tokenizer. */
#ifndef EMBER_TOKJSON_H
#define EMBER_TOKJSON_H

#include "common.h"

/* Byte ranges [at, end) of the values of model.vocab (an object) and
 * model.merges (an array) in a tokenizer.json of len bytes. */
struct tj_sections {
	size_t vocab_at, vocab_end, n_vocab;    /* n_vocab: its keys */
	size_t merges_at, merges_end, n_merges; /* n_merges: its members */
};

/* Finds them, checking the structure of the whole file on the way.
 * Returns 0, or -1 when the file is not plain enough or either is missing. */
int tj_find(const char *json, size_t len, struct tj_sections *out);

/* Calls fn for each "text": id of the vocab object json[at, end), in order,
 * with the text decoded (NUL-terminated, len bytes; valid until fn returns).
 * Returns 0, -1 when the bytes are not plain enough, or what fn returned
 * when that was not 0. */
int tj_vocab(const char *json, size_t at, size_t end,
	     int (*fn)(void *arg, const char *text, size_t len, long id), void *arg);

/* Calls fn for each merge of the merges array json[at, end), in order: a
 * string "a b" (split at its one space) or a pair ["a", "b"]. Returns as
 * tj_vocab; a string that is not "a b" is -1 too (jansson's path words the
 * error). */
int tj_merges(const char *json, size_t at, size_t end,
	      int (*fn)(void *arg, const char *a, size_t la, const char *b, size_t lb), void *arg);

#endif
