/* ember-worker: answers the OpenAI-compatible API over FastCGI (on a socket
 * it opens with --listen or inherits on fd 0, as spawn-fcgi and Apache
 * mod_fcgid hand it over), as plain CGI, or prints one generation from the
 * command line. This file reads the flags and picks the mode. Runs as its
 * own process. */
#include "../engine/chat.h"
#include "cli.h"
#include "server.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ember-worker --model DIR [--listen ADDR] [server options]\n"
		"       ember-worker --model DIR (--prompt TEXT | --chat TEXT | --prompt-ids ID,...) [options]\n"
		"\n"
		"Serving (FastCGI; on --listen, else on a listening socket inherited as fd 0,\n"
		"else as CGI when GATEWAY_INTERFACE is set):\n"
		"  --listen ADDR           a unix socket path or HOST:PORT to listen on\n"
		"  --listen-mode MODE      permissions of the unix socket (octal, default 0660)\n"
		"  --listen-group NAME     the unix socket's group (the web server's)\n"
		"  --prefix PATH           serve the API under PATH (e.g. /llm)\n"
		"  --model-name NAME       the model's id in the API (default: DIR's base name)\n"
		"  --api-key-file FILE     keys, one per line: requests need Authorization: Bearer KEY\n"
		"                          (/health stays open)\n"
		"  --slots N               sequences generated at once (default 4)\n"
		"  --queue N               requests that may wait for a slot beyond those (default 16)\n"
		"  --queue-timeout S       seconds a request waits for a slot before a 503 (default 30)\n"
		"  --request-timeout S     seconds a generation may run (default 600)\n"
		"  --keepalive S           seconds between keep-alive comments on a quiet stream (default 2)\n"
		"  --drain-timeout S       seconds in-flight requests get after SIGTERM (default 30)\n"
		"  --max-body-bytes N      largest request body (default 1048576)\n"
		"  --max-prompt-tokens N   longest prompt (default: the context)\n"
		"  --forced-output TEXT    tests only: every answer's tokens are TEXT's (the model's\n"
		"                          tokenizer), then an end of sequence, whatever the model says\n"
		"\n"
		"Command line:\n"
		"  --prompt TEXT           prompt as text, tokenized with the model's tokenizer\n"
		"  --chat TEXT             one user turn, through the model's chat template\n"
		"  --system TEXT           with --chat: a system message before it\n"
		"  --prompt-ids LIST       prompt as comma-separated token ids\n"
		"  --print-ids             print ids, not text (and the prompt's ids on stderr)\n"
		"  --max-tokens N          tokens to generate (default 16)\n"
		"  --temperature T         sampling temperature (default: generation_config.json's\n"
		"                          when it samples, else 0: greedy)\n"
		"  --seed N                random seed (default 0); copy i of --parallel uses N + i\n"
		"  --parallel N            N copies of the prompt, run as one batch (default 1)\n"
		"  --stop TEXT             end the text before TEXT (up to 4 times; with --prompt or --chat)\n"
		"\n"
		"Both:\n"
		"  --model DIR             Hugging Face model directory (config.json, safetensors,\n"
		"                          tokenizer.json)\n"
		"  --chat-template NAME    use this template family instead of recognising the\n"
		"                          model's: " CHAT_FAMILY_NAMES "\n"
		"  --device cpu|cuda|auto  where the model runs (default auto: a GPU when this build\n"
		"                          has CUDA and one is visible, else the CPU)\n"
		"  --gpu-memory-fraction F share of the GPU memory left once the model is in that\n"
		"                          the KV cache takes (default 0.9)\n"
		"  --threads N             CPU threads (default: one per processor)\n"
		"  --ctx N                 context length per sequence (default: the model's, at most 4096)\n"
		"  --kv-cache-mb N         KV cache budget (default: on the CPU room for every\n"
		"                          sequence's context; on a GPU --gpu-memory-fraction)\n"
		"  --max-batch-tokens N    tokens per forward step (default 512)\n"
		"  --help                  this text\n"
		"\n"
		"Environment: EMBER_LISTEN_FD=N serves on an inherited listening socket;\n"
		"EMBER_WEIGHTS_FD=N opens the model from a weight image (a memfd from emberd)\n"
		"instead of DIR's files.\n"
		"\n"
		"The command line prints the continuation on stdout (text, or ids for\n"
		"--prompt-ids and --print-ids) and the timing on stderr. Exits 1 when the model\n"
		"cannot be loaded or the request does not fit, 2 on a bad flag; a server exits\n"
		"0 after draining on SIGTERM or SIGINT.\n");
}

