/* The chat template families. Each renderer follows its template's Jinja
 * statement by statement; the comments quote the expressions they stand
 * for. Python string methods used by the templates (split, strip, lstrip,
 * rstrip) are spelled out as the small helpers below. */
#include "chat.h"

#include <errno.h>
#include <stdlib.h>

static const char *family_names[CHAT_FAMILIES] = {
	[CHAT_DEEPSEEK_V3] = "deepseek-v3",
	[CHAT_QWEN3] = "qwen3",
	[CHAT_LLAMA3] = "llama3",
	[CHAT_DEEPSEEK_R1] = "deepseek-r1",
	[CHAT_QWEN25] = "qwen2.5",
	[CHAT_DEEPSEEK_V31] = "deepseek-v3.1",
};

int chat_family_from_name(const char *name)
{
	for (int i = 0; i < CHAT_FAMILIES; i++)
		if (strcmp(name, family_names[i]) == 0)
			return i;
	return -1;
}

const char *chat_family_name(enum chat_family f)
{
	return (unsigned)f < CHAT_FAMILIES ? family_names[f] : "?";
}

int chat_detect(const char *t, char *err)
{
	if (t && strstr(t, "<｜User｜>") && strstr(t, "<｜Assistant｜>") && !strstr(t, "think>"))
		return CHAT_DEEPSEEK_V3;
	/* R1's prompt opens the thinking; a copy with an enable_thinking switch
	 * (llama.cpp's edit, which closes it by default) is not the model's. */
	if (t && strstr(t, "<｜User｜>") && strstr(t, "'<｜Assistant｜><think>\\n'") &&
	    strstr(t, "content.split('</think>')[-1]") && !strstr(t, "thinking"))
		return CHAT_DEEPSEEK_R1;
	if (t && strstr(t, "<｜User｜>") && strstr(t, "{{'<think></think>'}}") &&
	    strstr(t, "content.split('</think>', 1)[1]") && strstr(t, "thinking"))
		return CHAT_DEEPSEEK_V31;
	if (t && strstr(t, "<|im_start|>") &&
	    strstr(t, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.") &&
	    !strstr(t, "reasoning_content"))
		return CHAT_QWEN25;
	if (t && strstr(t, "<|im_start|>") && strstr(t, "reasoning_content") &&
	    strstr(t, "enable_thinking") && strstr(t, "last_query_index"))
		return CHAT_QWEN3;
	/* Llama 3's own template, not 3.1's with tools and a knowledge date. */
	if (t && strstr(t, "<|start_header_id|>") && strstr(t, "<|eot_id|>") && strstr(t, "| trim") &&
	    !strstr(t, "tools") && !strstr(t, "Knowledge"))
		return CHAT_LLAMA3;
	return ember_err(err, -ENOENT,
			 "%s; name one with --chat-template (" CHAT_FAMILY_NAMES ")",
			 t ? "the model's chat template is not one ember knows"
			   : "the model has no chat template");
}

/* A view of part of a string, for the Python string methods. */
struct view {
	const char *p;
	size_t n;
};

static struct view view_of(const char *s)
{
	return (struct view){s, strlen(s)};
}

/* s.split(sep)[-1]: after the last sep (the whole string without one). */
static struct view after_last(struct view s, const char *sep)
{
	size_t k = strlen(sep);
	for (size_t i = s.n; i >= k; i--)
		if (memcmp(s.p + i - k, sep, k) == 0)
			return (struct view){s.p + i, s.n - i};
	return s;
}

/* s.split(sep)[0]: before the first sep. */
static struct view before_first(struct view s, const char *sep)
{
	size_t k = strlen(sep);
	for (size_t i = 0; i + k <= s.n; i++)
		if (memcmp(s.p + i, sep, k) == 0)
			return (struct view){s.p, i};
	return s;
}

static struct view lstrip_nl(struct view s)
{
	while (s.n && s.p[0] == '\n')
		s.p++, s.n--;
	return s;
}

static struct view rstrip_nl(struct view s)
{
	while (s.n && s.p[s.n - 1] == '\n')
		s.n--;
	return s;
}

static bool contains(const char *s, const char *sub)
{
	return strstr(s, sub) != NULL;
}

static bool starts_ends(const char *s, const char *a, const char *z)
{
	size_t n = strlen(s), na = strlen(a), nz = strlen(z);
	return n >= na && n >= nz && memcmp(s, a, na) == 0 && memcmp(s + n - nz, z, nz) == 0;
}

/* Python's str.strip() with no argument, as Jinja's trim filter: every
 * character whose isspace() is true, at both ends. */
static size_t space_len(const char *p, size_t n, bool at_end)
{
	static const char *const spaces[] = {
		"\t", "\n", "\v", "\f", "\r", "\x1c", "\x1d", "\x1e", "\x1f", " ",
		"\xc2\x85", "\xc2\xa0", "\xe1\x9a\x80", "\xe2\x80\x80", "\xe2\x80\x81",
		"\xe2\x80\x82", "\xe2\x80\x83", "\xe2\x80\x84", "\xe2\x80\x85", "\xe2\x80\x86",
		"\xe2\x80\x87", "\xe2\x80\x88", "\xe2\x80\x89", "\xe2\x80\x8a", "\xe2\x80\xa8",
		"\xe2\x80\xa9", "\xe2\x80\xaf", "\xe2\x81\x9f", "\xe3\x80\x80",
	};
	for (size_t i = 0; i < sizeof spaces / sizeof spaces[0]; i++) {
		size_t k = strlen(spaces[i]);
		if (k <= n && memcmp(at_end ? p + n - k : p, spaces[i], k) == 0)
			return k;
	}
	return 0;
}

static struct view trim(struct view s)
{
	size_t k;
	while (s.n && (k = space_len(s.p, s.n, false)))
		s.p += k, s.n -= k;
	while (s.n && (k = space_len(s.p, s.n, true)))
		s.n -= k;
	return s;
}

/* ---- DeepSeek-V3 ---------------------------------------------------------- */

/* {{bos_token}}{{ns.system_prompt}} where the system prompt is every system
 * message joined by "\n\n"; then '<｜User｜>' + content for a user,
 * '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' for an assistant, and
 * '<｜Assistant｜>' to prompt a reply. */
static void render_deepseek_v3(struct sbuf *b, const struct chat_msg *m, size_t n, bool gen,
			       const char *bos)
{
	sbuf_puts(b, bos);
	bool first = true;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(m[i].role, "system") != 0)
			continue;
		if (!first)
			sbuf_puts(b, "\n\n");
		sbuf_puts(b, m[i].content);
		first = false;
	}
	for (size_t i = 0; i < n; i++) {
		if (strcmp(m[i].role, "user") == 0) {
			sbuf_puts(b, "<｜User｜>");
			sbuf_puts(b, m[i].content);
		} else if (strcmp(m[i].role, "assistant") == 0) {
			sbuf_puts(b, "<｜Assistant｜>");
			sbuf_puts(b, m[i].content);
			sbuf_puts(b, "<｜end▁of▁sentence｜>");
		}
	}
	if (gen)
		sbuf_puts(b, "<｜Assistant｜>");
}

