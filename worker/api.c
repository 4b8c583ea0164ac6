/* Request bodies of the OpenAI-compatible API checked field by field, and
 * the JSON the API answers with. Parses untrusted bytes. Runs in the
 * worker's request threads. */
#include "api.h"
#include "../engine/pyjson.h"
#include "../engine/common.h"
#include "../engine/tokenizer.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sbuf_json_str(struct sbuf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	sbuf_put(b, "\"", 1);
	size_t i = 0;
	while (i < n) {
		size_t run = i;
		while (run < n && (unsigned char)s[run] >= 0x20 && s[run] != '"' && s[run] != '\\' &&
		       (unsigned char)s[run] < 0x80)
			run++;
		sbuf_put(b, s + i, run - i);
		i = run;
		if (i == n)
			break;
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x80) {
			size_t ok = utf8_valid_prefix((const uint8_t *)s + i, n - i);
			if (ok == 0) { /* an invalid byte */
				sbuf_puts(b, "\\ufffd");
				i++;
				continue;
			}
			/* The valid multi-byte characters up to the next ASCII byte. */
			size_t end = i;
			while (end < i + ok && (unsigned char)s[end] >= 0x80)
				end++;
			sbuf_put(b, s + i, end - i);
			i = end;
			continue;
		}
		char esc[7] = {'\\', 0};
		switch (c) {
		case '"': esc[1] = '"'; break;
		case '\\': esc[1] = '\\'; break;
		case '\n': esc[1] = 'n'; break;
		case '\r': esc[1] = 'r'; break;
		case '\t': esc[1] = 't'; break;
		default:
			memcpy(esc, "\\u00", 4);
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
			sbuf_put(b, esc, 6);
			i++;
			continue;
		}
		sbuf_put(b, esc, 2);
		i++;
	}
	sbuf_put(b, "\"", 1);
}

int api_fail(struct api_error *e, int status, const char *type, const char *code,
	     const char *param, const char *fmt, ...)
{
	e->status = status;
	e->type = type;
	e->code = code;
	snprintf(e->param, sizeof e->param, "%s", param ? param : "");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof e->message, fmt, ap);
	va_end(ap);
	return -1;
}

void api_error_json(struct sbuf *b, const struct api_error *e)
{
	sbuf_puts(b, "{\"error\":{\"message\":");
	sbuf_json_str(b, e->message, strlen(e->message));
	sbuf_puts(b, ",\"type\":");
	sbuf_json_str(b, e->type, strlen(e->type));
	sbuf_puts(b, ",\"param\":");
	if (e->param[0])
		sbuf_json_str(b, e->param, strlen(e->param));
	else
		sbuf_puts(b, "null");
	sbuf_puts(b, ",\"code\":");
	if (e->code)
		sbuf_json_str(b, e->code, strlen(e->code));
	else
		sbuf_puts(b, "null");
	sbuf_puts(b, "}}");
}

/* --- request fields -------------------------------------------------------- */

#define BAD(param, ...) api_fail(e, 400, "invalid_request_error", "invalid_value", param, __VA_ARGS__)
#define BAD_TYPE(param, what) \
	api_fail(e, 400, "invalid_request_error", "invalid_type", param, "'%s' must be %s", param, what)

/* A number field within [lo, hi]; absent or null leaves *out. */
static int get_number(json_t *root, const char *name, double lo, double hi, float *out, bool *set,
		      struct api_error *e)
{
	json_t *v = json_object_get(root, name);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_number(v))
		return BAD_TYPE(name, "a number");
	double d = json_number_value(v);
	if (!(d >= lo && d <= hi))
		return BAD(name, "'%s' must be between %g and %g, not %g", name, lo, hi, d);
	*out = (float)d;
	if (set)
		*set = true;
	return 0;
}

/* An integer field within [lo, hi] (integral floats such as 5.0 too). */
static int get_int(json_t *root, const char *name, long long lo, long long hi, long long *out,
		   bool *set, struct api_error *e)
{
	json_t *v = json_object_get(root, name);
	if (!v || json_is_null(v))
		return 0;
	long long x;
	if (json_is_integer(v)) {
		x = json_integer_value(v);
	} else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
		   fabs(json_real_value(v)) < 9e15) {
		x = (long long)json_real_value(v);
	} else {
		return BAD_TYPE(name, "an integer");
	}
	if (x < lo || x > hi)
		return BAD(name, "'%s' must be between %lld and %lld, not %lld", name, lo, hi, x);
	*out = x;
	if (set)
		*set = true;
	return 0;
}

static int get_bool(json_t *root, const char *name, bool *out, struct api_error *e)
{
	json_t *v = json_object_get(root, name);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return BAD_TYPE(name, "a boolean");
	*out = json_is_true(v);
	return 0;
}

/* chat_template_kwargs, as vLLM and SGLang take it: the variables a chat
 * template reads beside the messages. ember's templates read one, the
 * thinking switch of DeepSeek-V3.1 ("thinking", or "enable_thinking" as
 * Qwen3's is called); any other is refused, since nothing would read it. */
