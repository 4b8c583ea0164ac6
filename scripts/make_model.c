/* make-model: writes a Hugging Face model directory (config.json,
 * generation_config.json, safetensors) with deterministic random weights,
 * for tests (tiny shapes) and benchmarks (real models' shapes). The same
 * arguments give the same bytes on every machine: weights come from integer
 * arithmetic only. Not part of the server; runs where `make models` runs.
 *
 *   make-model --shape NAME --out DIR [--dtype bf16|f16|f32] [--seed N]
 *
 * --seed replaces the shape's own seed, which the tests' fixtures depend on.
 */
#include "../engine/common.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

struct shape {
	const char *name, *arch;
	int hidden, layers, heads, kv_heads, head_dim, inter, vocab, max_pos;
	double rope_theta;
	const char *rope_scaling; /* JSON or NULL */
	bool tie, qkv_bias;
	int bos;
	int eos[2], n_eos;
	float embed_std, head_std;
	float out_gain; /* scales o_proj and down_proj: layers, not the embedding, decide */
	int shards;
	uint64_t seed; /* chosen so that every greedy step of the tests' reference
	                  prompts leads by at least 0.01 (see reference.json) */
};

static const struct shape shapes[] = {
	{"tiny-qwen2", "Qwen2ForCausalLM", 64, 3, 4, 2, 0, 160, 151936, 4096, 1000000.0, NULL,
	 true, true, 151643, {151645, 151643}, 2, 0.75f, 0.75f, 6.0f, 1, 7},
	{"tiny-llama", "LlamaForCausalLM", 64, 3, 4, 2, 32, 160, 129280, 4096, 500000.0,
	 "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
	 "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 64}",
	 false, false, 0, {1}, 1, 1.0f, 0.75f, 4.0f, 2, 12},
	{"qwen2-0.5b", "Qwen2ForCausalLM", 896, 24, 14, 2, 0, 4864, 151936, 32768, 1000000.0, NULL,
	 true, true, 151643, {151645, 151643}, 2, 0.02f, 0.02f, 1.0f, 1, 1},
	{"r1-distill-qwen-1.5b", "Qwen2ForCausalLM", 1536, 28, 12, 2, 0, 8960, 151936, 131072,
	 10000.0, NULL, false, true, 151646, {151643}, 1, 0.02f, 0.02f, 1.0f, 2, 1},
	{"r1-distill-qwen-7b", "Qwen2ForCausalLM", 3584, 28, 28, 4, 0, 18944, 152064, 131072,
	 10000.0, NULL, false, true, 151646, {151643}, 1, 0.02f, 0.02f, 1.0f, 4, 1},
};

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s, uint64_t h)
{
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
	return h;
}

enum init { INIT_UNIFORM, INIT_NORM };

struct tensor {
	char name[96];
	int rows, cols;   /* cols 0: a vector of rows elements */
	enum init init;
	float scale;      /* uniform: half-width; norm: spread around 1 */
	int shard;
	size_t offset, nbytes;
};

static struct tensor *tensors;
static int n_tensors, cap_tensors;
static enum dtype out_dtype = DT_BF16;
static uint64_t seed; /* 0: the shape's own */

static void add(const char *name, int rows, int cols, enum init init, float scale)
{
	if (n_tensors == cap_tensors) {
		cap_tensors = cap_tensors ? 2 * cap_tensors : 64;
		tensors = realloc(tensors, (size_t)cap_tensors * sizeof *tensors);
		if (!tensors) {
			perror("realloc");
			exit(1);
		}
	}
	struct tensor *t = &tensors[n_tensors++];
	memset(t, 0, sizeof *t);
	snprintf(t->name, sizeof t->name, "%s", name);
	t->rows = rows;
	t->cols = cols;
	t->init = init;
	t->scale = scale;
	size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
	t->nbytes = n * dtype_size(out_dtype);
}

/* Uniform on [-1, 1) from 32 random bits, exactly: int32 -> float rounds the
 * same way everywhere and the power-of-two scale is exact. */
static float unit(uint64_t *s)
{
	int32_t r = (int32_t)(uint32_t)(splitmix(s) >> 32);
	return (float)r * (1.0f / 2147483648.0f);
}

static void write_tensor(FILE *f, const struct tensor *t)
{
	uint64_t s = fnv1a(t->name, 0xcbf29ce484222325ull ^ seed);
	size_t n = (size_t)t->rows * (size_t)(t->cols ? t->cols : 1);
	size_t esz = dtype_size(out_dtype);
	uint8_t buf[1 << 16];
	size_t fill = 0;
	for (size_t i = 0; i < n; i++) {
		float v = unit(&s) * t->scale;
		if (t->init == INIT_NORM)
			v += 1.0f;
		if (out_dtype == DT_BF16) {
			uint16_t h = f32_to_bf16(v);
			memcpy(buf + fill, &h, 2);
		} else if (out_dtype == DT_F16) {
			uint16_t h = f32_to_f16(v);
			memcpy(buf + fill, &h, 2);
		} else {
			memcpy(buf + fill, &v, 4);
		}
		fill += esz;
		if (fill == sizeof buf) {
			fwrite(buf, 1, fill, f);
			fill = 0;
		}
	}
	fwrite(buf, 1, fill, f);
}