/* ---- DeepSeek-R1 (the R1-Distill models) ------------------------------------ */

/* {{bos_token}}{{ns.system_prompt}}, the last system message's content;
 * '<｜User｜>' + content for a user; for an assistant
 * content.split('</think>')[-1] (the reasoning left out of the history)
 * between '<｜Assistant｜>' and '<｜end▁of▁sentence｜>'; the reply prompted
 * with '<｜Assistant｜><think>\n'. Tools as its template writes them, its
 * quirks kept: an assistant with content has its tool calls dropped; the
 * first call of the conversation opens the block and only later ones
 * close it (is_first is never reset); tool outputs open their block once
 * in the conversation; no reply is prompted after tool outputs. The tool
 * definitions are not written. */
static void render_deepseek_r1(struct sbuf *b, const struct chat_msg *m, size_t n, bool gen,
			       const char *bos)
{
	const char *system = "";
	for (size_t i = 0; i < n; i++)
		if (strcmp(m[i].role, "system") == 0)
			system = m[i].content;
	sbuf_puts(b, bos);
	sbuf_puts(b, system);
	bool is_first = false, is_tool = false, output_first = true;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(m[i].role, "user") == 0) {
			is_tool = false;
			sbuf_puts(b, "<｜User｜>");
			sbuf_puts(b, m[i].content);
		} else if (strcmp(m[i].role, "assistant") == 0 && !m[i].content) {
			is_tool = false;
			for (size_t k = 0; k < m[i].n_tool_calls; k++) {
				const struct chat_tool_call *t = &m[i].tool_calls[k];
				sbuf_puts(b, is_first ? "\n<｜tool▁call▁begin｜>"
						      : "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>");
				sbuf_puts(b, "function<｜tool▁sep｜>");
				sbuf_puts(b, t->name);
				sbuf_puts(b, "\n```json\n");
				sbuf_puts(b, t->arguments);
				sbuf_puts(b, "\n```<｜tool▁call▁end｜>");
				if (is_first)
					sbuf_puts(b, "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>");
				is_first = true;
			}
		} else if (strcmp(m[i].role, "assistant") == 0) {
			if (is_tool) {
				sbuf_puts(b, "<｜tool▁outputs▁end｜>");
				sbuf_puts(b, m[i].content);
				sbuf_puts(b, "<｜end▁of▁sentence｜>");
				is_tool = false;
			} else {
				struct view c = after_last(view_of(m[i].content), "</think>");
				sbuf_puts(b, "<｜Assistant｜>");
				sbuf_put(b, c.p, c.n);
				sbuf_puts(b, "<｜end▁of▁sentence｜>");
			}
		} else if (strcmp(m[i].role, "tool") == 0) {
			is_tool = true;
			sbuf_puts(b, output_first ? "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>"
						  : "\n<｜tool▁output▁begin｜>");
			sbuf_puts(b, m[i].content);
			sbuf_puts(b, "<｜tool▁output▁end｜>");
			output_first = false;
		}
	}
	if (is_tool)
		sbuf_puts(b, "<｜tool▁outputs▁end｜>");
	if (gen && !is_tool)
		sbuf_puts(b, "<｜Assistant｜><think>\n");
}

