/* Unit tests of the worker's parsers and writers: FastCGI parameters to
 * routes, request ids and body lengths; API keys; request bodies to
 * checked requests; JSON strings; the Prometheus text. The black-box tests
 * behind real front ends are tests/http/run.mjs. */
#include "../worker/api.h"
#include "../worker/http.h"
#include "../worker/metrics.h"
#include "runner.h"

#include <stdlib.h>
#include <unistd.h>

static int route_of(char **envp, const char *prefix)
{
	struct http_req h;
	http_parse(envp, prefix, &h);
	return h.route;
}

static int test_routes(void)
{
	/* What Caddy, Apache (GENERIC) and nginx send, and a front end that
	 * strips a prefix of its own into SCRIPT_NAME. */
	char *caddy[] = {"REQUEST_METHOD=POST", "SCRIPT_NAME=/v1/chat/completions", "PATH_INFO=",
			 "REQUEST_URI=/v1/chat/completions", NULL};
	char *apache[] = {"REQUEST_METHOD=POST", "SCRIPT_FILENAME=proxy:fcgi://ember/v1/completions",
			  "REQUEST_URI=/v1/completions?x=1", NULL};
	char *nginx[] = {"REQUEST_METHOD=GET", "SCRIPT_NAME=/v1/models", "DOCUMENT_URI=/v1/models",
			 "REQUEST_URI=/v1/models/", NULL};
	char *split[] = {"REQUEST_METHOD=GET", "SCRIPT_NAME=/api", "PATH_INFO=/health",
			 "REQUEST_URI=/outer/api/health", NULL};
	char *model[] = {"REQUEST_URI=/v1/models/tiny-qwen2", NULL};
	char *none[] = {"REQUEST_URI=/v1/chat/completionsx", NULL};
	CHECK(route_of(caddy, NULL) == ROUTE_CHAT, "caddy");
	CHECK(route_of(apache, NULL) == ROUTE_COMPLETIONS, "apache");
	CHECK(route_of(nginx, NULL) == ROUTE_MODELS, "nginx");
	CHECK(route_of(split, "/api") == ROUTE_HEALTH, "SCRIPT_NAME + PATH_INFO under a prefix");
	CHECK(route_of(split, NULL) == ROUTE_HEALTH, "PATH_INFO alone");
	CHECK(route_of(caddy, "/llm") == ROUTE_NONE, "a missing prefix routes nowhere");
	CHECK(route_of(none, NULL) == ROUTE_NONE, "a longer path");
	struct http_req h;
	http_parse(model, NULL, &h);
	CHECK(h.route == ROUTE_MODEL && strcmp(h.model_id, "tiny-qwen2") == 0, "model id");
	CHECK(h.method_ok && !h.head, "no method: GET");
	http_parse(caddy, NULL, &h);
	CHECK(h.method_ok && strcmp(h.allow, "POST") == 0, "POST on chat");
	http_parse(nginx, NULL, &h);
	CHECK(h.method_ok, "GET on models");
	char *del[] = {"REQUEST_METHOD=DELETE", "REQUEST_URI=/health", NULL};
	http_parse(del, NULL, &h);
	CHECK(!h.method_ok && strstr(h.allow, "GET"), "DELETE on health");
	return 0;
}

static int test_request_id_and_length(void)
{
	struct http_req h;
	char *good[] = {"HTTP_X_REQUEST_ID=abc-DEF_1.2:3", "CONTENT_LENGTH=42", NULL};
	http_parse(good, NULL, &h);
	CHECK(strcmp(h.request_id, "abc-DEF_1.2:3") == 0, "id '%s'", h.request_id);
	CHECK(h.content_length == 42 && !h.content_length_bad, "length %lld", h.content_length);
	char long_id[100] = "HTTP_X_REQUEST_ID=";
	memset(long_id + strlen(long_id), 'a', 70);
	char *bad[] = {long_id, "CONTENT_LENGTH=12x", NULL};
	http_parse(bad, NULL, &h);
	CHECK(h.request_id[0] == 0, "a 70-byte id is not used");
	CHECK(h.content_length_bad, "12x");
	char *huge[] = {"HTTP_X_REQUEST_ID=a b", "CONTENT_LENGTH=99999999999999999999999", NULL};
	http_parse(huge, NULL, &h);
	CHECK(h.request_id[0] == 0 && h.content_length_bad, "a space; an overflowing length");
	char *none[] = {NULL};
	http_parse(none, NULL, &h);
	CHECK(h.content_length == -1 && !h.content_length_bad, "no length");
	char *unknown[] = {"CONTENT_LENGTH=-1", NULL};
	http_parse(unknown, NULL, &h);
	CHECK(h.content_length == -1 && !h.content_length_bad, "-1: unknown, read to the end");
	char *negative[] = {"CONTENT_LENGTH=-5", NULL};
	http_parse(negative, NULL, &h);
	CHECK(h.content_length_bad, "-5");
	return 0;
}

