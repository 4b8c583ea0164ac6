/* The engine's test runner: safetensors and config parsing, the kernels on
 * every instruction set the processor has, and the whole forward pass against
 * transformers' reference outputs for the tiny models. Runs from the
 * repository root after `make models`:
 *
 *   build/test-engine [--only NAME] [--seed N] [--models DIR] [--worker PATH]
 */
#include "../engine/config.h"
#include "../engine/cpu.h"
#include "../engine/generate.h"
#include "../engine/matmul.h"
#include "../engine/model.h"
#include "../engine/recipe.h"
#include "../engine/safetensors.h"
#include "../engine/sampler.h"
#include "../engine/sha256.h"
#include "../engine/weights.h"
#include "../engine/device.h"
#include "runner.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *models_dir = "build/models";
static const char *worker_path = "build/ember-worker";
/* --device cuda: the reference tests on the CUDA backend (make test-gpu). */
static const char *device_arg = "cpu";
/* Largest difference from transformers' float32 logits allowed on a GPU,
 * which multiplies BF16 activations and keeps a BF16 KV cache (the CPU
 * keeps both in float32): this much plus GPU_LOGIT_REL of the logit. BF16
 * keeps 8 bits of mantissa (0.4%); a logit carries a few such roundings
 * (measured on an H100: up to 0.6% on the tiny models). */
#define GPU_LOGIT_TOL 0.02
#define GPU_LOGIT_REL 0.01
static uint64_t rng_state;

static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static float rndf(void) /* uniform in [-1, 1) */
{
	return (float)((double)(rnd() >> 11) / (double)(1ull << 52) - 1.0);
}

/* ---- sha256 and the test models ---------------------------------------- */

static int test_sha256_vectors(void)
{
	char hex[65];
	sha256_hex("", 0, hex);
	CHECK(!strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
	      "sha256('') = %s", hex);
	sha256_hex("abc", 3, hex);
	CHECK(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
	      "sha256('abc') = %s", hex);
	const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	sha256_hex(m, strlen(m), hex);
	CHECK(!strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
	      "sha256(448 bits) = %s", hex);
	/* The same bytes fed in odd pieces. */
	struct sha256 s;
	uint8_t d[32];
	sha256_init(&s);
	for (size_t i = 0; i < strlen(m); i += 7)
		sha256_update(&s, m + i, strlen(m) - i < 7 ? strlen(m) - i : 7);
	sha256_final(&s, d);
	CHECK(d[0] == 0x24 && d[31] == 0xc1, "sha256 in pieces differs");
	return 0;
}

static int read_file(const char *path, uint8_t **buf, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return -errno;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	*buf = malloc(n > 0 ? (size_t)n : 1);
	*len = fread(*buf, 1, (size_t)n, f);
	fclose(f);
	return 0;
}

/* The tiny models are the same bytes on every machine: their digests are
 * recorded in tests/models.sha256 (made with sha256sum in build/models). */
static int test_models_sha256(void)
{
	FILE *f = fopen("tests/models.sha256", "r");
	CHECK(f, "tests/models.sha256: %s", strerror(errno));
	char want[65], name[256];
	int n = 0, bad = 0;
	while (fscanf(f, "%64s %255s", want, name) == 2) {
		char path[512];
		snprintf(path, sizeof path, "%s/%s", models_dir, name);
		uint8_t *buf;
		size_t len;
		if (read_file(path, &buf, &len) < 0) {
			bad += fail("%s: missing (run make models)", path);
			continue;
		}
		char got[65];
		sha256_hex(buf, len, got);
		free(buf);
		if (strcmp(got, want) != 0)
			bad += fail("%s: sha256 %s, recorded %s", path, got, want);
		n++;
	}
	fclose(f);
	CHECK(n >= 5, "only %d files listed", n);
	return bad ? 1 : 0;
}

/* ---- number formats ----------------------------------------------------- */

static int test_half_conversions(void)
{
	for (uint32_t h = 0; h < 0x10000; h++) {
		float f = f16_to_f32((uint16_t)h);
		if (isnan(f))
			continue;
		CHECK(f32_to_f16(f) == h, "f16 %04x -> %g -> %04x", h, f, f32_to_f16(f));
		uint16_t b = (uint16_t)h;
		float g = bf16_to_f32(b);
		if (!isnan(g))
			CHECK(f32_to_bf16(g) == b, "bf16 %04x does not round-trip", h);
	}
	CHECK(f32_to_bf16(1.00390625f) == 0x3f80, "bf16 ties go to even");
	CHECK(f32_to_bf16(1.01171875f) == 0x3f82, "bf16 ties go to even (odd case)");
	CHECK(f16_to_f32(0x0001) == 5.9604644775390625e-08f, "smallest f16 subnormal");
	CHECK(f32_to_f16(65520.0f) == 0x7c00, "f16 overflow to infinity");
	return 0;
}

/* ---- safetensors -------------------------------------------------------- */

/* Builds a file: 8-byte length, header, then data_len bytes of data. */
static uint8_t *st_build(const char *header, size_t data_len, size_t *len)
{
	size_t hl = strlen(header);
	*len = 8 + hl + data_len;
	uint8_t *b = calloc(1, *len);
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
	memcpy(b + 8, header, hl);
	for (size_t i = 0; i < data_len; i++)
		b[8 + hl + i] = (uint8_t)i;
	return b;
}