static int get_template_kwargs(json_t *root, struct api_request *r, struct api_error *e)
{
	json_t *kw = json_object_get(root, "chat_template_kwargs");
	if (!kw || json_is_null(kw))
		return 0;
	if (!json_is_object(kw)) {
		BAD_TYPE("chat_template_kwargs", "an object");
		return -1;
	}
	const char *key;
	json_t *v;
	json_object_foreach(kw, key, v) {
		if (strcmp(key, "thinking") != 0 && strcmp(key, "enable_thinking") != 0) {
			BAD("chat_template_kwargs",
			    "chat_template_kwargs: '%.64s' is not a variable of ember's chat templates "
			    "(only 'thinking' or 'enable_thinking')",
			    key);
			return -1;
		}
		if (get_bool(kw, key, &r->thinking, e) < 0) {
			snprintf(e->param, sizeof e->param, "chat_template_kwargs.%s", key);
			return -1;
		}
	}
	return 0;
}

/* Fields ember does not implement: an error when given with a value that
 * would change the answer, so that no client is silently misled. */
static int refuse_unsupported(json_t *root, struct api_error *e)
{
	static const char *const arrays_or_objects[] = {"functions", "logit_bias"};
	for (size_t i = 0; i < sizeof arrays_or_objects / sizeof arrays_or_objects[0]; i++) {
		json_t *v = json_object_get(root, arrays_or_objects[i]);
		if (v && !json_is_null(v) && json_object_size(v) + json_array_size(v) > 0)
			return api_fail(e, 400, "invalid_request_error", "unsupported_parameter",
					arrays_or_objects[i], "'%s' is not supported",
					arrays_or_objects[i]);
	}
	json_t *rf = json_object_get(root, "response_format");
	if (rf && !json_is_null(rf)) {
		json_t *t = json_object_get(rf, "type");
		if (!json_is_object(rf) || !json_is_string(t) ||
		    strcmp(json_string_value(t), "text") != 0)
			return api_fail(e, 400, "invalid_request_error", "unsupported_parameter",
					"response_format",
					"only response_format {\"type\": \"text\"} is supported: "
					"json_object and json_schema need constrained decoding, which "
					"ember does not have yet");
	}
	json_t *n = json_object_get(root, "n");
	if (n && !json_is_null(n)) {
		if (!json_is_integer(n))
			return BAD_TYPE("n", "an integer");
		if (json_integer_value(n) != 1)
			return api_fail(e, 400, "invalid_request_error", "unsupported_parameter", "n",
					"only n = 1 is supported");
	}
	json_t *bo = json_object_get(root, "best_of");
	if (bo && !json_is_null(bo) && !(json_is_integer(bo) && json_integer_value(bo) == 1))
		return api_fail(e, 400, "invalid_request_error", "unsupported_parameter", "best_of",
				"only best_of = 1 is supported");
	json_t *echo = json_object_get(root, "echo");
	if (echo && !json_is_null(echo) && !json_is_false(echo))
		return api_fail(e, 400, "invalid_request_error", "unsupported_parameter", "echo",
				"echo is not supported");
	json_t *suffix = json_object_get(root, "suffix");
	if (suffix && !json_is_null(suffix))
		return api_fail(e, 400, "invalid_request_error", "unsupported_parameter", "suffix",
				"suffix is not supported");
	return 0;
}

static int get_stop(json_t *root, struct api_request *r, struct api_error *e)
{
	json_t *v = json_object_get(root, "stop");
	if (!v || json_is_null(v))
		return 0;
	if (json_is_string(v)) {
		if (json_string_length(v) == 0 || json_string_length(v) > STOP_MAX_LEN)
			return BAD("stop", "a stop string must be 1 to %d bytes long", STOP_MAX_LEN);
		r->stop[r->n_stop++] = json_string_value(v);
		return 0;
	}
	if (!json_is_array(v))
		return BAD_TYPE("stop", "a string or an array of strings");
	if (json_array_size(v) > STOP_MAX)
		return BAD("stop", "at most %d stop strings", STOP_MAX);
	size_t i;
	json_t *s;
	json_array_foreach(v, i, s) {
		if (!json_is_string(s))
			return BAD_TYPE("stop", "a string or an array of strings");
		if (json_string_length(s) == 0 || json_string_length(s) > STOP_MAX_LEN)
			return BAD("stop", "a stop string must be 1 to %d bytes long", STOP_MAX_LEN);
		r->stop[r->n_stop++] = json_string_value(s);
	}
	return 0;
}

/* A message's content: a string, or an array of {"type": "text", "text"}
 * parts (joined with nothing between them). */