static int test_api_keys(void)
{
	char path[] = "/tmp/ember-keys-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0, "mkstemp");
	const char text[] = "# keys\n  sk-first  \n\nsk-second\r\n";
	CHECK(write(fd, text, sizeof text - 1) == (ssize_t)(sizeof text - 1), "write");
	close(fd);
	struct http_keys k;
	char err[EMBER_ERR_LEN];
	int rc = http_keys_load(path, &k, err);
	unlink(path);
	CHECK(rc == 0 && k.n == 2, "loaded %d keys (%s)", k.n, rc ? err : "");
	CHECK(http_auth_ok(&k, "Bearer sk-first"), "first");
	CHECK(http_auth_ok(&k, "bearer sk-second"), "second, scheme in lower case");
	CHECK(!http_auth_ok(&k, "Bearer sk-firs"), "a prefix");
	CHECK(!http_auth_ok(&k, "Bearer sk-first2"), "longer");
	CHECK(!http_auth_ok(&k, "sk-first"), "no scheme");
	CHECK(!http_auth_ok(&k, "Basic sk-first"), "another scheme");
	CHECK(!http_auth_ok(&k, NULL), "no header");
	CHECK(http_keys_load("/nonexistent/keys", &k, err) < 0, "a missing file");
	return 0;
}

static int parse(enum api_kind kind, const char *body, struct api_request *r, struct api_error *e)
{
	return api_parse(kind, body, strlen(body), r, e);
}

