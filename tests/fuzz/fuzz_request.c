/* Fuzz target: request bodies of /v1/chat/completions and /v1/completions
 * (the first byte picks which), through api_parse; an accepted request must
 * hold what the worker relies on, and is rendered through a chat template
 * and written back as JSON strings. */
#include "../../worker/api.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum api_kind kind = data[0] & 1 ? API_CHAT : API_COMPLETION;
	struct api_request r;
	struct api_error e;
	struct sbuf b = {0};
	if (api_parse(kind, (const char *)data + 1, size - 1, &r, &e) < 0) {
		if (e.status < 400 || e.status > 599 || !e.type || !e.message[0])
			abort();
		api_error_json(&b, &e);
		sbuf_free(&b);
		return 0;
	}
	if (r.n_stop < 0 || r.n_stop > STOP_MAX || r.max_tokens < 0 ||
	    r.sampling.top_logprobs < 0 || r.sampling.top_logprobs > SAMPLER_MAX_TOP_LOGPROBS)
		abort();
	char err[EMBER_ERR_LEN];
	if (sampler_params_check(&r.sampling, err) < 0)
		abort(); /* every accepted value is one the sampler takes */
	if (kind == API_CHAT) {
		if (r.n_messages < 1)
			abort();
		char *out = NULL;
		struct chat_tools tools = {(const char *const *)r.tools_py, r.n_tools};
		for (size_t i = 0; i < r.n_tools; i++)
			if (!r.tools_py[i] || !r.tool_names[i])
				abort();
		for (int f = 0; f < CHAT_FAMILIES; f++) {
			if (chat_render((enum chat_family)f, r.messages, r.n_messages, &tools, true,
					r.thinking, "<s>", &out, err) == 0)
				sbuf_json_str(&b, out, strlen(out));
			free(out);
			out = NULL;
		}
	} else if (!r.prompt_ids && (!r.prompt || r.prompt_len == 0)) {
		abort();
	}
	for (int i = 0; i < r.n_stop; i++)
		sbuf_json_str(&b, r.stop[i], strlen(r.stop[i]));
	sbuf_free(&b);
	api_request_free(&r);
	return 0;
}