static int get_content(json_t *m, size_t i, bool optional, struct api_request *r,
		       struct api_error *e)
{
	json_t *c = json_object_get(m, "content");
	char param[64];
	snprintf(param, sizeof param, "messages[%zu].content", i);
	if (optional && (!c || json_is_null(c)))
		return 0; /* an assistant that only calls tools */
	if (json_is_string(c)) {
		r->messages[i].content = json_string_value(c);
		return 0;
	}
	if (!json_is_array(c) || json_array_size(c) == 0)
		return api_fail(e, 400, "invalid_request_error", "invalid_type", param,
				"'%s' must be a string or a non-empty array of text parts", param);
	struct sbuf b = {0};
	size_t k;
	json_t *part;
	json_array_foreach(c, k, part) {
		json_t *type = json_object_get(part, "type");
		json_t *text = json_object_get(part, "text");
		if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0 ||
		    !json_is_string(text)) {
			sbuf_free(&b);
			return api_fail(e, 400, "invalid_request_error", "unsupported_parameter",
					param, "'%s' may only hold parts of type \"text\"", param);
		}
		sbuf_put(&b, json_string_value(text), json_string_length(text));
	}
	sbuf_put(&b, "", 0);
	if (b.failed) {
		sbuf_free(&b);
		return api_fail(e, 503, "server_error", "out_of_memory", NULL, "out of memory");
	}
	r->joined[i] = b.p;
	r->messages[i].content = b.p;
	return 0;
}

/* An owned string of the request (freed with it), or NULL when out of memory. */
static char *own(struct api_request *r, char *p)
{
	if (!p)
		return NULL;
	if (r->n_owned == r->cap_owned) { /* doubling: a request may hold many */
		size_t cap = r->cap_owned ? 2 * r->cap_owned : 16;
		char **o = realloc(r->owned, cap * sizeof *o);
		if (!o) {
			free(p);
			return NULL;
		}
		r->owned = o;
		r->cap_owned = cap;
	}
	r->owned[r->n_owned++] = p;
	return p;
}