/* std -> half-width of the uniform distribution with that standard deviation */
static float width(float std)
{
	return std * 1.7320508f;
}

static void build(const struct shape *s)
{
	int hd = s->head_dim ? s->head_dim : s->hidden / s->heads;
	int q = s->heads * hd, kv = s->kv_heads * hd;
	float in_h = width(1.0f / sqrtf((float)s->hidden));
	float in_q = width(s->out_gain / sqrtf((float)q));
	float in_i = width(s->out_gain / sqrtf((float)s->inter));
	char n[96];
	add("model.embed_tokens.weight", s->vocab, s->hidden, INIT_UNIFORM, width(s->embed_std));
	for (int l = 0; l < s->layers; l++) {
#define T(suffix, r, c, init, sc) \
	(snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix), add(n, r, c, init, sc))
		T("input_layernorm.weight", s->hidden, 0, INIT_NORM, 0.2f);
		T("self_attn.q_proj.weight", q, s->hidden, INIT_UNIFORM, in_h);
		T("self_attn.k_proj.weight", kv, s->hidden, INIT_UNIFORM, in_h);
		T("self_attn.v_proj.weight", kv, s->hidden, INIT_UNIFORM, in_h);
		if (s->qkv_bias) {
			T("self_attn.q_proj.bias", q, 0, INIT_UNIFORM, 0.1f);
			T("self_attn.k_proj.bias", kv, 0, INIT_UNIFORM, 0.1f);
			T("self_attn.v_proj.bias", kv, 0, INIT_UNIFORM, 0.1f);
		}
		T("self_attn.o_proj.weight", s->hidden, q, INIT_UNIFORM, in_q);
		T("post_attention_layernorm.weight", s->hidden, 0, INIT_NORM, 0.2f);
		T("mlp.gate_proj.weight", s->inter, s->hidden, INIT_UNIFORM, in_h);
		T("mlp.up_proj.weight", s->inter, s->hidden, INIT_UNIFORM, in_h);
		T("mlp.down_proj.weight", s->hidden, s->inter, INIT_UNIFORM, in_i);
#undef T
	}
	add("model.norm.weight", s->hidden, 0, INIT_NORM, 0.2f);
	if (!s->tie)
		add("lm_head.weight", s->vocab, s->hidden, INIT_UNIFORM, width(s->head_std));
	/* Shards split the tensor list into runs of about equal bytes. */
	size_t total = 0;
	for (int i = 0; i < n_tensors; i++)
		total += tensors[i].nbytes;
	size_t acc = 0;
	for (int i = 0; i < n_tensors; i++) {
		tensors[i].shard = (int)(acc * (size_t)s->shards / total);
		acc += tensors[i].nbytes;
	}
}

static FILE *open_out(const char *dir, const char *name)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f) {
		fprintf(stderr, "make-model: fopen(%s) failed: %s\n", path, strerror(errno));
		exit(1);
	}
	return f;
}

static void shard_name(char *buf, size_t len, int shard, int shards)
{
	if (shards == 1)
		snprintf(buf, len, "model.safetensors");
	else
		snprintf(buf, len, "model-%05d-of-%05d.safetensors", shard + 1, shards);
}

static void write_shard(const char *dir, int shard, int shards)
{
	char name[64];
	shard_name(name, sizeof name, shard, shards);
	/* Header first: its length decides where data starts. */
	size_t hcap = 1 << 20, hl = 0;
	char *h = malloc(hcap);
	hl += (size_t)snprintf(h + hl, hcap - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
	size_t off = 0;
	for (int i = 0; i < n_tensors; i++) {
		struct tensor *t = &tensors[i];
		if (t->shard != shard)
			continue;
		t->offset = off;
		off += t->nbytes;
		if (t->cols)
			hl += (size_t)snprintf(h + hl, hcap - hl,
					       ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%d,%d],"
					       "\"data_offsets\":[%zu,%zu]}",
					       t->name, dtype_name(out_dtype), t->rows, t->cols,
					       t->offset, t->offset + t->nbytes);
		else
			hl += (size_t)snprintf(h + hl, hcap - hl,
					       ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%d],"
					       "\"data_offsets\":[%zu,%zu]}",
					       t->name, dtype_name(out_dtype), t->rows, t->offset,
					       t->offset + t->nbytes);
	}
	hl += (size_t)snprintf(h + hl, hcap - hl, "}");
	while (hl % 8)
		h[hl++] = ' ';
	FILE *f = open_out(dir, name);
	uint8_t len8[8];
	for (int i = 0; i < 8; i++)
		len8[i] = (uint8_t)((uint64_t)hl >> (8 * i));
	fwrite(len8, 1, 8, f);
	fwrite(h, 1, hl, f);
	for (int i = 0; i < n_tensors; i++)
		if (tensors[i].shard == shard)
			write_tensor(f, &tensors[i]);
	if (fclose(f) != 0) {
		fprintf(stderr, "make-model: writing %s/%s failed: %s\n", dir, name, strerror(errno));
		exit(1);
	}
	free(h);
}