static int test_safetensors_valid(void)
{
	size_t len;
	uint8_t *b = st_build("{\"__metadata__\":{\"format\":\"pt\"},"
			      "\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
			      "\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[12,24]},"
			      "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[24,32]},"
			      "\"z\":{\"dtype\":\"F16\",\"shape\":[0,5],\"data_offsets\":[32,32]}}",
			      32, &len);
	struct st_file f;
	char err[EMBER_ERR_LEN];
	int rc = st_parse(b, len, &f, err);
	CHECK(rc == 0, "valid file rejected: %s", err);
	CHECK(f.n_tensors == 4, "%zu tensors", f.n_tensors);
	const struct st_tensor *w = st_find(&f, "w"), *bb = st_find(&f, "b"), *s = st_find(&f, "s");
	CHECK(w && w->dtype == DT_BF16 && w->n_dims == 2 && w->shape[0] == 2 && w->shape[1] == 3 &&
		      w->nbytes == 12,
	      "tensor w wrong");
	CHECK(bb && bb->data == w->data + 12 && bb->n_elems == 3, "tensor b wrong");
	CHECK(s && s->n_dims == 0 && s->n_elems == 1, "scalar wrong");
	CHECK(!st_find(&f, "__metadata__") && !st_find(&f, "x"), "found what is not there");
	st_free(&f);
	free(b);
	return 0;
}

