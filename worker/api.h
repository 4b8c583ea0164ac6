/* The OpenAI-compatible API's bytes: request bodies of /v1/chat/completions
 * and /v1/completions checked and read into a struct api_request, and the
 * JSON of responses, stream chunks and errors written into growable
 * buffers. Not the transport (server.c) and not the engine. Runs in the
 * worker's request threads. */
#ifndef EMBER_API_H
#define EMBER_API_H

#include "../engine/chat.h"
#include "../engine/sampler.h"
#include "../engine/sched.h"
#include "../engine/stop.h"

#include <jansson.h>

/* s[0..n) as a JSON string with its quotes; bytes that are not valid UTF-8
 * become U+FFFD. */
void sbuf_json_str(struct sbuf *b, const char *s, size_t n);

/* An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}. */
struct api_error {
	int status;          /* HTTP status */
	const char *type;    /* "invalid_request_error", ... */
	const char *code;    /* NULL: null */
	char param[64];      /* "": null */
	char message[256];
};

/* Fills e and returns -1, for `return api_fail(...)`. */
int api_fail(struct api_error *e, int status, const char *type, const char *code,
	     const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* The error's JSON body. */
void api_error_json(struct sbuf *b, const struct api_error *e);

enum api_kind { API_CHAT, API_COMPLETION };

#define API_MAX_MESSAGES 1024
#define API_MAX_TOOLS 128
#define API_MODEL_LEN 256

/* A checked request. Strings point into root (or into joined, for chat
 * content given as parts) and live until api_request_free. */
struct api_request {
	enum api_kind kind;
	json_t *root;
	const char *model;          /* NULL: not given */
	/* chat */
	struct chat_msg *messages;  /* (n_messages) */
	size_t n_messages;
	char **joined;              /* (n_messages) content parts joined, or NULL entries */
	bool thinking;              /* chat_template_kwargs.thinking (or enable_thinking) */
	bool separate_reasoning;    /* reasoning in reasoning_content (default); false: all in content */
	/* tools: each as the templates print it (pyjson.h), and its name */
	char **tools_py;
	const char **tool_names;
	size_t n_tools;
	bool tools_off;             /* tool_choice "none": not offered, no call parsed */
	bool tool_required;         /* tool_choice "required": the answer opens with a call */
	const char *tool_named;     /* tool_choice names this function: the answer calls it */
	bool parallel_tool_calls;   /* false: the first call only */
	char **owned;               /* (n_owned of cap_owned) what the strings above point into */
	size_t n_owned, cap_owned;
	/* completion: text, or token ids */
	const char *prompt;
	size_t prompt_len;
	int32_t *prompt_ids;        /* (n_prompt_ids) or NULL */
	size_t n_prompt_ids;

	int max_tokens;             /* 0: not given */
	struct sampler_params sampling;
	bool temperature_set, top_p_set, top_k_set, repetition_penalty_set, seed_set;
	const char *stop[STOP_MAX];
	int n_stop;
	bool stream, include_usage;
	bool logprobs;              /* chat: logprobs; completion: logprobs given */
};

/* Checks body[0..len) as a request of kind; every field is checked for its
 * type and range. Returns 0 with *r filled (free with api_request_free), or
 * -1 with *e set (status 400) and nothing to free. */
int api_parse(enum api_kind kind, const char *body, size_t len, struct api_request *r,
	      struct api_error *e);
void api_request_free(struct api_request *r);

/* --- responses: chat.completion / text_completion, whole or as chunks --- */

/* What every chunk and answer of one response repeats. */
struct api_answer {
	enum api_kind kind;
	char id[40];                /* "chatcmpl-..." or "cmpl-..." */
	long long created;          /* Unix seconds */
	const char *model;
	bool usage_null;            /* stream with include_usage: "usage": null in chunks */
	bool logprobs;
	const struct tokenizer *tok; /* the tokens' texts and bytes in logprobs */
	bool reasoning;             /* the chat's reasoning apart (reasoning_content, and
				     * completion_tokens_details.reasoning_tokens) */
};

/* A tool call parsed from the answer (toolcall.h). */
struct api_tool_call {
	char id[32];    /* "call_..." */
	char *name, *arguments;
};

/* A response's usage: prompt and completion tokens, and of those the
 * reasoning's (when api_answer.reasoning). */
struct api_usage {
	int prompt, completion, reasoning;
};

/* A generated token as logprobs need it: the sampler's result and the
 * completion's text length once it is out. */
struct api_token {
	struct sampler_result r;
	size_t text_end;
};

/* "stop" or "length"; NULL for an end that is not an answer (a deadline,
 * a cancel, the engine's failure). */
const char *api_finish_name(enum finish_reason r);

/* Server-Sent Events of a stream, appended to b: the chat's first chunk
 * (the assistant's role); a chunk of text[0..n) (delta.content, or the
 * completion's text; delta.reasoning_content for api_chunk_reasoning) and,
 * when ev is given, the logprobs of token ev[i]; a tool call as
 * delta.tool_calls[index] (two chunks: id, type and name, then the
 * arguments); the last chunk with the
 * finish reason, then the usage chunk when include_usage, then [DONE]; or
 * instead an error event (a stream that did not end well has no [DONE]). */
void api_chunk_role(struct sbuf *b, const struct api_answer *a);
void api_chunk_text(struct sbuf *b, const struct api_answer *a, const char *text, size_t n,
		    const struct api_token *ev, size_t i);
void api_chunk_reasoning(struct sbuf *b, const struct api_answer *a, const char *text, size_t n,
			 const struct api_token *ev, size_t i);
void api_chunk_tool_call(struct sbuf *b, const struct api_answer *a, int index,
			 const struct api_tool_call *c);
void api_chunk_finish(struct sbuf *b, const struct api_answer *a, const char *reason,
		      bool include_usage, const struct api_usage *u);
void api_chunk_error(struct sbuf *b, const struct api_error *e);

/* The whole answer of a request that did not stream: text[0..len) (and
 * reasoning[0..rlen) as message.reasoning_content when a->reasoning; the
 * tool calls calls[0..n_calls), content null when it is empty then), the
 * logprobs of ev[0..n_ev) when a->logprobs, the reason and the usage. */
void api_answer_json(struct sbuf *b, const struct api_answer *a, const char *reasoning,
		     size_t rlen, const char *text, size_t len, const struct api_tool_call *calls,
		     size_t n_calls, const struct api_token *ev, size_t n_ev, const char *reason,
		     const struct api_usage *u);

#endif
