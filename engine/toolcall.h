/* Tool calls in a model's answer, parsed back as OpenAI's tool_calls: the
 * DeepSeek syntax (R1's and V3.1's templates:
 * <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>
 * ...<｜tool▁calls▁end｜>, R1 writing "function<｜tool▁sep｜>NAME\n```json\nARGS\n```")
 * and Qwen2.5's (<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>,
 * one after another). Fed piece by piece as the answer comes: text before
 * the calls goes out as it is (only a possible start of the marker held
 * back), each call once it is complete and well formed (at the end of the
 * answer also one whose end marker the model left out). What starts a call
 * and does not end one well formed goes out as text, and is counted in
 * `malformed` for a warning. Runs in the worker's request threads. */
#ifndef EMBER_TOOLCALL_H
#define EMBER_TOOLCALL_H

#include "common.h"

enum tool_syntax { TOOL_DEEPSEEK, TOOL_QWEN };

struct tool_split {
	enum tool_syntax syntax;
	bool in_calls;    /* past a start marker */
	struct sbuf held; /* a marker's first bytes, or the calls' text so far */
	struct sbuf gap;  /* whitespace after a call, dropped if another follows */
	size_t scan;      /* in a DeepSeek block: where the next call starts */
	int n_calls;      /* calls handed out */
	int malformed;    /* calls that were not, handed out as text */
	char carry[4];    /* a character's first bytes, handed out with the rest */
	size_t n_carry;
};

/* What a feed hands over: text (content), or call index's name and
 * arguments (the model's JSON text of an object), each NUL-terminated. */
struct tool_out {
	void (*text)(void *arg, const char *p, size_t n);
	void (*call)(void *arg, int index, const char *name, const char *arguments);
	void *arg;
};

void tool_split_init(struct tool_split *t, enum tool_syntax syntax);
void tool_split_free(struct tool_split *t);

/* Feeds answer[0..n); final: the answer ends here. */
void tool_feed(struct tool_split *t, const char *p, size_t n, bool final, const struct tool_out *o);

#endif