static int test_safetensors_rejects(void)
{
	static const struct {
		const char *header; /* NULL: raw bytes below */
		size_t data_len;
		const char *why;
	} cases[] = {
		{"[]", 0, "not a JSON object"},
		{"{\"w\":1}", 0, "not an object"},
		{"{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "needs dtype"},
		{"{\"w\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype"},
		{"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 4, "outside"},
		{"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "bytes for"},
		{"{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "non-negative"},
		{"{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "non-negative"},
		{"{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}",
		 4, "overflows"},
		{"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
		 "dimensions"},
		{"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "outside"},
		{"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, "outside"},
		{"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "two integers"},
		{"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
		 "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
		 4, "duplicate"},
		{"{\"__metadata__\":[],\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
		 "__metadata__"},
		{"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, "not valid JSON"},
		{"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551615]}}", 4,
		 "not valid JSON"},
	};
	char err[EMBER_ERR_LEN];
	struct st_file f;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		size_t len;
		uint8_t *b = st_build(cases[i].header, cases[i].data_len, &len);
		err[0] = 0;
		int rc = st_parse(b, len, &f, err);
		free(b);
		CHECK(rc == -EINVAL, "case %zu accepted: %s", i, cases[i].header);
		CHECK(strstr(err, cases[i].why), "case %zu: error '%s' does not say '%s'", i, err,
		      cases[i].why);
		CHECK(f.tensors == NULL && f.n_tensors == 0, "case %zu left tensors behind", i);
	}
	/* Lengths: too short, header past the end, absurd header length. */
	uint8_t small[7] = {0};
	CHECK(st_parse(small, sizeof small, &f, err) == -EINVAL && strstr(err, "too short"),
	      "7-byte file: %s", err);
	uint8_t past[16] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
	CHECK(st_parse(past, sizeof past, &f, err) == -EINVAL && strstr(err, "header length"),
	      "header past the end: %s", err);
	uint8_t huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	CHECK(st_parse(huge, sizeof huge, &f, err) == -EINVAL, "2^64-1 header length accepted");
	return 0;
}

/* ---- config.json -------------------------------------------------------- */

static int parse_config_file(const char *model, struct model_config *c, char *err)
{
	char path[512];
	snprintf(path, sizeof path, "%s/%s/config.json", models_dir, model);
	uint8_t *buf;
	size_t len;
	if (read_file(path, &buf, &len) < 0)
		return ember_err(err, -ENOENT, "%s missing", path);
	int rc = cfg_parse(buf, len, c, err);
	free(buf);
	return rc;
}

static int test_config_models(void)
{
	struct model_config c;
	char err[EMBER_ERR_LEN];
	CHECK(parse_config_file("tiny-qwen2", &c, err) == 0, "tiny-qwen2: %s", err);
	CHECK(c.recipe == recipe_find("Qwen2ForCausalLM") && strcmp(c.recipe->family, "llama") == 0 &&
		      strcmp(c.arch_name, "Qwen2ForCausalLM") == 0 && c.hidden == 64 && c.n_heads == 4 &&
		      c.n_kv_heads == 2 && c.head_dim == 16 && c.tie_embeddings && c.p.llama.attn_bias &&
		      !c.p.llama.attn_out_bias &&
		      c.rope == ROPE_DEFAULT && c.rope_theta == 1e6 && c.n_eos == 2 &&
		      c.eos_ids[0] == 151645 && c.dtype == DT_BF16,
	      "tiny-qwen2 fields wrong");
	CHECK(parse_config_file("tiny-llama", &c, err) == 0, "tiny-llama: %s", err);
	CHECK(c.recipe == recipe_find("LlamaForCausalLM") && strcmp(c.arch_name, "LlamaForCausalLM") == 0 &&
		      c.head_dim == 32 && !c.tie_embeddings && !c.p.llama.attn_bias &&
		      c.rope == ROPE_LLAMA3 && c.rope_factor == 8 && c.rope_orig_max_pos == 64 &&
		      c.rope_high_freq_factor == 4 && c.bos_id == 0 && c.n_eos == 1,
	      "tiny-llama fields wrong");
	return 0;
}

static int test_config_rejects(void)
{
#define BASE "\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"num_hidden_layers\":2," \
	     "\"num_attention_heads\":4,\"intermediate_size\":128,\"vocab_size\":100"
	static const struct {
		const char *json, *why;
	} cases[] = {
		{"[1]", "not a JSON object"},
		{"{", "config.json:"},
		{"{\"architectures\":[\"DeepseekV3ForCausalLM\"]}", "'DeepseekV3ForCausalLM' is not supported"},
		{"{\"architectures\":[]}", "architectures[0]"},
		{"{\"architectures\":[\"LlamaForCausalLM\"]}", "hidden_size is missing"},
		{"{" BASE ",\"hidden_size\":64}", "duplicate"},
		{"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":\"64\"}", "not an integer"},
		{"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":-1}", "outside"},
		{"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":99999999999}", "outside"},
		{"{" BASE ",\"num_key_value_heads\":3}", "not a multiple"},
		{"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"num_hidden_layers\":2,"
		 "\"num_attention_heads\":5,\"intermediate_size\":128,\"vocab_size\":100}",
		 "not a multiple of num_attention_heads"},
		{"{" BASE ",\"head_dim\":15}", "must be even"},
		{"{" BASE ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}", "'yarn' is not supported"},
		{"{" BASE ",\"rope_scaling\":{\"rope_type\":\"linear\"}}", "factor is missing"},
		{"{" BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}", "llama3 rope_scaling needs"},
		{"{" BASE ",\"rope_scaling\":5}", "rope_scaling is not an object"},
		{"{" BASE ",\"rms_norm_eps\":\"x\"}", "not a number"},
		{"{" BASE ",\"rope_theta\":0}", "outside"},
		{"{" BASE ",\"tie_word_embeddings\":1}", "not a boolean"},
		{"{" BASE ",\"hidden_act\":\"gelu\"}", "hidden_act"},
		{"{" BASE ",\"torch_dtype\":\"int8\"}", "'int8' is not supported"},
		{"{" BASE ",\"eos_token_id\":[1,2,3,4,5,6,7,8,9]}", "eos_token_id"},
		{"{" BASE ",\"eos_token_id\":[\"a\"]}", "eos_token_id[0]"},
		{"{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64,\"num_hidden_layers\":2,"
		 "\"num_attention_heads\":4,\"intermediate_size\":128,\"vocab_size\":100,"
		 "\"use_sliding_window\":true}",
		 "use_sliding_window"},
	};
#undef BASE
	struct model_config c;
	char err[EMBER_ERR_LEN];
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		err[0] = 0;
		int rc = cfg_parse((const uint8_t *)cases[i].json, strlen(cases[i].json), &c, err);
		CHECK(rc == -EINVAL, "case %zu accepted: %s", i, cases[i].json);
		CHECK(strstr(err, cases[i].why), "case %zu: error '%s' does not say '%s'", i, err,
		      cases[i].why);
	}
	return 0;
}

static int test_generation_config(void)
{
	char dir[512], err[EMBER_ERR_LEN];
	snprintf(dir, sizeof dir, "%s/tiny-qwen2", models_dir);
	struct model *m;
	CHECK(model_open_dir(dir, &m, err) == 0, "%s", err);
	CHECK(m->gen.have_sampling && !m->gen.do_sample && m->gen.n_eos == 2 &&
		      m->gen.eos_ids[0] == 151645 && m->gen.temperature < 0,
	      "tiny-qwen2's generation_config.json read wrong");
	/* config.json and generation_config.json name the same ids: once each. */
	CHECK(m->n_stop_ids == 2 && m->stop_ids[0] == 151645 && m->stop_ids[1] == 151643,
	      "%d stop ids", m->n_stop_ids);
	model_close(m);
	static const struct {
		const char *json, *why;
	} cases[] = {
		{"[]", "not a JSON object"},
		{"{\"do_sample\": 1}", "do_sample"},
		{"{\"temperature\": -1}", "temperature"},
		{"{\"top_p\": 2}", "top_p"},
		{"{\"top_k\": 1.5}", "top_k"},
		{"{\"repetition_penalty\": 0}", "repetition_penalty"},
		{"{\"eos_token_id\": \"x\"}", "eos_token_id"},
		{"{\"eos_token_id\": [1, -2]}", "eos_token_id[1]"},
	};
	struct gen_defaults g;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		err[0] = 0;
		CHECK(gen_parse((const uint8_t *)cases[i].json, strlen(cases[i].json), &g, err) == -EINVAL &&
			      strstr(err, cases[i].why),
		      "case %zu: '%s'", i, err);
	}
	const char *ok = "{\"do_sample\": true, \"temperature\": 0.6, \"top_p\": 0.95, \"eos_token_id\": 7}";
	CHECK(gen_parse((const uint8_t *)ok, strlen(ok), &g, err) == 0 && g.do_sample &&
		      g.temperature == 0.6f && g.top_p == 0.95f && g.n_eos == 1 && g.eos_ids[0] == 7 &&
		      g.top_k == -1,
	      "a valid generation_config.json: %s", err);
	return 0;
}

/* ---- model directories with something wrong ----------------------------- */

static int write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	fputs(text, f);
	return fclose(f);
}

static int test_model_errors(void)
{
	char dir[] = "/tmp/ember-test-XXXXXX";
	CHECK(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	char path[512], target[512], err[EMBER_ERR_LEN];
	struct model *m = NULL;
	int rc, bad = 0;

	rc = model_open_dir("/nonexistent/model", &m, err);
	if (rc != -ENOENT || !strstr(err, "/nonexistent/model"))
		bad += fail("missing directory: rc %d, '%s'", rc, err);

	/* A config naming tensors the file lacks: a Llama of 3 layers given the
	 * tiny Qwen2's weights (2 layers are present, and no lm_head). */
	snprintf(path, sizeof path, "%s/model.safetensors", dir);
	char *abs = realpath(models_dir, NULL);
	snprintf(target, sizeof target, "%s/tiny-qwen2/model.safetensors", abs ? abs : models_dir);
	free(abs);
	if (symlink(target, path) < 0)
		bad += fail("symlink: %s", strerror(errno));
	snprintf(path, sizeof path, "%s/config.json", dir);

	rc = model_open_dir(dir, &m, err);
	if (rc != -ENOENT || !strstr(err, "config.json"))
		bad += fail("missing config.json: rc %d, '%s'", rc, err);

	write_text(path, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,"
			 "\"num_hidden_layers\":4,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
			 "\"intermediate_size\":160,\"vocab_size\":151936,\"tie_word_embeddings\":true}");
	rc = model_open_dir(dir, &m, err);
	if (rc != -EINVAL || !strstr(err, "'model.layers.3.input_layernorm.weight' is missing"))
		bad += fail("missing layer: rc %d, '%s'", rc, err);

	write_text(path, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,"
			 "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
			 "\"intermediate_size\":128,\"vocab_size\":151936,\"tie_word_embeddings\":true}");
	rc = model_open_dir(dir, &m, err);
	if (rc != -EINVAL || !strstr(err, "should have shape [128, 64]"))
		bad += fail("wrong shape: rc %d, '%s'", rc, err);

	write_text(path, "{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":64,"
			 "\"num_hidden_layers\":3,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
			 "\"intermediate_size\":160,\"vocab_size\":151936}");
	rc = model_open_dir(dir, &m, err);
	if (rc != -EINVAL || !strstr(err, "'lm_head.weight' is missing"))
		bad += fail("untied without lm_head: rc %d, '%s'", rc, err);

	/* A shard index that names a tensor its shard lacks. */
	snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
	write_text(path, "{\"weight_map\":{\"model.norm.weight\":\"model.safetensors\","
			 "\"model.extra\":\"model.safetensors\"}}");
	rc = model_open_dir(dir, &m, err);
	if (rc != -EINVAL || !strstr(err, "lists tensor 'model.extra'"))
		bad += fail("index naming a missing tensor: rc %d, '%s'", rc, err);
	write_text(path, "{\"weight_map\":{\"model.norm.weight\":\"../model.safetensors\"}}");
	rc = model_open_dir(dir, &m, err);
	if (rc != -EINVAL || !strstr(err, "not a plain file name"))
		bad += fail("index with a path: rc %d, '%s'", rc, err);
	unlink(path);

	snprintf(path, sizeof path, "%s/config.json", dir);
	unlink(path);
	snprintf(path, sizeof path, "%s/model.safetensors", dir);
	unlink(path);
	rmdir(dir);
	CHECK(m == NULL, "a model was returned on failure");
	return bad ? 1 : 0;
}

/* ---- kernels ------------------------------------------------------------ */

static const char *isas[] = {"avx512", "avx2", "generic"};

static void fill_weights(enum dtype dt, uint8_t *w, float *ref, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		float v = rndf();
		uint16_t h;
		if (dt == DT_BF16) {
			h = f32_to_bf16(v);
			memcpy(w + 2 * i, &h, 2);
			ref[i] = bf16_to_f32(h);
		} else if (dt == DT_F16) {
			h = f32_to_f16(v);
			memcpy(w + 2 * i, &h, 2);
			ref[i] = f16_to_f32(h);
		} else {
			memcpy(w + 4 * i, &v, 4);
			ref[i] = v;
		}
	}
}

/* Every kernel against a double-precision product, on sizes with tails; and
 * each token's result bit-identical whether computed alone or in a batch. */
static int test_matmul_kernels(void)
{
	enum { R = 37, K = 100, T = 9 };
	struct tpool *tp;
	char err[EMBER_ERR_LEN];
	CHECK(tp_create(2, &tp, err) == 0, "%s", err);
	float x[T * K], ref[R * K], bias[R], y[T * R], y1[R];
	uint8_t w[R * K * 4];
	int bad = 0, ran = 0;
	for (size_t i = 0; i < T * K; i++)
		x[i] = rndf();
	for (int i = 0; i < R; i++)
		bias[i] = rndf();
	for (size_t s = 0; s < sizeof isas / sizeof isas[0]; s++) {
		if (cpu_isa_select(isas[s]) < 0)
			continue;
		ran++;
		enum dtype dts[] = {DT_BF16, DT_F16, DT_F32};
		for (int d = 0; d < 3; d++) {
			fill_weights(dts[d], w, ref, R * K);
			struct wdesc tv = {.dtype = dts[d], .data = w, .rows = R, .cols = K};
			struct mm_job job = {.w = &tv, .bias = bias, .y = y};
			cpu_matmul(tp, x, T, &job, 1);
			double worst = 0;
			for (int t = 0; t < T; t++) {
				for (int r = 0; r < R; r++) {
					double want = bias[r];
					for (int k = 0; k < K; k++)
						want += (double)ref[r * K + k] * x[t * K + k];
					double e = fabs(y[t * R + r] - want);
					worst = e > worst ? e : worst;
				}
				struct mm_job one = {.w = &tv, .bias = bias, .y = y1};
				cpu_matmul(tp, x + t * K, 1, &one, 1);
				if (memcmp(y1, y + t * R, sizeof y1) != 0)
					bad += fail("%s %s: token %d differs alone and in a batch", isas[s],
						    dtype_name(dts[d]), t);
			}
			if (worst > 1e-4)
				bad += fail("%s %s: error %.2e", isas[s], dtype_name(dts[d]), worst);
		}
		float a[67], b[67];
		double want = 0;
		for (int i = 0; i < 67; i++) {
			a[i] = rndf();
			b[i] = rndf();
			want += (double)a[i] * b[i];
		}
		if (fabs(cpu_dot(a, b, 67) - want) > 1e-5)
			bad += fail("%s: dot error", isas[s]);
	}
	for (size_t s = 0; s < sizeof isas / sizeof isas[0]; s++)
		if (cpu_isa_select(isas[s]) == 0)
			break; /* back to the best */
	tp_destroy(tp);
	printf("    kernels checked on %d instruction sets (now %s)\n", ran, cpu_isa());
	return bad ? 1 : 0;
}

/* ---- the whole model against transformers ------------------------------- */

struct reference {
	json_t *root;
	json_t *prompts;
};

static int load_reference(const char *model, struct reference *r)
{
	char path[512];
	snprintf(path, sizeof path, "tests/fixtures/%s/reference.json", model);
	json_error_t je;
	r->root = json_load_file(path, 0, &je);
	if (!r->root)
		return fail("%s: %s", path, je.text);
	r->prompts = json_object_get(r->root, "prompts");
	if (!json_is_array(r->prompts) || json_array_size(r->prompts) < 4)
		return fail("%s: fewer than 4 prompts", path);
	return 0;
}

static int32_t *json_ids(json_t *a, int *n)
{
	*n = (int)json_array_size(a);
	int32_t *ids = malloc((size_t)(*n ? *n : 1) * sizeof *ids);
	for (int i = 0; i < *n; i++)
		ids[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
	return ids;
}

/* The reference's greedy continuation, fed token by token after the
 * prompt: at each step our top token must be the reference's, unless the
 * two are within tol of each other in our logits (a tie at that
 * precision). Counts such ties in *ties. */
static int check_greedy_within(struct backend *b, const int32_t *ids, int n, const int32_t *want,
			       int n_want, int vocab, double tol, int *ties)
{
	char err[EMBER_ERR_LEN];
	float *l = malloc((size_t)vocab * sizeof *l);
	int bad = 0;
	if (gen_prefill(b, 0, ids, n, 0, l, err) < 0)
		bad = fail("prefill: %s", err);
	for (int i = 0; !bad && i < n_want; i++) {
		int top = gen_argmax(l, vocab);
		if (top != want[i]) {
			if (l[top] - l[want[i]] > tol + GPU_LOGIT_REL * fabsf(l[top])) {
				bad = fail("prompt of %d: greedy token %d is %d (%.4f), reference %d (%.4f)",
					   n, i, top, l[top], want[i], l[want[i]]);
				break;
			}
			(*ties)++;
		}
		struct be_entry e = {0, n + i, want[i], 0};
		if (be_forward(b, &e, 1, l, err) < 0)
			bad = fail("step: %s", err);
	}
	free(l);
	return bad;
}

/* Prefills the prompt in one step with logits at the reference's positions,
 * compares the top-50 values (within tol; on a GPU plus GPU_LOGIT_REL of
 * the value, *worst_over the largest difference less that share), then
 * the greedy continuation: exactly with tol 1e-3 (the CPU), else as
 * check_greedy_within. */
static int check_prompt(struct backend *b, json_t *p, int vocab, double tol, double *worst,
			double *worst_over, int *ties)
{
	int n, n_greedy, bad = 0;
	int32_t *ids = json_ids(json_object_get(p, "ids"), &n);
	int32_t *want = json_ids(json_object_get(p, "greedy"), &n_greedy);
	json_t *tops = json_object_get(p, "logits");
	int rows = (int)json_array_size(tops);
	struct be_entry *e = calloc((size_t)n, sizeof *e);
	float *logits = malloc((size_t)rows * (size_t)vocab * sizeof *logits);
	for (int i = 0; i < n; i++)
		e[i] = (struct be_entry){0, i, ids[i], -1};
	for (int r = 0; r < rows; r++)
		e[json_integer_value(json_object_get(json_array_get(tops, (size_t)r), "pos"))]
			.logits_row = r;
	char err[EMBER_ERR_LEN];
	if (be_forward(b, e, n, logits, err) < 0) {
		bad += fail("forward: %s", err);
		goto out;
	}
	for (int r = 0; r < rows; r++) {
		json_t *t = json_array_get(tops, (size_t)r);
		json_t *top = json_object_get(t, "top");
		for (size_t k = 0; k < json_array_size(top); k++) {
			json_t *pair = json_array_get(top, k);
			int id = (int)json_integer_value(json_array_get(pair, 0));
			double v = json_number_value(json_array_get(pair, 1));
			double d = fabs(logits[(size_t)r * vocab + id] - v);
			if (d > *worst)
				*worst = d;
			double rel = tol > 1e-3 ? GPU_LOGIT_REL * fabs(v) : 0;
			if (d - rel > *worst_over)
				*worst_over = d - rel;
			if (d > tol + rel) {
				bad += fail("prompt of %d, pos %lld, token %d: %.6f, reference %.6f", n,
					    json_integer_value(json_object_get(t, "pos")), id,
					    logits[(size_t)r * vocab + id], v);
				goto out;
			}
		}
	}
	if (tol > 1e-3) {
		bad += check_greedy_within(b, ids, n, want, n_greedy, vocab, tol, ties);
		goto out;
	}
	int32_t *got = malloc((size_t)n_greedy * sizeof *got);
	float *l1 = malloc((size_t)vocab * sizeof *l1);
	if (gen_greedy(b, 0, ids, n, n_greedy, got, l1, NULL, NULL, err) < 0)
		bad += fail("greedy: %s", err);
	else
		for (int i = 0; i < n_greedy; i++)
			if (got[i] != want[i]) {
				bad += fail("prompt of %d: greedy token %d is %d, reference %d", n, i,
					    got[i], want[i]);
				break;
			}
	free(got);
	free(l1);
out:
	free(e);
	free(logits);
	free(ids);
	free(want);
	return bad;
}

static int check_model(const char *name)
{
	struct reference ref;
	if (load_reference(name, &ref))
		return 1;
	char dir[512], err[EMBER_ERR_LEN];
	snprintf(dir, sizeof dir, "%s/%s", models_dir, name);
	struct model *m;
	if (model_open_dir(dir, &m, err) < 0) {
		json_decref(ref.root);
		return fail("%s", err);
	}
	int bad = 0;
	const struct device *dev;
	if (device_parse(device_arg, &dev, err) == 0 && device_resolve(dev) != &cpu_device) {
		struct device_opts o = {.max_tokens = 512, .max_ctx = 512};
		struct backend *b;
		if (device_backend_create(dev, m, &o, &b, err) < 0) {
			bad += fail("%s", err);
		} else {
			double worst = 0, over = -1;
			int ties = 0;
			for (size_t i = 0; i < json_array_size(ref.prompts); i++)
				bad += check_prompt(b, json_array_get(ref.prompts, i), m->cfg.vocab,
						    GPU_LOGIT_TOL, &worst, &over, &ties);
			printf("    %s on %s: largest logit difference %.3f over %zu prompts, %.3f beyond "
			       "%.1f%% of the logit (tolerance %.2f); greedy tokens that differ from the "
			       "reference's by less than that: %d\n",
			       name, b->name, worst, json_array_size(ref.prompts), over,
			       100 * GPU_LOGIT_REL, GPU_LOGIT_TOL, ties);
			be_destroy(b);
		}
		model_close(m);
		json_decref(ref.root);
		return bad ? 1 : 0;
	}
	const char *best = cpu_isa();
	for (size_t s = 0; s < sizeof isas / sizeof isas[0]; s++) {
		if (cpu_isa_select(isas[s]) < 0)
			continue;
		struct backend *b;
		struct cpu_opts o = {.threads = 2, .max_tokens = 512, .max_ctx = 512};
		if (cpu_backend_create(m, &o, &b, err) < 0) {
			bad += fail("%s", err);
			break;
		}
		double worst = 0, over = 0;
		int ties = 0;
		for (size_t i = 0; i < json_array_size(ref.prompts); i++)
			bad += check_prompt(b, json_array_get(ref.prompts, i), m->cfg.vocab, 1e-3,
					    &worst, &over, &ties);
		printf("    %s on %s: largest logit difference %.2e over %zu prompts\n", name,
		       isas[s], worst, json_array_size(ref.prompts));
		be_destroy(b);
	}
	cpu_isa_select(best);
	model_close(m);
	json_decref(ref.root);
	return bad ? 1 : 0;
}

static int test_reference_tiny_qwen2(void)
{
	return check_model("tiny-qwen2");
}

static int test_reference_tiny_llama(void)
{
	return check_model("tiny-llama");
}

/* Two sequences of different lengths in one step, then decoding side by
 * side: each sequence's logits are bit-identical to running it alone, and a
 * prompt split into chunks gives the logits of the prompt in one step. */
static int test_batch_sequences(void)
{
	struct reference ref;
	if (load_reference("tiny-llama", &ref))
		return 1;
	char dir[512], err[EMBER_ERR_LEN];
	snprintf(dir, sizeof dir, "%s/tiny-llama", models_dir);
	struct model *m;
	CHECK(model_open_dir(dir, &m, err) == 0, "%s", err);
	struct backend *b;
	struct cpu_opts o = {.threads = 2, .max_tokens = 512, .max_seqs = 4, .max_ctx = 512};
	CHECK(cpu_backend_create(m, &o, &b, err) == 0, "%s", err);
	int na, nb, V = m->cfg.vocab, bad = 0;
	int32_t *a = json_ids(json_object_get(json_array_get(ref.prompts, 2), "ids"), &na);
	int32_t *c = json_ids(json_object_get(json_array_get(ref.prompts, 1), "ids"), &nb);
	float *alone = malloc(2 * (size_t)V * sizeof(float));
	float *both = malloc(2 * (size_t)V * sizeof(float));
	/* Alone, in sequence slots 0 and 1; a in chunks of 5. */
	for (int i = 0; i < na; i += 5) {
		struct be_entry e[5];
		int k = na - i < 5 ? na - i : 5;
		for (int j = 0; j < k; j++)
			e[j] = (struct be_entry){0, i + j, a[i + j], i + j == na - 1 ? 0 : -1};
		bad += be_forward(b, e, k, alone, err) < 0;
	}
	bad += gen_prefill(b, 1, c, nb, 0, alone + V, err) < 0;
	/* Together, in slot 2 (a) and slot 3 (c), entries interleaved. */
	struct be_entry *e = calloc((size_t)(na + nb), sizeof *e);
	int n = 0;
	for (int i = 0; i < na || i < nb; i++) {
		if (i < nb)
			e[n++] = (struct be_entry){3, i, c[i], i == nb - 1 ? 1 : -1};
		if (i < na)
			e[n++] = (struct be_entry){2, i, a[i], i == na - 1 ? 0 : -1};
	}
	bad += be_forward(b, e, n, both, err) < 0;
	CHECK(!bad, "forward failed: %s", err);
	CHECK(memcmp(alone, both, 2 * (size_t)V * sizeof(float)) == 0,
	      "logits differ between alone and batched");
	/* Decode 8 steps of both together against slot 0 / 1 alone. */
	int32_t ta = gen_argmax(alone, V), tc = gen_argmax(alone + V, V);
	for (int step = 0; step < 8; step++) {
		struct be_entry one = {0, na + step, ta, 0};
		bad += be_forward(b, &one, 1, alone, err) < 0;
		struct be_entry two[2] = {{2, na + step, ta, 1}, {3, nb + step, tc, 0}};
		bad += be_forward(b, two, 2, both, err) < 0;
		struct be_entry three = {1, nb + step, tc, 0};
		bad += be_forward(b, &three, 1, alone + V, err) < 0;
		CHECK(!bad, "forward failed: %s", err);
		CHECK(memcmp(alone, both + V, (size_t)V * sizeof(float)) == 0 &&
			      memcmp(alone + V, both, (size_t)V * sizeof(float)) == 0,
		      "decode step %d differs between alone and batched", step);
		ta = gen_argmax(alone, V);
		tc = gen_argmax(alone + V, V);
	}
	/* Out-of-range entries are refused before anything is computed. */
	struct be_entry wrong[] = {{4, 0, 1, 0}, {0, 512, 1, 0}, {0, 0, V, 0}, {0, 0, 1, 1}};
	for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++)
		CHECK(be_forward(b, &wrong[i], 1, both, err) == -EINVAL, "bad entry %zu accepted", i);
	struct be_entry twice[2] = {{0, 0, 1, 0}, {1, 0, 1, 0}};
	CHECK(be_forward(b, twice, 2, both, err) == -EINVAL && strstr(err, "twice"),
	      "logits row given twice accepted");
	free(e);
	free(alone);
	free(both);
	free(a);
	free(c);
	be_destroy(b);
	model_close(m);
	json_decref(ref.root);
	return 0;
}

/* be_sample against be_forward's logits of the same step sampled by
 * sampler_sample_row, on the backend --device names: eight sequences, each
 * with other parameters (greedy, temperature, top_k, top_p, min_p,
 * penalties, top log-probabilities), decoding together and then five of
 * them (on a GPU, a graph's padded batch). The tokens are the same; the
 * log-probabilities within 1e-4 (on the CPU identical). */
static int test_sample_rows(void)
{
	char dir[512], err[EMBER_ERR_LEN];
	snprintf(dir, sizeof dir, "%s/tiny-qwen2", models_dir);
	struct model *m;
	CHECK(model_open_dir(dir, &m, err) == 0, "%s", err);
	const struct device *dev = &cpu_device;
	if (device_parse(device_arg, &dev, err) < 0)
		dev = &cpu_device;
	struct device_opts o = {.threads = 2, .max_tokens = 256, .max_seqs = 8, .max_ctx = 256};
	struct backend *b;
	if (device_backend_create(dev, m, &o, &b, err) < 0) {
		model_close(m);
		return fail("%s", err);
	}
	int V = m->cfg.vocab, N = 8, P = 12, bad = 0, diff = 0;
	float *logits = malloc((size_t)N * V * 4);
	struct sampler_scratch *sc = sampler_scratch_create(V);
	struct sampler_seq *seq[8];
	struct sampler_row rows[8];
	struct sampler_result got[8], want;
	int32_t tok[8], prompt[12];
	double worst = 0;
	for (int s = 0; s < N; s++) {
		struct sampler_params p;
		sampler_params_default(&p);
		p.seed = 100 + (uint64_t)s;
		p.temperature = s == 0 ? 0 : 0.6f + 0.1f * (float)s;
		p.top_k = s == 2 ? 5 : s == 6 ? 40 : 0;
		p.top_p = s == 3 ? 0.9f : s == 6 ? 0.7f : 1;
		p.min_p = s == 4 ? 0.1f : 0;
		if (s == 5)
			p.repetition_penalty = 1.3f, p.frequency_penalty = 0.5f, p.presence_penalty = 0.3f;
		p.top_logprobs = s == 7 || s == 0 ? 5 : 0;
		seq[s] = sampler_seq_create(&p, V, 64);
		for (int i = 0; i < P; i++) {
			prompt[i] = 700 + 41 * i + 13 * s;
			sampler_seq_add(seq[s], prompt[i], false);
		}
		bad += gen_prefill(b, s, prompt, P, 0, logits, err) < 0;
		tok[s] = gen_argmax(logits, V);
		sampler_accept(seq[s], tok[s]);
	}
	for (int k = 0; k < 12 && !bad; k++) {
		int n = k < 6 ? N : 5;
		struct be_entry e[8];
		for (int s = 0; s < n; s++) {
			e[s] = (struct be_entry){s, P + k, tok[s], s};
			sampler_prepare(seq[s], &rows[s]);
		}
		bad += be_forward(b, e, n, logits, err) < 0;
		bad += be_sample(b, e, n, rows, got, err) < 0;
		for (int s = 0; s < n && !bad; s++) {
			sampler_sample_row(&rows[s], sc, logits + (size_t)s * V, &want);
			bool same = got[s].token == want.token && got[s].n_top == want.n_top;
			for (int i = 0; same && i < want.n_top; i++)
				same = got[s].top_token[i] == want.top_token[i];
			double d = fabs((double)got[s].logprob - want.logprob);
			worst = d > worst ? d : worst;
			diff += !same || d > 1e-4;
			sampler_accept(seq[s], got[s].token);
			tok[s] = got[s].token;
		}
	}
	printf("    on %s: %d of 78 rows differ from be_forward + sampler_sample_row; largest "
	       "log-probability difference %.2e\n", b->name, diff, worst);
	struct be_entry many[9];
	for (int s = 0; s < 9; s++)
		many[s] = (struct be_entry){s % 8, 30, 1, s};
	int over = be_sample(b, many, 9, rows, got, err);
	for (int s = 0; s < N; s++)
		sampler_seq_destroy(seq[s]);
	sampler_scratch_destroy(sc);
	free(logits);
	be_destroy(b);
	model_close(m);
	CHECK(!bad, "%s", err);
	CHECK(diff == 0, "%d rows differ", diff);
	CHECK(over == -EINVAL, "9 rows sampled with max_seqs 8");
	return 0;
}

/* ---- the command-line tool ---------------------------------------------- */

static int test_worker_cli(void)
{
	struct reference ref;
	if (load_reference("tiny-qwen2", &ref))
		return 1;
	json_t *p = json_array_get(ref.prompts, 1);
	json_t *ids = json_object_get(p, "ids"), *greedy = json_object_get(p, "greedy");
	char cmd[8192], out[8192], want[8192];
	int n = snprintf(cmd, sizeof cmd, "%s --model %s/tiny-qwen2 --threads 2 --max-tokens %zu --prompt-ids ",
			 worker_path, models_dir, json_array_size(greedy));
	for (size_t i = 0; i < json_array_size(ids); i++)
		n += snprintf(cmd + n, sizeof cmd - (size_t)n, "%s%lld", i ? "," : "",
			      json_integer_value(json_array_get(ids, i)));
	snprintf(cmd + n, sizeof cmd - (size_t)n, " 2>/dev/null");
	int rc = run_capture(cmd, out, sizeof out);
	int w = 0;
	for (size_t i = 0; i < json_array_size(greedy); i++)
		w += snprintf(want + w, sizeof want - (size_t)w, "%s%lld", i ? "," : "",
			      json_integer_value(json_array_get(greedy, i)));
	snprintf(want + w, sizeof want - (size_t)w, "\n");
	json_decref(ref.root);
	CHECK(rc == 0, "ember-worker exited %d", rc);
	CHECK(strcmp(out, want) == 0, "ember-worker printed %s, reference %s", out, want);

	static const struct {
		const char *args, *says;
		int status;
	} bad[] = {
		{"--model /nonexistent --prompt-ids 1", "/nonexistent", 1},
		{"--model %s/tiny-qwen2 --prompt-ids 1,x", "comma-separated", 2},
		{"--model %s/tiny-qwen2 --prompt-ids 999999", "outside the vocabulary", 1},
		{"--model %s/tiny-qwen2 --prompt-ids 1 --max-tokens -3", "--max-tokens", 2},
		{"--model %s/tiny-qwen2 --prompt-ids 1 --ctx 4 --max-tokens 8", "exceed the context", 1},
		{"--bogus 1", "unknown option", 2},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char args[512];
		snprintf(args, sizeof args, bad[i].args, models_dir);
		snprintf(cmd, sizeof cmd, "%s %s 2>&1", worker_path, args);
		rc = run_capture(cmd, out, sizeof out);
		CHECK(rc == bad[i].status && strstr(out, bad[i].says),
		      "'%s' exited %d (want %d) saying: %s", args, rc, bad[i].status, out);
	}
	return 0;
}

/* ---- runner ------------------------------------------------------------- */

static uint64_t seed;

static void reseed(void)
{
	rng_state = seed;
}

static const struct test tests[] = {
	{"sha256_vectors", test_sha256_vectors},
	{"models_sha256", test_models_sha256},
	{"half_conversions", test_half_conversions},
	{"safetensors_valid", test_safetensors_valid},
	{"safetensors_rejects", test_safetensors_rejects},
	{"config_models", test_config_models},
	{"config_rejects", test_config_rejects},
	{"generation_config", test_generation_config},
	{"model_errors", test_model_errors},
	{"matmul_kernels", test_matmul_kernels},
	{"reference_tiny_qwen2", test_reference_tiny_qwen2},
	{"reference_tiny_llama", test_reference_tiny_llama},
	{"batch_sequences", test_batch_sequences},
	{"sample_rows", test_sample_rows},
	{"worker_cli", test_worker_cli},
};

int main(int argc, char **argv)
{
	const char *only, *seed_arg = NULL;
	const struct runner_opt opts[] = {
		{"--seed", &seed_arg}, {"--models", &models_dir}, {"--worker", &worker_path},
		{"--device", &device_arg}};
	if (runner_args(argc, argv, "test-engine", opts, 4, &only) < 0)
		return 2;
	seed = seed_arg ? strtoull(seed_arg, NULL, 10) : (uint64_t)time(NULL);
	printf("test-engine: seed %llu, kernels %s\n", (unsigned long long)seed, cpu_isa());
	return run_tests(tests, sizeof tests / sizeof tests[0], only, reseed);
}
