/* Byte-level BPE tokenizers from Hugging Face's tokenizer.json (the DeepSeek-V3
 * / R1, Qwen2 / Qwen3 and Llama-3 kinds): normalizers, pre-tokenizers, merges,
 * added tokens, the ByteLevel decoder and the BOS of the post-processor. Not
 * chat templates. The loaded tokenizer is read-only and shared by threads;
 * each thread encodes through its own tok_ctx. Runs in the worker. */
#ifndef EMBER_TOKENIZER_H
#define EMBER_TOKENIZER_H

#include "modelfiles.h"

struct tokenizer;
struct tok_ctx;

/* Loads tokenizer.json and, when present, tokenizer_config.json from mf.
 * Anything it does not implement is an error naming the piece. Returns 0 or
 * a negative errno with err set. */
int tok_load(struct mfiles *mf, struct tokenizer **out, char *err);

/* The same from the two files' bytes (cfg may be NULL); for tests and fuzzing. */
int tok_load_json(const uint8_t *json, size_t len, const uint8_t *cfg, size_t cfg_len,
		  struct tokenizer **out, char *err);

void tok_free(struct tokenizer *t);

/* Per-thread encoding state: a cache of words already split into tokens and
 * scratch buffers. Returns NULL when out of memory. */
struct tok_ctx *tok_ctx_create(const struct tokenizer *t);
void tok_ctx_destroy(struct tok_ctx *c);

/* Encodes text[0..len) (which must be valid UTF-8) and appends the ids to
 * *ids, growing it (*n ids in use, *cap allocated; the caller frees *ids).
 * With add_special, the post-processor's tokens (BOS) are added. Returns 0,
 * -EILSEQ for invalid UTF-8, or -ENOMEM, with err set. */
int tok_encode(const struct tokenizer *t, struct tok_ctx *c, const char *text, size_t len,
	       bool add_special, int32_t **ids, size_t *n, size_t *cap, char *err);

/* The bytes a token stands for (for byte-level tokens, the raw bytes; for an
 * added token, its text), or NULL for an id outside the vocabulary. */
const char *tok_piece(const struct tokenizer *t, int32_t id, size_t *len);

/* Number of ids (vocabulary plus added tokens): ids are 0..tok_n_ids-1. */
int tok_n_ids(const struct tokenizer *t);

/* The id of token text (a vocabulary entry or an added token), or -1. */
int32_t tok_find(const struct tokenizer *t, const char *text);

int32_t tok_bos(const struct tokenizer *t); /* -1 when none */
int32_t tok_eos(const struct tokenizer *t); /* -1 when none */
bool tok_is_special(const struct tokenizer *t, int32_t id);

/* The chat_template text of tokenizer_config.json, or NULL. */
const char *tok_chat_template(const struct tokenizer *t);

/* Streaming decoding: the bytes of each token, with an incomplete UTF-8
 * sequence at the end held back until the token that completes it, so no
 * chunk ever holds invalid UTF-8 (a sequence that cannot be completed comes
 * out as U+FFFD). */
struct tok_stream {
	uint8_t held[4];
	size_t n_held;
};

/* TOK_STREAM_ROOM(len) bytes always hold what a piece of len bytes lets out:
 * each byte, held ones included, becomes at most a 3-byte U+FFFD. */
#define TOK_STREAM_ROOM(len) (3 * ((size_t)(len) + 3))

/* Appends the text of token id to out (cap bytes) and returns the number
 * of bytes written, or -1 (the stream unchanged) when cap is less than
 * TOK_STREAM_ROOM of the piece's length. tok_stream_flush ends the stream. */
long tok_stream_push(const struct tokenizer *t, struct tok_stream *s, int32_t id, char *out,
		     size_t cap);
long tok_stream_flush(struct tok_stream *s, char *out, size_t cap);

#endif
