/* ember-worker's command-line mode (--prompt, --chat, --prompt-ids). Runs
 * as its own process. */
#ifndef EMBER_CLI_H
#define EMBER_CLI_H

#include "../engine/stop.h"

#include <stdbool.h>
#include <stdint.h>

#include "../engine/device.h"

struct cli_opts {
	const char *model_dir, *ids_arg, *text, *chat, *system, *template_name;
	bool print_ids;
	int max_tokens, parallel, kv_mb, max_batch, threads, ctx;
	const struct device *device;
	double gpu_memory_fraction;
	float temperature;
	bool temperature_set;
	uint64_t seed;
	const char *stops[STOP_MAX];
	int n_stop;
};

/* Runs one command-line generation; returns the exit status (0, 1 when
 * the model cannot be loaded or the request does not fit, 2 on bad use). */
int cli_run(const struct cli_opts *o);

#endif
