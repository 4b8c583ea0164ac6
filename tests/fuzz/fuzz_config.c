/* Fuzz target: config.json, and the same bytes as generation_config.json. An accepted config must satisfy the invariants
 * the rest of the engine relies on for its size arithmetic. */
#include "../../engine/config.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct model_config c;
	char err[EMBER_ERR_LEN];
	if (cfg_parse(data, size, &c, err) == 0) {
		if (c.hidden < 1 || c.n_layers < 1 || c.n_heads < 1 || c.n_kv_heads < 1 ||
		    c.n_heads % c.n_kv_heads || c.head_dim < 2 || c.head_dim % 2 || c.vocab < 1 ||
		    c.intermediate < 1 || c.max_pos < 1 || c.n_eos > CFG_MAX_EOS)
			abort();
	}
	struct gen_defaults g;
	if (gen_parse(data, size, &g, err) == 0 && g.n_eos > CFG_MAX_EOS)
		abort();
	return 0;
}