static int parse_int(const char *flag, const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, "ember-worker: %s wants an integer in %ld..%ld, not '%s'\n", flag, lo,
			hi, s);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_seconds(const char *flag, const char *s, double *out)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || *end || !(v > 0 && v <= 86400 * 7)) {
		fprintf(stderr, "ember-worker: %s wants seconds (a number above 0), not '%s'\n", flag, s);
		return -1;
	}
	*out = v;
	return 0;
}

static bool is_listening_socket(int fd)
{
	int v = 0;
	socklen_t len = sizeof v;
	return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v;
}

int main(int argc, char **argv)
{
	struct cli_opts c = {.max_tokens = 16, .parallel = 1};
	struct server_opts s = {.listen_mode = 0660, .listen_fd = -1, .slots = 4, .queue = 16,
				.queue_timeout = 30, .request_timeout = 600, .keepalive = 2,
				.drain_timeout = 30, .max_body_bytes = 1 << 20};
	bool server_only = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(a, "--print-ids") == 0) {
			c.print_ids = true;
			continue;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "ember-worker: %s needs a value (see --help)\n", a);
			return 2;
		}
		const char *v = argv[++i];
		long x = 0;
		int rc = 0;
		if (strcmp(a, "--model") == 0) {
			c.model_dir = s.model_dir = v;
		} else if (strcmp(a, "--prompt-ids") == 0) {
			c.ids_arg = v;
		} else if (strcmp(a, "--prompt") == 0) {
			c.text = v;
		} else if (strcmp(a, "--chat") == 0) {
			c.chat = v;
		} else if (strcmp(a, "--system") == 0) {
			c.system = v;
		} else if (strcmp(a, "--chat-template") == 0) {
			c.template_name = s.chat_template = v;
		} else if (strcmp(a, "--max-tokens") == 0) {
			rc = parse_int(a, v, 1, 1 << 20, &x);
			c.max_tokens = (int)x;
		} else if (strcmp(a, "--device") == 0) {
			char err[EMBER_ERR_LEN];
			if (device_parse(v, &s.device, err) < 0) {
				fprintf(stderr, "ember-worker: %s\n", err);
				rc = -1;
			}
			c.device = s.device;
		} else if (strcmp(a, "--gpu-memory-fraction") == 0) {
			char *end;
			double f = strtod(v, &end);
			if (*end || end == v || !(f > 0 && f <= 1)) {
				fprintf(stderr, "ember-worker: --gpu-memory-fraction wants a number in (0, 1]\n");
				rc = -1;
			}
			c.gpu_memory_fraction = s.gpu_memory_fraction = f;
		} else if (strcmp(a, "--threads") == 0) {
			rc = parse_int(a, v, 1, 1024, &x);
			c.threads = s.threads = (int)x;
		} else if (strcmp(a, "--ctx") == 0) {
			rc = parse_int(a, v, 2, 1 << 24, &x);
			c.ctx = s.ctx = (int)x;
		} else if (strcmp(a, "--stop") == 0) {
			if (c.n_stop == STOP_MAX) {
				fprintf(stderr, "ember-worker: at most %d --stop strings\n", STOP_MAX);
				rc = -1;
			} else {
				c.stops[c.n_stop++] = v;
			}
		} else if (strcmp(a, "--parallel") == 0) {
			rc = parse_int(a, v, 1, 256, &x);
			c.parallel = (int)x;
		} else if (strcmp(a, "--kv-cache-mb") == 0) {
			rc = parse_int(a, v, 1, 1 << 24, &x);
			c.kv_mb = s.kv_mb = (int)x;
		} else if (strcmp(a, "--max-batch-tokens") == 0) {
			rc = parse_int(a, v, 1, 1 << 16, &x);
			c.max_batch = s.max_batch_tokens = (int)x;
		} else if (strcmp(a, "--seed") == 0) {
			rc = parse_int(a, v, 0, INT_MAX, &x);
			c.seed = (uint64_t)x;
		} else if (strcmp(a, "--temperature") == 0) {
			char *end;
			c.temperature = strtof(v, &end);
			c.temperature_set = true;
			if (*end || end == v || !(c.temperature >= 0 && c.temperature <= 100)) {
				fprintf(stderr, "ember-worker: --temperature wants a number in 0..100\n");
				rc = -1;
			}
		} else {
			server_only = true;
			if (strcmp(a, "--listen") == 0) {
				s.listen = v;
			} else if (strcmp(a, "--listen-group") == 0) {
				s.listen_group = v;
			} else if (strcmp(a, "--listen-mode") == 0) {
				char *end;
				x = strtol(v, &end, 8);
				if (*end || end == v || x < 0 || x > 0777) {
					fprintf(stderr, "ember-worker: --listen-mode wants octal permissions\n");
					rc = -1;
				}
				s.listen_mode = (int)x;
			} else if (strcmp(a, "--prefix") == 0) {
				s.prefix = v;
			} else if (strcmp(a, "--model-name") == 0) {
				s.model_name = v;
				if (!*v || strlen(v) >= 256) {
					fprintf(stderr, "ember-worker: --model-name wants 1 to 255 bytes\n");
					rc = -1;
				}
			} else if (strcmp(a, "--api-key-file") == 0) {
				s.api_key_file = v;
			} else if (strcmp(a, "--forced-output") == 0) {
				s.forced_output = v;
			} else if (strcmp(a, "--slots") == 0) {
				rc = parse_int(a, v, 1, 1024, &x);
				s.slots = (int)x;
			} else if (strcmp(a, "--queue") == 0) {
				rc = parse_int(a, v, 0, 4096, &x);
				s.queue = (int)x;
			} else if (strcmp(a, "--queue-timeout") == 0) {
				rc = parse_seconds(a, v, &s.queue_timeout);
			} else if (strcmp(a, "--request-timeout") == 0) {
				rc = parse_seconds(a, v, &s.request_timeout);
			} else if (strcmp(a, "--keepalive") == 0) {
				rc = parse_seconds(a, v, &s.keepalive);
			} else if (strcmp(a, "--drain-timeout") == 0) {
				rc = parse_seconds(a, v, &s.drain_timeout);
			} else if (strcmp(a, "--max-body-bytes") == 0) {
				rc = parse_int(a, v, 64, 1L << 30, &x);
				s.max_body_bytes = (size_t)x;
			} else if (strcmp(a, "--max-prompt-tokens") == 0) {
				rc = parse_int(a, v, 1, 1 << 24, &x);
				s.max_prompt_tokens = (int)x;
			} else {
				fprintf(stderr, "ember-worker: unknown option %s (see --help)\n", a);
				return 2;
			}
		}
		if (rc < 0)
			return 2;
	}
	if (!c.model_dir) {
		usage(stderr);
		return 2;
	}
	int prompts = !!c.ids_arg + !!c.text + !!c.chat;
	if (prompts) {
		if (prompts != 1 || server_only || ((c.system) && !c.chat) || (c.n_stop && c.ids_arg)) {
			usage(stderr);
			return 2;
		}
		return cli_run(&c);
	}
	if (c.system || c.n_stop || c.print_ids) {
		fprintf(stderr, "ember-worker: --system, --stop and --print-ids go with a prompt\n");
		return 2;
	}
	if (!s.listen) {
		const char *env_fd = getenv("EMBER_LISTEN_FD");
		if (env_fd) {
			long fd;
			if (parse_int("EMBER_LISTEN_FD", env_fd, 0, INT_MAX, &fd) < 0 ||
			    !is_listening_socket((int)fd)) {
				fprintf(stderr, "ember-worker: EMBER_LISTEN_FD=%s is not a listening socket\n",
					env_fd);
				return 2;
			}
			s.listen_fd = (int)fd;
		} else if (is_listening_socket(0)) {
			s.listen_fd = 0;
		} else if (getenv("GATEWAY_INTERFACE")) {
			s.cgi = true;
		} else {
			fprintf(stderr, "ember-worker: nothing to serve on: give --listen ADDR, a listening\n"
					"socket as fd 0, a CGI environment, or --prompt (see --help)\n");
			return 2;
		}
	}
	return server_run(&s);
}