/* A function's name: 1 to 64 letters, digits, '_' or '-', as OpenAI's. */
static bool function_name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 64)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!(s[i] == '_' || s[i] == '-' || (s[i] >= '0' && s[i] <= '9') ||
		      (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')))
			return false;
	return true;
}

/* An assistant message's tool_calls into r->messages[i]: OpenAI's
 * [{"id", "type": "function", "function": {"name", "arguments"}}], the
 * arguments a JSON string (an object is taken too). Returns how many, or
 * -1 with e set. */
static int get_tool_calls(json_t *m, size_t i, struct api_request *r, struct api_error *e)
{
	json_t *tc = json_object_get(m, "tool_calls");
	char param[96];
	snprintf(param, sizeof param, "messages[%zu].tool_calls", i);
	if (!tc || json_is_null(tc))
		return 0;
	if (!json_is_array(tc))
		return api_fail(e, 400, "invalid_request_error", "invalid_type", param,
				"'%s' must be an array", param);
	size_t n = json_array_size(tc);
	if (n > API_MAX_TOOLS)
		return api_fail(e, 400, "invalid_request_error", "invalid_value", param,
				"at most %d tool calls a message", API_MAX_TOOLS);
	struct chat_tool_call *calls = n ? calloc(n, sizeof *calls) : NULL;
	if (n && !own(r, (char *)calls))
		return api_fail(e, 503, "server_error", "out_of_memory", NULL, "out of memory");
	for (size_t k = 0; k < n; k++) {
		json_t *c = json_array_get(tc, k), *type = json_object_get(c, "type"),
		       *fn = json_object_get(c, "function"), *id = json_object_get(c, "id");
		json_t *name = json_object_get(fn, "name"), *args = json_object_get(fn, "arguments");
		snprintf(param, sizeof param, "messages[%zu].tool_calls[%zu]", i, k);
		if (!json_is_object(c) || !json_is_object(fn) ||
		    (type && !json_is_null(type) &&
		     !(json_is_string(type) && strcmp(json_string_value(type), "function") == 0)) ||
		    (id && !json_is_null(id) && !json_is_string(id)))
			return api_fail(e, 400, "invalid_request_error", "invalid_type", param,
					"'%s' must be {\"id\", \"type\": \"function\", \"function\": "
					"{\"name\", \"arguments\"}}", param);
		if (!json_is_string(name) || !function_name_ok(json_string_value(name)))
			return api_fail(e, 400, "invalid_request_error", "invalid_value", param,
					"'%s.function.name' must be 1 to 64 letters, digits, '_' or '-'",
					param);
		const char *a;
		if (json_is_string(args))
			a = json_string_value(args);
		else if (json_is_object(args))
			a = own(r, json_dumps(args, JSON_COMPACT | JSON_PRESERVE_ORDER));
		else
			return api_fail(e, 400, "invalid_request_error", "invalid_type", param,
					"'%s.function.arguments' must be a string of JSON", param);
		char *py = a ? own(r, py_json_of_text(a)) : NULL;
		if (!a || !py)
			return api_fail(e, 503, "server_error", "out_of_memory", NULL, "out of memory");
		calls[k] = (struct chat_tool_call){json_string_value(name), a, py};
	}
	r->messages[i].tool_calls = calls;
	r->messages[i].n_tool_calls = n;
	return (int)n;
}

/* tools: OpenAI's [{"type": "function", "function": {"name", "description",
 * "parameters"}}], each kept as the templates print it; tool_choice "auto",
 * "none", "required" or a named function of those; parallel_tool_calls. */
static int get_tools(json_t *root, struct api_request *r, struct api_error *e)
{
	r->parallel_tool_calls = true;
	if (get_bool(root, "parallel_tool_calls", &r->parallel_tool_calls, e) < 0)
		return -1;
	json_t *v = json_object_get(root, "tools");
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_array(v))
		return BAD_TYPE("tools", "an array");
	size_t n = json_array_size(v);
	if (n > API_MAX_TOOLS)
		return BAD("tools", "at most %d tools", API_MAX_TOOLS);
	r->tools_py = n ? calloc(n, sizeof *r->tools_py) : NULL;
	r->tool_names = n ? calloc(n, sizeof *r->tool_names) : NULL;
	if (n && (!own(r, (char *)r->tools_py) || !own(r, (char *)r->tool_names)))
		return api_fail(e, 503, "server_error", "out_of_memory", NULL, "out of memory");
	for (size_t k = 0; k < n; k++) {
		json_t *t = json_array_get(v, k), *type = json_object_get(t, "type"),
		       *fn = json_object_get(t, "function"), *name = json_object_get(fn, "name"),
		       *params = json_object_get(fn, "parameters"), *desc = json_object_get(fn, "description");
		char param[48];
		snprintf(param, sizeof param, "tools[%zu]", k);
		if (!json_is_object(t) || !json_is_string(type) ||
		    strcmp(json_string_value(type), "function") != 0 || !json_is_object(fn))
			return api_fail(e, 400, "invalid_request_error", "invalid_type", param,
					"'%s' must be {\"type\": \"function\", \"function\": {...}}",
					param);
		if (!json_is_string(name) || !function_name_ok(json_string_value(name)))
			return api_fail(e, 400, "invalid_request_error", "invalid_value", param,
					"'%s.function.name' must be 1 to 64 letters, digits, '_' or '-'",
					param);
		if ((params && !json_is_null(params) && !json_is_object(params)) ||
		    (desc && !json_is_null(desc) && !json_is_string(desc)))
			return api_fail(e, 400, "invalid_request_error", "invalid_type", param,
					"'%s.function': parameters must be an object, description a "
					"string", param);
		struct sbuf b = {0};
		py_json_dump(&b, t);
		sbuf_put(&b, "", 1);
		if (b.failed || !own(r, b.p)) {
			if (b.failed)
				free(b.p);
			return api_fail(e, 503, "server_error", "out_of_memory", NULL, "out of memory");
		}
		r->tools_py[k] = b.p;
		r->tool_names[k] = json_string_value(name);
	}
	r->n_tools = n;
	json_t *tc = json_object_get(root, "tool_choice");
	if (!tc || json_is_null(tc) || (json_is_string(tc) && strcmp(json_string_value(tc), "auto") == 0))
		return 0;
	if (json_is_string(tc) && strcmp(json_string_value(tc), "none") == 0) {
		r->tools_off = true;
		return 0;
	}
	if (json_is_string(tc) && strcmp(json_string_value(tc), "required") == 0) {
		r->tool_required = true;
		return 0;
	}
	json_t *fn = json_object_get(tc, "function"), *name = json_object_get(fn, "name"),
	       *type = json_object_get(tc, "type");
	if (!json_is_object(tc) || !json_is_string(type) ||
	    strcmp(json_string_value(type), "function") != 0 || !json_is_string(name))
		return BAD("tool_choice", "'tool_choice' must be \"auto\", \"none\", \"required\" or "
					  "{\"type\": \"function\", \"function\": {\"name\": ...}}");
	for (size_t k = 0; k < n; k++)
		if (strcmp(r->tool_names[k], json_string_value(name)) == 0) {
			r->tool_named = r->tool_names[k];
			return 0;
		}
	return BAD("tool_choice", "'tool_choice' names '%.64s', which is not one of the tools",
		   json_string_value(name));
}

static int get_messages(json_t *root, struct api_request *r, struct api_error *e)
{
	json_t *v = json_object_get(root, "messages");
	if (!v)
		return api_fail(e, 400, "invalid_request_error", "missing_required_parameter",
				"messages", "'messages' is required");
	if (!json_is_array(v))
		return BAD_TYPE("messages", "an array");
	size_t n = json_array_size(v);
	if (n == 0)
		return BAD("messages", "'messages' must not be empty");
	if (n > API_MAX_MESSAGES)
		return BAD("messages", "at most %d messages", API_MAX_MESSAGES);
	r->messages = calloc(n, sizeof *r->messages);
	r->joined = calloc(n, sizeof *r->joined);
	if (!r->messages || !r->joined)
		return api_fail(e, 503, "server_error", "out_of_memory", NULL, "out of memory");
	r->n_messages = n;
	size_t i;
	json_t *m;
	json_array_foreach(v, i, m) {
		char param[64];
		snprintf(param, sizeof param, "messages[%zu]", i);
		if (!json_is_object(m))
			return api_fail(e, 400, "invalid_request_error", "invalid_type", param,
					"'%s' must be an object", param);
		json_t *role = json_object_get(m, "role");
		snprintf(param, sizeof param, "messages[%zu].role", i);
		if (!json_is_string(role))
			return api_fail(e, 400, "invalid_request_error", "invalid_type", param,
					"'%s' must be a string", param);
		const char *rs = json_string_value(role);
		if (strcmp(rs, "developer") == 0) /* OpenAI's newer name for system */
			rs = "system";
		if (strcmp(rs, "system") != 0 && strcmp(rs, "user") != 0 &&
		    strcmp(rs, "assistant") != 0 && strcmp(rs, "tool") != 0)
			return api_fail(e, 400, "invalid_request_error", "invalid_value", param,
					"'%s' must be system, developer, user, assistant or tool", param);
		r->messages[i].role = rs;
		int calls = strcmp(rs, "assistant") == 0 ? get_tool_calls(m, i, r, e) : 0;
		if (calls < 0 || get_content(m, i, calls > 0, r, e) < 0)
			return -1;
		json_t *id = json_object_get(m, "tool_call_id");
		if (id && !json_is_null(id) && !json_is_string(id)) {
			snprintf(param, sizeof param, "messages[%zu].tool_call_id", i);
			return api_fail(e, 400, "invalid_request_error", "invalid_type", param,
					"'%s' must be a string", param);
		}
	}
	return 0;
}