/* ---- DeepSeek-V3.1 ------------------------------------------------------------ */

/* The system messages joined by "\n\n" after bos_token; '<｜User｜>' +
 * content for a user; an assistant right after a user opens with
 * '<｜Assistant｜><think></think>', and its content after the first
 * '</think>' (content.split('</think>', 1)[1]) ends with
 * '<｜end▁of▁sentence｜>'; right after tool outputs its content is written
 * whole. An assistant's tool calls: its content, then each call as
 * name<｜tool▁sep｜>tojson(arguments) in one <｜tool▁calls▁begin｜> block;
 * a tool's output between <｜tool▁output▁begin｜> and its end. After a
 * user, the reply is prompted with '<｜Assistant｜>' and '<think>' when
 * thinking, else '<think></think>'. The tool definitions are not written. */
static void render_deepseek_v31(struct sbuf *b, const struct chat_msg *m, size_t n, bool gen,
				bool thinking, const char *bos)
{
	sbuf_puts(b, bos);
	bool first = true, last_user = false, is_tool = false;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(m[i].role, "system") != 0)
			continue;
		if (!first)
			sbuf_puts(b, "\n\n");
		sbuf_puts(b, m[i].content);
		first = false;
	}
	for (size_t i = 0; i < n; i++) {
		if (strcmp(m[i].role, "user") == 0) {
			is_tool = false;
			last_user = true;
			sbuf_puts(b, "<｜User｜>");
			sbuf_puts(b, m[i].content);
		} else if (strcmp(m[i].role, "assistant") == 0 && m[i].n_tool_calls > 0) {
			if (last_user)
				sbuf_puts(b, "<｜Assistant｜><think></think>");
			last_user = is_tool = false;
			for (size_t k = 0; k < m[i].n_tool_calls; k++) {
				const struct chat_tool_call *t = &m[i].tool_calls[k];
				if (k == 0) {
					if (m[i].content)
						sbuf_puts(b, m[i].content);
					sbuf_puts(b, "<｜tool▁calls▁begin｜>");
				}
				sbuf_puts(b, "<｜tool▁call▁begin｜>");
				sbuf_puts(b, t->name);
				sbuf_puts(b, "<｜tool▁sep｜>");
				sbuf_puts(b, t->arguments_py);
				sbuf_puts(b, "<｜tool▁call▁end｜>");
			}
			sbuf_puts(b, "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>");
		} else if (strcmp(m[i].role, "assistant") == 0) {
			if (last_user)
				sbuf_puts(b, "<｜Assistant｜><think></think>");
			last_user = false;
			const char *c = m[i].content, *end = strstr(c, "</think>");
			if (is_tool)
				sbuf_puts(b, c);
			else
				sbuf_puts(b, end ? end + strlen("</think>") : c);
			sbuf_puts(b, "<｜end▁of▁sentence｜>");
			is_tool = false;
		} else if (strcmp(m[i].role, "tool") == 0) {
			last_user = false;
			is_tool = true;
			sbuf_puts(b, "<｜tool▁output▁begin｜>");
			sbuf_puts(b, m[i].content);
			sbuf_puts(b, "<｜tool▁output▁end｜>");
		}
	}
	if (gen && last_user && !is_tool)
		sbuf_puts(b, thinking ? "<｜Assistant｜><think>" : "<｜Assistant｜><think></think>");
}

