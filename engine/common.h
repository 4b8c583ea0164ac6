/* Shared definitions of the engine: error buffers, dtypes, small helpers.
 * Not a catch-all: only what every engine module needs. Runs in any process
 * that links the engine (worker, supervisor's model-file code, tests). */
#ifndef EMBER_COMMON_H
#define EMBER_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <string.h>

#define EMBER_ERR_LEN 256

/* Writes a formatted reason into err (EMBER_ERR_LEN bytes, may be NULL) and
 * returns code, so a failure reads `return ember_err(err, -EINVAL, "...")`. */
int ember_err(char *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Element types of tensors in model files. Only BF16, F16 and F32 are
 * computed with; the others are recognised so that a file that holds them
 * still parses and a model that needs them fails with a clear message. */
enum dtype {
	DT_F32, DT_F16, DT_BF16,
	DT_F64, DT_I64, DT_I32, DT_I16, DT_I8, DT_U8, DT_BOOL,
	DT_F8_E4M3, DT_F8_E5M2,
	DT_COUNT
};

/* Bytes per element, and the name as safetensors spells it. */
size_t dtype_size(enum dtype t);
const char *dtype_name(enum dtype t);
/* Returns the dtype for a safetensors name, or -1 when unknown. */
int dtype_from_name(const char *name);
static inline bool dtype_computable(enum dtype t)
{
	return t == DT_F32 || t == DT_F16 || t == DT_BF16;
}

static inline float bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, sizeof f);
	return f;
}

/* Round to nearest even, as torch does; NaN stays NaN. */
static inline uint16_t f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof u);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/* The length of the longest prefix of buf[0..len) that is valid UTF-8
 * (no overlong forms, surrogates or code points past U+10FFFF). */
size_t utf8_valid_prefix(const uint8_t *buf, size_t len);
/* The length (1 to 4) of the valid UTF-8 sequence that buf[0..len) starts
 * with, or 0. */
size_t utf8_seq_len(const uint8_t *buf, size_t len);
/* Writes code point cp (at most U+10FFFF) as UTF-8 to out (room for 4);
 * returns the bytes written. */
size_t utf8_put(uint32_t cp, char *out);

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

/* Element i of an array of BF16, F16 or F32 values, as a float. */
static inline float dtype_load_f32(enum dtype t, const uint8_t *p, size_t i)
{
	uint16_t h;
	float f;
	switch (t) {
	case DT_BF16:
		memcpy(&h, p + 2 * i, 2);
		return bf16_to_f32(h);
	case DT_F16:
		memcpy(&h, p + 2 * i, 2);
		return f16_to_f32(h);
	default:
		memcpy(&f, p + 4 * i, 4);
		return f;
	}
}

/* Multiplies with overflow check: returns false when a*b overflows size_t. */
static inline bool size_mul(size_t a, size_t b, size_t *out)
{
	return !__builtin_mul_overflow(a, b, out);
}

static inline bool size_add(size_t a, size_t b, size_t *out)
{
	return !__builtin_add_overflow(a, b, out);
}


/* Seconds on CLOCK_MONOTONIC: for durations and deadlines. */
double ember_now(void);
/* Whether stderr is the journal stream systemd connected (JOURNAL_STREAM
 * names its device and inode; a redirected stderr is not). */
int ember_stderr_is_journal(void);

/* A growable byte buffer, always NUL-terminated after its len bytes;
 * failed turns true (and stays) when memory runs out, after which appends
 * do nothing. Zero-initialise it; sbuf_free releases it. */
struct sbuf {
	char *p;
	size_t len, cap;
	bool failed;
};

/* Makes room for n bytes in all (and the NUL) up front; a failure only
 * means later appends grow it. */
void sbuf_reserve(struct sbuf *b, size_t n);
void sbuf_put(struct sbuf *b, const char *s, size_t n);
void sbuf_puts(struct sbuf *b, const char *s);
void sbuf_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sbuf_free(struct sbuf *b);

#endif