static int get_prompt(json_t *root, struct api_request *r, struct api_error *e)
{
	json_t *v = json_object_get(root, "prompt");
	if (!v)
		return api_fail(e, 400, "invalid_request_error", "missing_required_parameter",
				"prompt", "'prompt' is required");
	if (json_is_array(v) && json_array_size(v) == 1 && json_is_string(json_array_get(v, 0)))
		v = json_array_get(v, 0); /* ["text"]: one prompt */
	if (json_is_string(v)) {
		r->prompt = json_string_value(v);
		r->prompt_len = json_string_length(v);
		if (r->prompt_len == 0)
			return BAD("prompt", "'prompt' must not be empty");
		return 0;
	}
	if (!json_is_array(v))
		return BAD_TYPE("prompt", "a string, or an array of token ids");
	size_t n = json_array_size(v);
	if (n == 0)
		return BAD("prompt", "'prompt' must not be empty");
	if (json_is_string(json_array_get(v, 0)) || json_is_array(json_array_get(v, 0)))
		return api_fail(e, 400, "invalid_request_error", "unsupported_parameter", "prompt",
				"only one prompt per request is supported");
	if (n > (1u << 24))
		return BAD("prompt", "too many token ids");
	r->prompt_ids = malloc(n * sizeof *r->prompt_ids);
	if (!r->prompt_ids)
		return api_fail(e, 503, "server_error", "out_of_memory", NULL, "out of memory");
	size_t i;
	json_t *id;
	json_array_foreach(v, i, id) {
		if (!json_is_integer(id) || json_integer_value(id) < 0 ||
		    json_integer_value(id) > INT32_MAX)
			return BAD_TYPE("prompt", "a string, or an array of token ids");
		r->prompt_ids[i] = (int32_t)json_integer_value(id);
	}
	r->n_prompt_ids = n;
	return 0;
}

int api_parse(enum api_kind kind, const char *body, size_t len, struct api_request *r,
	      struct api_error *e)
{
	memset(r, 0, sizeof *r);
	r->kind = kind;
	sampler_params_default(&r->sampling);
	if (utf8_valid_prefix((const uint8_t *)body, len) != len)
		return api_fail(e, 400, "invalid_request_error", "invalid_utf8", NULL,
				"the request body is not valid UTF-8 (byte %zu)",
				utf8_valid_prefix((const uint8_t *)body, len));
	json_error_t je;
	r->root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
	if (!r->root) {
		/* JSON, but a value ember cannot take: a duplicate key (which one
		 * wins is not defined) or an integer beyond 64 bits */
		enum json_error_code jc = json_error_code(&je);
		bool value = jc == json_error_duplicate_key || jc == json_error_numeric_overflow;
		return api_fail(e, 400, "invalid_request_error", value ? "invalid_value" : "invalid_json",
				NULL, "the request body %s: %s (line %d, column %d)",
				value ? "has a value ember cannot take" : "is not valid JSON", je.text,
				je.line, je.column);
	}
	json_t *root = r->root;
	long long x;
	if (!json_is_object(root)) {
		api_fail(e, 400, "invalid_request_error", "invalid_type", NULL,
			 "the request body must be a JSON object");
		goto fail;
	}
	json_t *model = json_object_get(root, "model");
	if (model && !json_is_null(model)) {
		if (!json_is_string(model)) {
			BAD_TYPE("model", "a string");
			goto fail;
		}
		r->model = json_string_value(model);
	}
	if (refuse_unsupported(root, e) < 0)
		goto fail;
	if ((kind == API_CHAT ? get_messages(root, r, e) : get_prompt(root, r, e)) < 0)
		goto fail;