/* ---- Qwen2.5 ------------------------------------------------------------------ */

#define QWEN25_DEFAULT_SYSTEM "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

/* ChatML: messages[0] as the system turn when it is one, else Qwen's
 * default system prompt, with the tools (each tojson on its line in
 * <tools></tools>) and how to call them when there are tools; then
 * '<|im_start|>' + role + '\n' + content + '<|im_end|>\n' for every other
 * message, an assistant's tool calls each a <tool_call> of {"name": ...,
 * "arguments": tojson(arguments)} after its content, consecutive tool
 * outputs in one user turn of <tool_response>s; '<|im_start|>assistant\n'
 * to prompt a reply. */
static void render_qwen25(struct sbuf *b, const struct chat_msg *m, size_t n,
			  const struct chat_tools *tools, bool gen)
{
	size_t from = 0;
	sbuf_puts(b, "<|im_start|>system\n");
	if (strcmp(m[0].role, "system") == 0) {
		sbuf_puts(b, m[0].content);
		from = 1;
	} else {
		sbuf_puts(b, QWEN25_DEFAULT_SYSTEM);
	}
	if (tools && tools->n > 0) {
		sbuf_puts(b, "\n\n# Tools\n\nYou may call one or more functions to assist with the user "
			     "query.\n\nYou are provided with function signatures within <tools></tools> "
			     "XML tags:\n<tools>");
		for (size_t i = 0; i < tools->n; i++) {
			sbuf_puts(b, "\n");
			sbuf_puts(b, tools->py[i]);
		}
		sbuf_puts(b, "\n</tools>\n\nFor each function call, return a json object with function "
			     "name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
			     "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>");
	}
	sbuf_puts(b, "<|im_end|>\n");
	for (size_t i = from; i < n; i++) {
		if (strcmp(m[i].role, "tool") == 0) {
			if (i == 0 || strcmp(m[i - 1].role, "tool") != 0)
				sbuf_puts(b, "<|im_start|>user");
			sbuf_puts(b, "\n<tool_response>\n");
			sbuf_puts(b, m[i].content);
			sbuf_puts(b, "\n</tool_response>");
			if (i + 1 == n || strcmp(m[i + 1].role, "tool") != 0)
				sbuf_puts(b, "<|im_end|>\n");
			continue;
		}
		sbuf_puts(b, "<|im_start|>");
		sbuf_puts(b, m[i].role);
		if (m[i].n_tool_calls == 0 || strcmp(m[i].role, "assistant") != 0) {
			sbuf_puts(b, "\n");
			sbuf_puts(b, m[i].content);
			sbuf_puts(b, "<|im_end|>\n");
			continue;
		}
		if (m[i].content && m[i].content[0]) {
			sbuf_puts(b, "\n");
			sbuf_puts(b, m[i].content);
		}
		for (size_t k = 0; k < m[i].n_tool_calls; k++) {
			sbuf_puts(b, "\n<tool_call>\n{\"name\": \"");
			sbuf_puts(b, m[i].tool_calls[k].name);
			sbuf_puts(b, "\", \"arguments\": ");
			sbuf_puts(b, m[i].tool_calls[k].arguments_py);
			sbuf_puts(b, "}\n</tool_call>");
		}
		sbuf_puts(b, "<|im_end|>\n");
	}
	if (gen)
		sbuf_puts(b, "<|im_start|>assistant\n");
}

