/* A reasoning model's output split into its reasoning and its answer, as
 * DeepSeek's API (deepseek-reasoner) and vLLM's and SGLang's deepseek_r1
 * parsers give them: for a prompt that opens a <think> block (R1's, and
 * DeepSeek-V3.1's with thinking on, end with "<think>" and a newline or
 * not), the output up to "</think>" is the reasoning and the rest the
 * answer; an output that never closes it is all reasoning; a "<think>" the
 * model writes again at the very start is dropped. Fed piece by piece as
 * the text comes, holding back only bytes that may begin a tag, so that
 * the two parts stream as they are written. Runs wherever a response is
 * made (the worker's request threads, and its engine thread to count the
 * reasoning's tokens). */
#ifndef EMBER_REASONING_H
#define EMBER_REASONING_H

#include <stdbool.h>
#include <stddef.h>

#define REASON_OPEN "<think>"
#define REASON_CLOSE "</think>"

enum reason_state { REASON_START, REASON_THINK, REASON_ANSWER };

struct reason_split {
	enum reason_state state;
	char held[8]; /* a tag's first bytes, not yet known to be one */
	size_t n_held;
};

/* Whether prompt[0..n), a chat template's rendering with the generation
 * prompt, ends inside an open <think> block ("<think>" then whitespace at
 * most). */
bool reason_prompt_opens(const char *prompt, size_t n);

/* A split of an output that starts in the reasoning. */
void reason_init(struct reason_split *r);

/* What a feed hands over: think says which part p[0..n) is of. */
typedef void (*reason_out)(void *arg, bool think, const char *p, size_t n);

/* Feeds text[0..n) (any bytes, split anywhere); out (may be NULL) gets what
 * is certain, in order, pieces of one part in one call where they are
 * contiguous. final: the output ends here, so what is held goes out as
 * reasoning. After the close, everything is answer. */
void reason_feed(struct reason_split *r, const char *text, size_t n, bool final, reason_out out,
		 void *arg);

#endif