	struct sampler_params *p = &r->sampling;
	bool mt_set = false, mct_set = false;
	long long mt = 0, mct = 0;
	if (get_int(root, "max_tokens", 1, INT_MAX / 2, &mt, &mt_set, e) < 0 ||
	    get_int(root, "max_completion_tokens", 1, INT_MAX / 2, &mct, &mct_set, e) < 0)
		goto fail;
	r->max_tokens = (int)(mct_set ? mct : mt);
	if (get_number(root, "temperature", 0, 2, &p->temperature, &r->temperature_set, e) < 0 ||
	    get_number(root, "top_p", 0, 1, &p->top_p, &r->top_p_set, e) < 0 ||
	    get_number(root, "min_p", 0, 1, &p->min_p, NULL, e) < 0 ||
	    get_number(root, "presence_penalty", -2, 2, &p->presence_penalty, NULL, e) < 0 ||
	    get_number(root, "frequency_penalty", -2, 2, &p->frequency_penalty, NULL, e) < 0 ||
	    get_number(root, "repetition_penalty", 0, 10, &p->repetition_penalty,
		       &r->repetition_penalty_set, e) < 0)
		goto fail;
	if (r->top_p_set && p->top_p <= 0) {
		BAD("top_p", "'top_p' must be greater than 0");
		goto fail;
	}
	if (r->repetition_penalty_set && p->repetition_penalty <= 0) {
		BAD("repetition_penalty", "'repetition_penalty' must be greater than 0");
		goto fail;
	}
	x = 0;
	if (get_int(root, "top_k", -1, INT_MAX, &x, &r->top_k_set, e) < 0)
		goto fail;
	p->top_k = x < 0 ? 0 : (int)x; /* -1 means all, as in vLLM */
	x = 0;
	if (get_int(root, "seed", LLONG_MIN, LLONG_MAX, &x, &r->seed_set, e) < 0)
		goto fail;
	p->seed = (uint64_t)x;
	if (get_stop(root, r, e) < 0 || get_bool(root, "stream", &r->stream, e) < 0)
		goto fail;
	json_t *so = json_object_get(root, "stream_options");
	if (so && !json_is_null(so)) {
		if (!json_is_object(so)) {
			BAD_TYPE("stream_options", "an object");
			goto fail;
		}
		if (!r->stream) {
			BAD("stream_options", "'stream_options' is only allowed with stream: true");
			goto fail;
		}
		if (get_bool(so, "include_usage", &r->include_usage, e) < 0) {
			snprintf(e->param, sizeof e->param, "stream_options.include_usage");
			goto fail;
		}
	}
	if (kind == API_CHAT && get_template_kwargs(root, r, e) < 0)
		goto fail;
	if (kind == API_CHAT && get_tools(root, r, e) < 0)
		goto fail;
	r->separate_reasoning = true; /* SGLang's name; false: the raw text in content */
	if (kind == API_CHAT && get_bool(root, "separate_reasoning", &r->separate_reasoning, e) < 0)
		goto fail;
	if (kind == API_CHAT) {
		if (get_bool(root, "logprobs", &r->logprobs, e) < 0 ||
		    get_int(root, "top_logprobs", 0, SAMPLER_MAX_TOP_LOGPROBS, &x, NULL, e) < 0)
			goto fail;
		json_t *tl = json_object_get(root, "top_logprobs");
		if (tl && !json_is_null(tl)) {
			if (!r->logprobs) {
				BAD("top_logprobs", "'top_logprobs' needs 'logprobs': true");
				goto fail;
			}
			p->top_logprobs = (int)x;
		}
	} else {
		bool set = false;
		x = 0;
		if (get_int(root, "logprobs", 0, 5, &x, &set, e) < 0)
			goto fail;
		r->logprobs = set;
		p->top_logprobs = (int)x;
	}
	json_t *user = json_object_get(root, "user");
	if (user && !json_is_null(user) && !json_is_string(user)) {
		BAD_TYPE("user", "a string");
		goto fail;
	}
	return 0;
fail:
	api_request_free(r);
	return -1;
}

void api_request_free(struct api_request *r)
{
	for (size_t i = 0; r->joined && i < r->n_messages; i++)
		free(r->joined[i]);
	free(r->joined);
	free(r->messages);
	for (size_t i = 0; i < r->n_owned; i++)
		free(r->owned[i]);
	free(r->owned);
	free(r->prompt_ids);
	json_decref(r->root);
	memset(r, 0, sizeof *r);
}

/* --- responses -------------------------------------------------------------- */

const char *api_finish_name(enum finish_reason r)
{
	return r == FINISH_STOP ? "stop" : r == FINISH_LENGTH ? "length" : NULL;
}

/* -9999 stands for a log-probability of minus infinity, as in OpenAI's API. */
static double lp_value(float lp)
{
	return isfinite(lp) ? lp : -9999.0;
}

static void token_text(struct sbuf *b, const struct tokenizer *tok, int32_t id)
{
	size_t n = 0;
	const char *p = tok_piece(tok, id, &n);
	sbuf_json_str(b, p ? p : "", p ? n : 0);
}