/* ---- Qwen3 ---------------------------------------------------------------- */

static void render_qwen3(struct sbuf *b, const struct chat_msg *m, size_t n, bool gen)
{
	/* messages[0] as the system turn when it is one */
	if (strcmp(m[0].role, "system") == 0) {
		sbuf_puts(b, "<|im_start|>system\n");
		sbuf_puts(b, m[0].content);
		sbuf_puts(b, "<|im_end|>\n");
	}
	/* ns.last_query_index: the last user message that is not a wrapped
	 * tool response (the whole list when there is none). */
	size_t last_query = n - 1;
	for (size_t k = n; k-- > 0;) {
		if (strcmp(m[k].role, "user") == 0 &&
		    !starts_ends(m[k].content, "<tool_response>", "</tool_response>")) {
			last_query = k;
			break;
		}
	}
	for (size_t i = 0; i < n; i++) {
		const char *role = m[i].role;
		if (strcmp(role, "user") == 0 || (strcmp(role, "system") == 0 && i > 0)) {
			sbuf_puts(b, "<|im_start|>");
			sbuf_puts(b, role);
			sbuf_puts(b, "\n");
			sbuf_puts(b, m[i].content);
			sbuf_puts(b, "<|im_end|>\n");
			continue;
		}
		if (strcmp(role, "assistant") != 0)
			continue;
		struct view content = view_of(m[i].content), reasoning = {"", 0};
		if (contains(m[i].content, "</think>")) {
			/* content.split('</think>')[-1].lstrip('\n') and
			 * content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
			struct view all = content;
			content = lstrip_nl(after_last(all, "</think>"));
			reasoning = lstrip_nl(after_last(rstrip_nl(before_first(all, "</think>")), "<think>"));
		}
		sbuf_puts(b, "<|im_start|>assistant\n");
		if (i > last_query && (i + 1 == n || reasoning.n > 0)) {
			/* '<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') */
			struct view r = rstrip_nl(lstrip_nl(reasoning));
			sbuf_puts(b, "<think>\n");
			sbuf_put(b, r.p, r.n);
			sbuf_puts(b, "\n</think>\n\n");
			content = lstrip_nl(content);
		}
		sbuf_put(b, content.p, content.n);
		sbuf_puts(b, "<|im_end|>\n");
	}
	if (gen)
		sbuf_puts(b, "<|im_start|>assistant\n");
}

/* ---- Llama 3 --------------------------------------------------------------- */

/* '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + content | trim +
 * '<|eot_id|>' per message, the first after bos_token; then the assistant's
 * header to prompt a reply. */