static int test_api_parse(void)
{
	struct api_request r;
	struct api_error e;
	CHECK(parse(API_CHAT,
		    "{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
		    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}],"
		    "\"max_tokens\":9,\"max_completion_tokens\":7,\"temperature\":0.5,\"top_k\":-1,\"seed\":-3,"
		    "\"stop\":\"END\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
		    "\"logprobs\":true,\"top_logprobs\":4,\"user\":\"x\",\"n\":1}",
		    &r, &e) == 0,
	      "a full chat request: %s", e.message);
	CHECK(strcmp(r.model, "m") == 0 && r.n_messages == 2, "model, messages");
	CHECK(strcmp(r.messages[0].role, "system") == 0, "developer is system");
	CHECK(strcmp(r.messages[1].content, "ab") == 0, "parts joined: '%s'", r.messages[1].content);
	CHECK(r.max_tokens == 7, "max_completion_tokens wins: %d", r.max_tokens);
	CHECK(r.temperature_set && r.sampling.temperature == 0.5f && r.top_k_set &&
		      r.sampling.top_k == 0 && r.seed_set && r.sampling.seed == (uint64_t)-3,
	      "sampling");
	CHECK(r.n_stop == 1 && strcmp(r.stop[0], "END") == 0, "stop");
	CHECK(r.stream && r.include_usage && r.logprobs && r.sampling.top_logprobs == 4, "flags");
	api_request_free(&r);

	CHECK(parse(API_CHAT,
		    "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
		    "\"chat_template_kwargs\":{\"thinking\":true}}",
		    &r, &e) == 0,
	      "chat_template_kwargs: %s", e.message);
	CHECK(r.thinking && r.separate_reasoning, "thinking; reasoning apart by default");
	api_request_free(&r);
	CHECK(parse(API_CHAT,
		    "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"separate_reasoning\":false}",
		    &r, &e) == 0 && !r.separate_reasoning,
	      "separate_reasoning: %s", e.message);
	api_request_free(&r);
	CHECK(parse(API_CHAT,
		    "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
		    "\"chat_template_kwargs\":{\"enable_thinking\":false}}",
		    &r, &e) == 0 && !r.thinking,
	      "enable_thinking: %s", e.message);
	api_request_free(&r);

	CHECK(parse(API_CHAT,
		    "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\","
		    "\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":"
		    "{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\": 1.5}\"}}]},{\"role\":\"tool\","
		    "\"tool_call_id\":\"call_1\",\"content\":\"18\"}],\"tools\":[{\"type\":\"function\","
		    "\"function\":{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\"}}}],"
		    "\"tool_choice\":\"auto\",\"parallel_tool_calls\":false}",
		    &r, &e) == 0,
	      "tools: %s", e.message);
	CHECK(r.n_tools == 1 && strcmp(r.tool_names[0], "get_weather") == 0 &&
		      strcmp(r.tools_py[0], "{\"type\": \"function\", \"function\": {\"name\": "
					    "\"get_weather\", \"parameters\": {\"type\": \"object\"}}}") == 0 &&
		      !r.parallel_tool_calls && !r.tools_off,
	      "tools as the templates print them: %s", r.n_tools ? r.tools_py[0] : "none");
	CHECK(r.messages[1].content == NULL && r.messages[1].n_tool_calls == 1 &&
		      strcmp(r.messages[1].tool_calls[0].arguments, "{\"city\": 1.5}") == 0 &&
		      strcmp(r.messages[1].tool_calls[0].arguments_py, "{\"city\": 1.5}") == 0 &&
		      strcmp(r.messages[2].role, "tool") == 0,
	      "tool calls and results");
	api_request_free(&r);
	CHECK(parse(API_CHAT,
		    "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
		    "\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"none\"}",
		    &r, &e) == 0 && r.tools_off,
	      "tool_choice none: %s", e.message);
	api_request_free(&r);
	CHECK(parse(API_CHAT,
		    "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
		    "\"function\":{\"name\":\"f\"}},{\"type\":\"function\",\"function\":{\"name\":\"g\"}}],"
		    "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"g\"}}}",
		    &r, &e) == 0 && r.tool_named && strcmp(r.tool_named, "g") == 0 && !r.tool_required,
	      "tool_choice named: %s", e.message);
	api_request_free(&r);
	CHECK(parse(API_CHAT,
		    "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
		    "\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"required\"}",
		    &r, &e) == 0 && r.tool_required && !r.tool_named,
	      "tool_choice required: %s", e.message);
	api_request_free(&r);

	CHECK(parse(API_COMPLETION, "{\"prompt\":[1,2,3],\"logprobs\":2}", &r, &e) == 0, "ids");
	CHECK(r.n_prompt_ids == 3 && r.prompt_ids[2] == 3 && r.logprobs &&
		      r.sampling.top_logprobs == 2 && !r.temperature_set,
	      "ids and logprobs");
	api_request_free(&r);

	CHECK(parse(API_COMPLETION, "{\"prompt\":\"a\",\"max_tokens\":4.0}", &r, &e) == 0,
	      "an integral float");
	CHECK(r.max_tokens == 4, "4.0");
	api_request_free(&r);

	static const struct {
		enum api_kind kind;
		const char *body, *param, *code;
	} bad[] = {
		{API_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content", "invalid_type"},
		{API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":1}",
		 "top_logprobs", "invalid_value"},
		{API_COMPLETION, "{\"prompt\":\"a\",\"temperature\":2.5}", "temperature", "invalid_value"},
		{API_COMPLETION, "{\"prompt\":\"a\",\"stop\":[\"a\",1]}", "stop", "invalid_type"},
		{API_COMPLETION, "{\"prompt\":\"a\",\"n\":3}", "n", "unsupported_parameter"},
		{API_COMPLETION, "{\"prompt\":\"a\",\"logit_bias\":{\"1\":5}}", "logit_bias",
		 "unsupported_parameter"},
		{API_CHAT,
		 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"chat_template_kwargs\":"
		 "{\"thinking\":1}}",
		 "chat_template_kwargs.thinking", "invalid_type"},
		{API_CHAT,
		 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"chat_template_kwargs\":"
		 "{\"tools_in_system\":true}}",
		 "chat_template_kwargs", "invalid_value"},
		{API_CHAT,
		 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"chat_template_kwargs\":[]}",
		 "chat_template_kwargs", "invalid_type"},
		{API_CHAT,
		 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"separate_reasoning\":\"no\"}",
		 "separate_reasoning", "invalid_type"},
		{API_CHAT,
		 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
		 "\"function\":{\"name\":\"bad name\"}}]}",
		 "tools[0]", "invalid_value"},
		{API_CHAT,
		 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"code\"}]}",
		 "tools[0]", "invalid_type"},
		{API_CHAT,
		 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
		 "\"function\":{\"name\":\"f\"}}],\"tool_choice\":{\"type\":\"function\",\"function\":"
		 "{\"name\":\"g\"}}}",
		 "tool_choice", "invalid_value"},
		{API_CHAT,
		 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
		 "\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"always\"}",
		 "tool_choice", "invalid_value"},
		{API_CHAT,
		 "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\","
		 "\"arguments\":7}}]}]}",
		 "messages[0].tool_calls[0]", "invalid_type"},
		{API_CHAT, "{\"messages\":[{\"role\":\"tool\"}]}", "messages[0].content", "invalid_type"},
		{API_CHAT,
		 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":"
		 "{\"type\":\"json_object\"}}",
		 "response_format", "unsupported_parameter"},
		{API_COMPLETION, "{\"prompt\":\"a\"", "", "invalid_json"},
		{API_COMPLETION, "{\"prompt\":\"a\",\"prompt\":\"b\"}", "", "invalid_value"},
		{API_COMPLETION, "{\"prompt\":\"a\",\"seed\":99999999999999999999}", "", "invalid_value"},
		{API_COMPLETION, "{\"prompt\":\"a\\u0000b\"}", "", "invalid_json"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		CHECK(parse(bad[i].kind, bad[i].body, &r, &e) < 0, "accepted: %s", bad[i].body);
		CHECK(e.status == 400 && strcmp(e.code, bad[i].code) == 0 &&
			      strcmp(e.param, bad[i].param) == 0,
		      "%s: %d %s '%s'", bad[i].body, e.status, e.code, e.param);
	}
	return 0;
}

static int test_json_strings(void)
{
	struct sbuf b = {0};
	const char in[] = "a\"b\\c\n\x01\xc3\xa9\xff\xe2\x82z";
	sbuf_json_str(&b, in, sizeof in - 1);
	const char want[] = "\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\\ufffd\\ufffd\\ufffdz\"";
	CHECK(!b.failed && strcmp(b.p, want) == 0, "got %s", b.p);
	struct api_error e;
	api_fail(&e, 400, "invalid_request_error", "c", "p", "bad \"%s\"", "x");
	b.len = 0;
	api_error_json(&b, &e);
	CHECK(strcmp(b.p, "{\"error\":{\"message\":\"bad \\\"x\\\"\",\"type\":\"invalid_request_error\","
			  "\"param\":\"p\",\"code\":\"c\"}}") == 0,
	      "error %s", b.p);
	sbuf_free(&b);
	return 0;
}

static int test_metrics_text(void)
{
	static struct met_counters c;
	static struct met_gauges g;
	struct metrics m = {.c = &c, .g = &g};
	met_request(&m, ROUTE_CHAT, 200);
	met_request(&m, ROUTE_CHAT, 418);
	met_observe(&c.ttft, 0.003);
	met_observe(&c.ttft, 1000);
	atomic_store(&g.slots, 4);
	atomic_store(&g.kv_blocks, 10);
	atomic_store(&g.kv_blocks_used, 3);
	struct sbuf b = {0};
	met_render(&c, &g, 0, &b);
	CHECK(!b.failed, "render");
	CHECK(strstr(b.p, "ember_requests_total{route=\"chat_completions\",status=\"200\"} 1\n"), "200");
	CHECK(strstr(b.p, "ember_requests_total{route=\"chat_completions\",status=\"other\"} 1\n"), "other");
	CHECK(strstr(b.p, "ember_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"), "bucket");
	CHECK(strstr(b.p, "ember_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2\n"), "+Inf");
	CHECK(strstr(b.p, "ember_time_to_first_token_seconds_count 2\n"), "count");
	CHECK(strstr(b.p, "ember_kv_cache_blocks_used 3\n"), "KV use");
	CHECK(strstr(b.p, "ember_kv_cache_usage_ratio 0.29999999999999999\n"), "KV ratio");
	CHECK(strstr(b.p, "ember_slots 4\n"), "slots");
	sbuf_free(&b);
	return 0;
}

static const struct test tests[] = {
	{"routes", test_routes},
	{"request_id_and_length", test_request_id_and_length},
	{"api_keys", test_api_keys},
	{"api_parse", test_api_parse},
	{"json_strings", test_json_strings},
	{"metrics_text", test_metrics_text},
};

int main(int argc, char **argv)
{
	const char *only;
	if (runner_args(argc, argv, "test-worker", NULL, 0, &only) < 0)
		return 2;
	printf("test-worker: no random inputs\n");
	return run_tests(tests, sizeof tests / sizeof tests[0], only, NULL);
}