static void write_index(const char *dir, int shards)
{
	FILE *f = open_out(dir, "model.safetensors.index.json");
	size_t total = 0;
	for (int i = 0; i < n_tensors; i++)
		total += tensors[i].nbytes;
	fprintf(f, "{\n  \"metadata\": {\"total_size\": %zu},\n  \"weight_map\": {\n", total);
	for (int i = 0; i < n_tensors; i++) {
		char name[64];
		shard_name(name, sizeof name, tensors[i].shard, shards);
		fprintf(f, "    \"%s\": \"%s\"%s\n", tensors[i].name, name,
			i + 1 < n_tensors ? "," : "");
	}
	fprintf(f, "  }\n}\n");
	fclose(f);
}

static void write_ids(FILE *f, const struct shape *s)
{
	if (s->n_eos == 1)
		fprintf(f, "%d", s->eos[0]);
	else
		fprintf(f, "[%d, %d]", s->eos[0], s->eos[1]);
}

static void write_configs(const char *dir, const struct shape *s)
{
	static const char *torch_names[] = {[DT_F32] = "float32", [DT_F16] = "float16",
					    [DT_BF16] = "bfloat16"};
	FILE *f = open_out(dir, "config.json");
	fprintf(f, "{\n  \"architectures\": [\"%s\"],\n", s->arch);
	fprintf(f, "  \"model_type\": \"%s\",\n", s->arch[0] == 'Q' ? "qwen2" : "llama");
	fprintf(f, "  \"hidden_size\": %d,\n  \"num_hidden_layers\": %d,\n", s->hidden, s->layers);
	fprintf(f, "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n", s->heads,
		s->kv_heads);
	if (s->head_dim)
		fprintf(f, "  \"head_dim\": %d,\n", s->head_dim);
	fprintf(f, "  \"intermediate_size\": %d,\n  \"vocab_size\": %d,\n", s->inter, s->vocab);
	fprintf(f, "  \"max_position_embeddings\": %d,\n", s->max_pos);
	fprintf(f, "  \"hidden_act\": \"silu\",\n  \"rms_norm_eps\": 1e-06,\n");
	fprintf(f, "  \"rope_theta\": %.1f,\n", s->rope_theta);
	if (s->rope_scaling)
		fprintf(f, "  \"rope_scaling\": %s,\n", s->rope_scaling);
	if (s->arch[0] == 'Q')
		fprintf(f, "  \"use_sliding_window\": false,\n  \"sliding_window\": null,\n");
	else
		fprintf(f, "  \"attention_bias\": false,\n  \"mlp_bias\": false,\n");
	fprintf(f, "  \"tie_word_embeddings\": %s,\n", s->tie ? "true" : "false");
	fprintf(f, "  \"torch_dtype\": \"%s\",\n", torch_names[out_dtype]);
	fprintf(f, "  \"bos_token_id\": %d,\n  \"eos_token_id\": ", s->bos);
	write_ids(f, s);
	fprintf(f, "\n}\n");
	fclose(f);
	f = open_out(dir, "generation_config.json");
	fprintf(f, "{\n  \"bos_token_id\": %d,\n  \"eos_token_id\": ", s->bos);
	write_ids(f, s);
	fprintf(f, ",\n  \"do_sample\": false\n}\n");
	fclose(f);
}

static void usage(void)
{
	fprintf(stderr, "usage: make-model --shape NAME --out DIR [--dtype bf16|f16|f32] [--seed N]\n"
			"shapes:");
	for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
		fprintf(stderr, " %s", shapes[i].name);
	fprintf(stderr, "\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *shape = NULL, *out = NULL;
	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		if (strcmp(argv[i], "--shape") == 0)
			shape = argv[++i];
		else if (strcmp(argv[i], "--out") == 0)
			out = argv[++i];
		else if (strcmp(argv[i], "--seed") == 0)
			seed = strtoull(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--dtype") == 0) {
			const char *d = argv[++i];
			if (strcmp(d, "bf16") == 0)
				out_dtype = DT_BF16;
			else if (strcmp(d, "f16") == 0)
				out_dtype = DT_F16;
			else if (strcmp(d, "f32") == 0)
				out_dtype = DT_F32;
			else
				usage();
		} else
			usage();
	}
	if (!shape || !out)
		usage();
	const struct shape *s = NULL;
	for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
		if (strcmp(shapes[i].name, shape) == 0)
			s = &shapes[i];
	if (!s)
		usage();
	if (mkdir(out, 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "make-model: mkdir(%s) failed: %s\n", out, strerror(errno));
		return 1;
	}
	if (seed == 0)
		seed = s->seed;
	build(s);
	for (int i = 0; i < s->shards; i++)
		write_shard(out, i, s->shards);
	if (s->shards > 1)
		write_index(out, s->shards);
	write_configs(out, s);
	return 0;
}