static void render_llama3(struct sbuf *b, const struct chat_msg *m, size_t n, bool gen,
			  const char *bos)
{
	for (size_t i = 0; i < n; i++) {
		if (i == 0)
			sbuf_puts(b, bos);
		sbuf_puts(b, "<|start_header_id|>");
		sbuf_puts(b, m[i].role);
		sbuf_puts(b, "<|end_header_id|>\n\n");
		struct view c = trim(view_of(m[i].content));
		sbuf_put(b, c.p, c.n);
		sbuf_puts(b, "<|eot_id|>");
	}
	if (gen)
		sbuf_puts(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

bool chat_has_tools(enum chat_family f)
{
	return f == CHAT_DEEPSEEK_R1 || f == CHAT_DEEPSEEK_V31 || f == CHAT_QWEN25;
}

const char *chat_tool_prefill(enum chat_family f, const char *name, bool thinks, struct sbuf *b)
{
	b->len = 0;
	switch (f) {
	case CHAT_QWEN25:
		sbuf_puts(b, "<tool_call>\n");
		if (name)
			sbuf_printf(b, "{\"name\": \"%s\", \"arguments\": ", name);
		break;
	case CHAT_DEEPSEEK_R1:
		if (thinks)
			sbuf_puts(b, "</think>\n\n");
		sbuf_puts(b, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>");
		if (name)
			sbuf_printf(b, "%s\n```json\n", name);
		break;
	case CHAT_DEEPSEEK_V31:
		if (thinks)
			sbuf_puts(b, "</think>");
		sbuf_puts(b, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>");
		if (name)
			sbuf_printf(b, "%s<｜tool▁sep｜>", name);
		break;
	default:
		return NULL;
	}
	sbuf_put(b, "", 1);
	b->len--;
	return b->failed ? NULL : b->p;
}

int chat_render(enum chat_family f, const struct chat_msg *m, size_t n,
		const struct chat_tools *tools, bool gen, bool thinking, const char *bos, char **out,
		char *err)
{
	*out = NULL;
	if (n == 0)
		return ember_err(err, -EINVAL, "a conversation needs at least one message");
	bool tool_syntax = chat_has_tools(f);
	if (tools && tools->n > 0 && !tool_syntax)
		return ember_err(err, -EINVAL, "the %s template has no syntax for tools",
				 chat_family_name(f));
	for (size_t i = 0; i < n; i++) {
		bool calls = m[i].role && strcmp(m[i].role, "assistant") == 0 && m[i].n_tool_calls > 0;
		if (!m[i].role || (!m[i].content && !calls))
			return ember_err(err, -EINVAL, "message %zu has no role or content", i);
		if (strcmp(m[i].role, "system") && strcmp(m[i].role, "user") &&
		    strcmp(m[i].role, "assistant") && strcmp(m[i].role, "tool"))
			return ember_err(err, -EINVAL,
					 "message %zu: role '%.32s' is not one of system, user, "
					 "assistant, tool",
					 i, m[i].role);
		if ((calls || strcmp(m[i].role, "tool") == 0) && !tool_syntax)
			return ember_err(err, -EINVAL,
					 "message %zu: the %s template has no syntax for tool calls", i,
					 chat_family_name(f));
		for (size_t k = 0; calls && k < m[i].n_tool_calls; k++)
			if (!m[i].tool_calls[k].name || !m[i].tool_calls[k].arguments ||
			    !m[i].tool_calls[k].arguments_py)
				return ember_err(err, -EINVAL, "message %zu: tool call %zu is incomplete",
						 i, k);
	}
	struct sbuf b = {0};
	switch (f) {
	case CHAT_DEEPSEEK_V3:
		render_deepseek_v3(&b, m, n, gen, bos ? bos : "");
		break;
	case CHAT_QWEN3:
		render_qwen3(&b, m, n, gen);
		break;
	case CHAT_LLAMA3:
		render_llama3(&b, m, n, gen, bos ? bos : "");
		break;
	case CHAT_DEEPSEEK_R1:
		render_deepseek_r1(&b, m, n, gen, bos ? bos : "");
		break;
	case CHAT_QWEN25:
		render_qwen25(&b, m, n, tools, gen);
		break;
	case CHAT_DEEPSEEK_V31:
		render_deepseek_v31(&b, m, n, gen, thinking, bos ? bos : "");
		break;
	default:
		return ember_err(err, -EINVAL, "unknown chat template family %d", (int)f);
	}
	sbuf_puts(&b, "");
	if (b.failed) {
		free(b.p);
		return ember_err(err, -ENOMEM, "out of memory");
	}
	*out = b.p;
	return 0;
}