static void token_bytes(struct sbuf *b, const struct tokenizer *tok, int32_t id)
{
	size_t n = 0;
	const char *p = tok_piece(tok, id, &n);
	sbuf_put(b, "[", 1);
	for (size_t i = 0; p && i < n; i++)
		sbuf_printf(b, "%s%u", i ? "," : "", (unsigned char)p[i]);
	sbuf_put(b, "]", 1);
}

/* One entry of chat logprobs.content. */
static void chat_lp_entry(struct sbuf *b, const struct tokenizer *tok, const struct sampler_result *r)
{
	sbuf_puts(b, "{\"token\":");
	token_text(b, tok, r->token);
	sbuf_printf(b, ",\"logprob\":%.6g,\"bytes\":", lp_value(r->logprob));
	token_bytes(b, tok, r->token);
	sbuf_puts(b, ",\"top_logprobs\":[");
	for (int k = 0; k < r->n_top; k++) {
		sbuf_puts(b, k ? ",{\"token\":" : "{\"token\":");
		token_text(b, tok, r->top_token[k]);
		sbuf_printf(b, ",\"logprob\":%.6g,\"bytes\":", lp_value(r->top_logprob[k]));
		token_bytes(b, tok, r->top_token[k]);
		sbuf_puts(b, "}");
	}
	sbuf_puts(b, "]}");
}

/* The legacy completions logprobs object over events [from, to) of a
 * completion (text_offset counts from its start). */
static void text_lp(struct sbuf *b, const struct tokenizer *tok, const struct api_token *ev,
		    size_t from, size_t to)
{
	sbuf_puts(b, "{\"tokens\":[");
	for (size_t i = from; i < to; i++) {
		if (i > from)
			sbuf_put(b, ",", 1);
		token_text(b, tok, ev[i].r.token);
	}
	sbuf_puts(b, "],\"token_logprobs\":[");
	for (size_t i = from; i < to; i++)
		sbuf_printf(b, "%s%.6g", i > from ? "," : "", lp_value(ev[i].r.logprob));
	sbuf_puts(b, "],\"top_logprobs\":[");
	for (size_t i = from; i < to; i++) {
		sbuf_puts(b, i > from ? ",{" : "{");
		for (int k = 0; k < ev[i].r.n_top; k++) {
			if (k)
				sbuf_put(b, ",", 1);
			token_text(b, tok, ev[i].r.top_token[k]);
			sbuf_printf(b, ":%.6g", lp_value(ev[i].r.top_logprob[k]));
		}
		sbuf_puts(b, "}");
	}
	sbuf_puts(b, "],\"text_offset\":[");
	for (size_t i = from; i < to; i++)
		sbuf_printf(b, "%s%zu", i > from ? "," : "", i > 0 ? ev[i - 1].text_end : 0);
	sbuf_puts(b, "]}");
}

static void chunk_open(struct sbuf *b, const struct api_answer *a)
{
	sbuf_printf(b, "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", a->id,
		    a->kind == API_CHAT ? "chat.completion.chunk" : "text_completion", a->created);
	sbuf_json_str(b, a->model, strlen(a->model));
	sbuf_puts(b, a->kind == API_CHAT ? ",\"system_fingerprint\":null,\"choices\":[" : ",\"choices\":[");
}

static void chunk_close(struct sbuf *b, const struct api_answer *a)
{
	sbuf_puts(b, a->usage_null ? "],\"usage\":null}\n\n" : "]}\n\n");
}

static void chunk_delta(struct sbuf *b, const struct api_answer *a, const char *field,
			const char *text, size_t n, const struct api_token *ev, size_t i)
{
	const struct tokenizer *tok = a->tok;
	chunk_open(b, a);
	if (a->kind == API_CHAT) {
		sbuf_printf(b, "{\"index\":0,\"delta\":{\"%s\":", field);
		sbuf_json_str(b, text, n);
		sbuf_puts(b, "},\"logprobs\":");
		if (ev) {
			sbuf_puts(b, "{\"content\":[");
			chat_lp_entry(b, tok, &ev[i].r);
			sbuf_puts(b, "]}");
		} else {
			sbuf_puts(b, "null");
		}
	} else {
		sbuf_puts(b, "{\"index\":0,\"text\":");
		sbuf_json_str(b, text, n);
		sbuf_puts(b, ",\"logprobs\":");
		if (ev)
			text_lp(b, tok, ev, i, i + 1);
		else
			sbuf_puts(b, "null");
	}
	sbuf_puts(b, ",\"finish_reason\":null}");
	chunk_close(b, a);
}

void api_chunk_text(struct sbuf *b, const struct api_answer *a, const char *text, size_t n,
		    const struct api_token *ev, size_t i)
{
	chunk_delta(b, a, "content", text, n, ev, i);
}

void api_chunk_reasoning(struct sbuf *b, const struct api_answer *a, const char *text, size_t n,
			 const struct api_token *ev, size_t i)
{
	chunk_delta(b, a, "reasoning_content", text, n, ev, i);
}

static void usage_json(struct sbuf *b, const struct api_answer *a, const struct api_usage *u)
{
	sbuf_printf(b, "{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d", u->prompt,
		    u->completion, u->prompt + u->completion);
	if (a->reasoning)
		sbuf_printf(b, ",\"completion_tokens_details\":{\"reasoning_tokens\":%d}", u->reasoning);
	sbuf_puts(b, "}");
}

