/* Chat templates: the prompt text a conversation becomes, rendered by a
 * built-in renderer for each template family the supported models ship,
 * byte for byte what transformers' Jinja rendering of that template gives.
 * Not a Jinja interpreter. Runs in the worker. */
#ifndef EMBER_CHAT_H
#define EMBER_CHAT_H

#include "common.h"

enum chat_family {
	CHAT_DEEPSEEK_V3,
	CHAT_QWEN3,
	CHAT_LLAMA3,
	CHAT_DEEPSEEK_R1,  /* the R1-Distill models */
	CHAT_QWEN25,       /* Qwen2.5's ChatML, with its default system prompt */
	CHAT_DEEPSEEK_V31, /* DeepSeek-V3.1: thinking on or off per request */
	CHAT_FAMILIES
};

struct chat_msg {
	const char *role;    /* "system", "user" or "assistant" */
	const char *content;
};

/* The families' names, as --chat-template takes them. */
#define CHAT_FAMILY_NAMES "deepseek-r1, deepseek-v3, deepseek-v3.1, qwen2.5, qwen3, llama3"

/* The family called name (as given to --chat-template), or -1. */
int chat_family_from_name(const char *name);
const char *chat_family_name(enum chat_family f);

/* Recognises the chat_template text of tokenizer_config.json. Returns the
 * family, or -ENOENT with err naming --chat-template when the text is not
 * one ember renders (a template that is missing counts as not recognised). */
int chat_detect(const char *template_text, char *err);

/* Renders messages[0..n) and, with add_generation_prompt, the start of the
 * assistant's turn; thinking is the template's `thinking` variable (only
 * DeepSeek-V3.1's reads it). bos is the tokenizer's BOS text ("" when
 * none). On success *out is a malloc'd NUL-terminated string (the caller
 * frees it). Returns 0, -EINVAL for a conversation the template cannot
 * take (no messages, an unknown role), or -ENOMEM, with err set. */
int chat_render(enum chat_family f, const struct chat_msg *messages, size_t n,
		bool add_generation_prompt, bool thinking, const char *bos, char **out, char *err);

#endif
