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

/* A tool call in an assistant's message, as OpenAI sends it. */
struct chat_tool_call {
	const char *name;
	const char *arguments;    /* the JSON text of the arguments, as sent */
	const char *arguments_py; /* the same as the templates' tojson prints them (pyjson.h) */
};

struct chat_msg {
	const char *role;    /* "system", "user", "assistant" or "tool" */
	const char *content; /* NULL: none, only for an assistant that calls tools */
	const struct chat_tool_call *tool_calls; /* (n_tool_calls), an assistant's */
	size_t n_tool_calls;
};

/* The tools a request offers: each tool object (OpenAI's {"type":
 * "function", "function": {...}}) as the templates' tojson prints it. */
struct chat_tools {
	const char *const *py; /* (n) */
	size_t n;
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

/* Renders messages[0..n) (with tools, NULL for none, where the template
 * writes them) and, with add_generation_prompt, the start of the
 * assistant's turn; thinking is the template's `thinking` variable (only
 * DeepSeek-V3.1's reads it). bos is the tokenizer's BOS text ("" when
 * none). On success *out is a malloc'd NUL-terminated string (the caller
 * frees it). Returns 0, -EINVAL for a conversation the template cannot
 * take (no messages, an unknown role, tool messages or tool calls for a
 * family without a tool syntax), or -ENOMEM, with err set. */
int chat_render(enum chat_family f, const struct chat_msg *messages, size_t n,
		const struct chat_tools *tools, bool add_generation_prompt, bool thinking,
		const char *bos, char **out, char *err);

/* Whether family f has a syntax for tool calls. */
bool chat_has_tools(enum chat_family f);

/* The start of a reply that calls a tool, appended to a rendering with the
 * generation prompt so that the model goes on with the call: the call's
 * opening in family f's syntax, with the function's name when name is not
 * NULL (the model writes its arguments), else up to the name; first the
 * end of a reasoning block the prompt opened (thinks). NULL for a family
 * without a tool syntax. */
const char *chat_tool_prefill(enum chat_family f, const char *name, bool thinks, struct sbuf *b);

#endif