static void tool_call_json(struct sbuf *b, const struct api_tool_call *c)
{
	sbuf_printf(b, "\"id\":\"%s\",\"type\":\"function\",\"function\":{\"name\":", c->id);
	sbuf_json_str(b, c->name, strlen(c->name));
	sbuf_puts(b, ",\"arguments\":");
	sbuf_json_str(b, c->arguments, strlen(c->arguments));
	sbuf_puts(b, "}");
}

void api_chunk_tool_call(struct sbuf *b, const struct api_answer *a, int index,
			 const struct api_tool_call *c)
{
	/* as OpenAI streams a call: its id, type and name with empty
	 * arguments, then the arguments (in one piece: they come out whole) */
	chunk_open(b, a);
	sbuf_printf(b, "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":%d,\"id\":\"%s\","
		       "\"type\":\"function\",\"function\":{\"name\":", index, c->id);
	sbuf_json_str(b, c->name, strlen(c->name));
	sbuf_puts(b, ",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}");
	chunk_close(b, a);
	chunk_open(b, a);
	sbuf_printf(b, "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":%d,\"function\":"
		       "{\"arguments\":", index);
	sbuf_json_str(b, c->arguments, strlen(c->arguments));
	sbuf_puts(b, "}}]},\"logprobs\":null,\"finish_reason\":null}");
	chunk_close(b, a);
}

void api_answer_json(struct sbuf *b, const struct api_answer *a, const char *reasoning,
		     size_t rlen, const char *text, size_t len, const struct api_tool_call *calls,
		     size_t n_calls, const struct api_token *ev, size_t n_ev, const char *reason,
		     const struct api_usage *u)
{
	const struct tokenizer *tok = a->tok;
	sbuf_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", a->id,
		    a->kind == API_CHAT ? "chat.completion" : "text_completion", a->created);
	sbuf_json_str(b, a->model, strlen(a->model));
	if (a->kind == API_CHAT) {
		sbuf_puts(b, ",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"message\":"
			     "{\"role\":\"assistant\",\"content\":");
		if (n_calls > 0 && len == 0)
			sbuf_puts(b, "null");
		else
			sbuf_json_str(b, text ? text : "", len);
		if (a->reasoning) {
			sbuf_puts(b, ",\"reasoning_content\":");
			sbuf_json_str(b, reasoning ? reasoning : "", rlen);
		}
		if (n_calls > 0) {
			sbuf_puts(b, ",\"tool_calls\":[");
			for (size_t i = 0; i < n_calls; i++) {
				sbuf_puts(b, i ? ",{" : "{");
				tool_call_json(b, &calls[i]);
				sbuf_puts(b, "}");
			}
			sbuf_puts(b, "]");
		}
		sbuf_puts(b, "},\"logprobs\":");
		if (a->logprobs) {
			sbuf_puts(b, "{\"content\":[");
			for (size_t i = 0; i < n_ev; i++) {
				if (i)
					sbuf_put(b, ",", 1);
				chat_lp_entry(b, tok, &ev[i].r);
			}
			sbuf_puts(b, "]}");
		} else {
			sbuf_puts(b, "null");
		}
	} else {
		sbuf_puts(b, ",\"choices\":[{\"index\":0,\"text\":");
		sbuf_json_str(b, text ? text : "", len);
		sbuf_puts(b, ",\"logprobs\":");
		if (a->logprobs)
			text_lp(b, tok, ev, 0, n_ev);
		else
			sbuf_puts(b, "null");
	}
	sbuf_printf(b, ",\"finish_reason\":\"%s\"}],\"usage\":", reason);
	usage_json(b, a, u);
	sbuf_puts(b, "}\n");
}

void api_chunk_role(struct sbuf *b, const struct api_answer *a)
{
	chunk_open(b, a);
	sbuf_puts(b, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
		     "\"logprobs\":null,\"finish_reason\":null}");
	chunk_close(b, a);
}

void api_chunk_finish(struct sbuf *b, const struct api_answer *a, const char *reason,
		      bool include_usage, const struct api_usage *u)
{
	chunk_open(b, a);
	if (a->kind == API_CHAT)
		sbuf_printf(b, "{\"index\":0,\"delta\":{},\"logprobs\":null,"
			       "\"finish_reason\":\"%s\"}", reason);
	else
		sbuf_printf(b, "{\"index\":0,\"text\":\"\",\"logprobs\":null,"
			       "\"finish_reason\":\"%s\"}", reason);
	chunk_close(b, a);
	if (include_usage) {
		chunk_open(b, a);
		sbuf_puts(b, "],\"usage\":");
		usage_json(b, a, u);
		sbuf_puts(b, "}\n\n");
	}
	sbuf_puts(b, "data: [DONE]\n\n");
}

void api_chunk_error(struct sbuf *b, const struct api_error *e)
{
	sbuf_puts(b, "data: ");
	api_error_json(b, e);
	sbuf_puts(b, "\n\n");
}
