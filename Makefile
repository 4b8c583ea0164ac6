# ember: `make run` and `make test` do everything on a fresh Debian 12
# machine, installing what is missing (`make deps`) and making the test
# models (`make models`). Build output goes to build/.

CC       ?= gcc
BUILD    ?= build
# Where jansson (and later libfcgi, liburing, ...) live when not in the
# system: a prefix made by unpacking Debian packages (see README).
DEPS_PREFIX ?=

CFLAGS   ?= -O2 -g
override CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -pthread -fno-strict-aliasing
LDLIBS   += -ljansson -lpcre2-8 -lutf8proc -lm -pthread
WORKER_LIBS := -lfcgi -lsystemd
ifneq ($(DEPS_PREFIX),)
DEPS_LIBDIRS := $(wildcard $(DEPS_PREFIX)/usr/lib/x86_64-linux-gnu $(DEPS_PREFIX)/usr/lib \
                  $(DEPS_PREFIX)/lib/x86_64-linux-gnu $(DEPS_PREFIX)/lib)
DEPS_CFLAGS := -I$(DEPS_PREFIX)/usr/include -I$(DEPS_PREFIX)/include
override CFLAGS += $(DEPS_CFLAGS)
override LDFLAGS += $(foreach d,$(DEPS_LIBDIRS),-L$(d) -Wl,-rpath,$(abspath $(d)))
endif

# CUDA: kernels/ is built when nvcc is found (NVCC= builds without it), for
# Hopper (sm_90) with PTX that other GPUs from Ampere on compile at load.
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifneq ($(NVCC),)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=compute_80
NVCCFLAGS ?= -O3
override CFLAGS += -DEMBER_CUDA -I$(CUDA_HOME)/include
CUDA_LIB = $(BUILD)/libember-cuda.a
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcudart -lstdc++
GPU_PROGS = $(BUILD)/test-gpu $(BUILD)/bench-gpu
endif

ENGINE_SRC := engine/common.c engine/safetensors.c engine/modelfiles.c engine/weights.c \
              engine/config.c engine/recipe.c $(wildcard engine/arch/*.c) engine/model.c engine/kv.c engine/threads.c engine/matmul.c engine/cpu.c engine/device.c \
              engine/generate.c engine/sha256.c engine/wimage.c engine/backend.c \
              engine/tokenizer.c engine/tokencode.c engine/tokstream.c engine/tokjson.c \
              engine/chat.c engine/sampler.c engine/stop.c engine/sched.c \
              engine/reasoning.c engine/pyjson.c engine/toolcall.c
ENGINE_HDR := $(wildcard engine/*.h) $(wildcard engine/arch/*.h) $(wildcard worker/*.h) $(wildcard supervisor/*.h) \
              $(wildcard kernels/*.h)
WORKER_SRC := worker/main.c worker/cli.c worker/server.c worker/routes.c worker/load.c \
              worker/complete.c worker/conn.c \
              worker/api.c worker/http.c worker/metrics.c worker/wlog.c
WORKER_OBJ = $(patsubst %.c,$(BUILD)/%.o,$(WORKER_SRC))
SUPERVISOR_SRC := supervisor/wstore.c supervisor/scoreboard.c supervisor/listen.c
SUPERVISOR_OBJ = $(patsubst %.c,$(BUILD)/%.o,$(SUPERVISOR_SRC))
SUPERVISOR_LIBS := -luring

TINY_MODELS := tiny-qwen2 tiny-llama
MODEL_STAMPS := $(patsubst %,$(BUILD)/models/%/.done,$(TINY_MODELS))
tokenizer_of = $(if $(filter tiny-llama,$(1)),deepseek_v3,qwen3)

FUZZERS := safetensors config tokenizer_json tokenizer_encode request fcgi_params wimage reasoning toolcall
FUZZ_SRC := engine/common.c engine/safetensors.c engine/modelfiles.c engine/weights.c engine/config.c \
            engine/recipe.c $(wildcard engine/arch/*.c) \
            engine/tokenizer.c engine/tokencode.c engine/tokstream.c engine/tokjson.c engine/chat.c engine/sampler.c engine/wimage.c engine/sha256.c \
            engine/reasoning.c engine/pyjson.c engine/toolcall.c worker/api.c worker/http.c

.PHONY: all deps models nsroot test test-gpu bench-gpu asan asan-build bench bench-http bench-stream run install clean fuzz
.SECONDARY:
all: $(BUILD)/ember-worker $(BUILD)/emberd $(BUILD)/make-model $(BUILD)/test-engine $(BUILD)/test-tokenizer \
     $(BUILD)/test-sampler $(BUILD)/test-sched $(BUILD)/test-worker $(BUILD)/journal-capture \
     $(BUILD)/test-supervisor $(BUILD)/bench-wstore \
     $(BUILD)/bench-engine $(BUILD)/bench-tokenizer $(BUILD)/bench-sched \
     $(patsubst %,$(BUILD)/fuzz-replay-%,$(FUZZERS)) $(GPU_PROGS)

deps:
	@scripts/deps.sh

# --- programs -------------------------------------------------------------

$(BUILD)/%.o: %.c $(ENGINE_HDR) tests/runner.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

ENGINE_OBJ = $(patsubst %.c,$(BUILD)/%.o,$(ENGINE_SRC))

$(BUILD)/libember-engine.a: $(ENGINE_OBJ)
	ar rcs $@ $^

KERNEL_OBJ = $(patsubst %.cu,$(BUILD)/%.o,$(wildcard kernels/*.cu))
$(BUILD)/kernels/%.o: kernels/%.cu $(ENGINE_HDR)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) $(CUDA_ARCH) -std=c++17 -D_GNU_SOURCE $(DEPS_CFLAGS) \
		-Xcompiler -Wall,-Wextra,-Werror -c -o $@ $<

$(BUILD)/libember-cuda.a: $(KERNEL_OBJ)
	ar rcs $@ $^

# The engine with, when built, its CUDA backend: the two call each other
# (the device registry, engine/device.c, names the CUDA device), so they
# are linked as one group.
DEVICE_LIBS = $(CUDA_LIB) $(BUILD)/libember-engine.a
DEVICE_LINK = $(filter-out %.a,$^) -Wl,--start-group $(DEVICE_LIBS) -Wl,--end-group $(CUDA_LIBS)

$(BUILD)/ember-worker: $(WORKER_OBJ) $(BUILD)/supervisor/scoreboard.o $(BUILD)/supervisor/listen.o \
                      $(DEVICE_LIBS)
	$(CC) $(LDFLAGS) -o $@ $(DEVICE_LINK) $(WORKER_LIBS) $(LDLIBS)

$(BUILD)/make-model: $(BUILD)/scripts/make_model.o $(BUILD)/engine/common.o
	$(CC) $(LDFLAGS) -o $@ $^ -lm

$(BUILD)/test-engine: $(BUILD)/tests/test_engine.o $(DEVICE_LIBS)
	$(CC) $(LDFLAGS) -o $@ $(DEVICE_LINK) $(LDLIBS)

$(BUILD)/bench-engine: $(BUILD)/scripts/bench_engine.o $(BUILD)/libember-engine.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The fuzz targets, linked with a main() that replays a corpus, so that
# `make test` runs every corpus with gcc; `make fuzz` builds them with
# libFuzzer.
$(BUILD)/fuzz-replay-%: $(BUILD)/tests/fuzz/fuzz_%.o $(BUILD)/tests/fuzz/replay.o \
                        $(BUILD)/worker/api.o $(BUILD)/worker/http.o $(BUILD)/libember-engine.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# --- models ---------------------------------------------------------------

models: deps $(MODEL_STAMPS) $(BUILD)/tokenizers/llama3/.done $(BUILD)/templates/.done

# Chat templates as the models ship them, out of llama.cpp's models/templates/
# (scripts/fetch-template.sh): R1-Distill's (the Llama-8B copy: the Qwen-32B
# copy carries llama.cpp's own edits), Qwen2.5's and DeepSeek-V3.1's.
$(BUILD)/templates/.done: scripts/fetch-template.sh
	@mkdir -p $(dir $@)
	scripts/fetch-template.sh deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja $(dir $@)deepseek-r1.jinja
	scripts/fetch-template.sh Qwen-Qwen2.5-7B-Instruct.jinja $(dir $@)qwen2.5.jinja
	scripts/fetch-template.sh deepseek-ai-DeepSeek-V3.1.jinja $(dir $@)deepseek-v3.1.jinja
	@touch $@

# A tokenizer without a model: Llama-3's, for the tokenizer and chat tests.
$(BUILD)/tokenizers/llama3/.done: scripts/fetch-tokenizer.sh
	@mkdir -p $(dir $@)
	scripts/fetch-tokenizer.sh llama3_1 $(dir $@)
	@touch $@

$(BUILD)/models/%/.done: $(BUILD)/make-model scripts/fetch-tokenizer.sh
	@mkdir -p $(BUILD)/models
	$(BUILD)/make-model --shape $* --out $(BUILD)/models/$*
	scripts/fetch-tokenizer.sh $(call tokenizer_of,$*) $(BUILD)/models/$*
	@touch $@

# --- tests ----------------------------------------------------------------

# The reference tokenizer (@lenml/tokenizers), pinned by package-lock.json.
TOKREF := tests/tokenizer/node_modules/.package-lock.json
$(TOKREF): tests/tokenizer/package.json tests/tokenizer/package-lock.json
	cd tests/tokenizer && npm ci --silent --no-audit --no-fund
	@touch $@

# The integration tests' client: the official openai package, pinned likewise.
HTTPREF := tests/http/node_modules/.package-lock.json
$(HTTPREF): tests/http/package.json tests/http/package-lock.json
	cd tests/http && npm ci --silent --no-audit --no-fund
	@touch $@

# The whole suite, on the plain build and under AddressSanitizer and
# UndefinedBehaviorSanitizer, with one closing line for both.
test: deps models all asan-build nsroot $(TOKREF) $(HTTPREF)
	@EMBER_MODELS=$(BUILD)/models EMBER_NSROOT=$(BUILD)/nsroot tests/run.sh $(BUILD) $(BUILD)/asan

# On a machine with a GPU (a build with CUDA): the kernels against their
# CPU references, the whole model against transformers' fixtures and the
# scheduler's tests on the CUDA backend; then its speed beside transformers.
test-gpu: $(MODEL_STAMPS) all
	@EMBER_MODELS=$(BUILD)/models tests/run.sh --gpu $(BUILD)

bench-gpu: $(BUILD)/bench-gpu $(BUILD)/make-model
	scripts/bench_gpu.sh $(BUILD)

# The Debian root that the systemd tests boot in a container (made once).
nsroot: deps
	@scripts/nsroot.sh $(BUILD)/nsroot

asan: deps models asan-build $(TOKREF) $(HTTPREF)
	@EMBER_MODELS=$(BUILD)/models tests/run.sh $(BUILD)/asan

ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
asan-build:
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/asan NVCC= CFLAGS="-O1 -g $(ASAN_FLAGS)" \
		LDFLAGS="$(ASAN_FLAGS) $(LDFLAGS)" $(BUILD)/asan/test-engine $(BUILD)/asan/test-tokenizer \
		$(BUILD)/asan/test-sampler $(BUILD)/asan/test-sched $(BUILD)/asan/test-worker \
		$(BUILD)/asan/test-supervisor $(BUILD)/asan/emberd \
		$(patsubst %,$(BUILD)/asan/fuzz-replay-%,$(FUZZERS)) $(BUILD)/asan/ember-worker

FUZZ_SECONDS ?= 600
fuzz: deps
	@mkdir -p $(BUILD)/fuzz
	for f in $(FUZZERS); do \
		clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
			-o $(BUILD)/fuzz/fuzz-$$f tests/fuzz/fuzz_$$f.c $(FUZZ_SRC) $(DEPS_CFLAGS) $(LDFLAGS) $(LDLIBS) || exit 1; \
	done
	for f in $(FUZZERS); do \
		mkdir -p tests/fuzz/corpus/$$f; \
		$(BUILD)/fuzz/fuzz-$$f -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
			tests/fuzz/corpus/$$f tests/fuzz/seeds/$$f || exit 1; \
	done

# --- benchmarks and the demo ----------------------------------------------

BENCH_SHAPE ?= qwen2-0.5b
# A benchmark model (random weights of a real shape) gets the Qwen tokenizer
# of tiny-qwen2, so that the worker can serve it (the cold-start and
# streaming benchmarks).
$(BUILD)/models/%/.done-bench: $(BUILD)/make-model $(BUILD)/models/tiny-qwen2/.done
	@mkdir -p $(BUILD)/models
	$(BUILD)/make-model --shape $* --out $(BUILD)/models/$*
	cp $(BUILD)/models/tiny-qwen2/tokenizer.json $(BUILD)/models/tiny-qwen2/tokenizer_config.json \
		$(BUILD)/models/$*/
	@touch $@

bench: deps models all $(BUILD)/models/$(BENCH_SHAPE)/.done-bench
	$(BUILD)/bench-engine --model $(BUILD)/models/$(BENCH_SHAPE)
	$(BUILD)/bench-sched --model $(BUILD)/models/$(BENCH_SHAPE)
	$(BUILD)/bench-tokenizer --model $(BUILD)/models/tiny-qwen2
	$(BUILD)/bench-tokenizer --model $(BUILD)/models/tiny-llama
	$(BUILD)/bench-wstore --model $(BUILD)/models/$(BENCH_SHAPE)
	node scripts/bench_coldstart.mjs $(BUILD) $(BUILD)/models/$(BENCH_SHAPE) 3
	node scripts/bench_stream.mjs $(BUILD) $(BUILD)/models/$(BENCH_SHAPE) $(STREAM_ARGS)
	scripts/bench_http.sh $(BUILD)

# Streamed chats under load through Caddy and emberd (TTFT, inter-token
# latency, aggregate tokens/s). On a GPU:
#   make bench-stream BENCH_SHAPE=r1-distill-qwen-1.5b \
#        STREAM_ARGS="--streams 64 --tokens 256 -- --device cuda"
STREAM_ARGS ?= --streams 16 --tokens 32 --rounds 1
bench-stream: deps models $(BUILD)/ember-worker $(BUILD)/emberd $(BUILD)/models/$(BENCH_SHAPE)/.done-bench
	node scripts/bench_stream.mjs $(BUILD) $(BUILD)/models/$(BENCH_SHAPE) $(STREAM_ARGS)

# Only the HTTP benchmark: GET /health through Caddy, ember beside php-fpm.
bench-http: deps models $(BUILD)/ember-worker
	scripts/bench_http.sh $(BUILD)

run: deps models $(BUILD)/ember-worker $(BUILD)/emberd
	@scripts/run-demo.sh $(BUILD)

# Installs the two programs and, beside them, the systemd units and the
# front-end files (copy those into /etc/systemd/system and the web server's
# configuration).
PREFIX ?= /usr/local
install: $(BUILD)/ember-worker $(BUILD)/emberd
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/ember
	install -m 0755 $(BUILD)/ember-worker $(BUILD)/emberd $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 units/ember.socket units/ember.service units/Caddyfile \
		units/apache-ember.conf units/nginx-ember.conf $(DESTDIR)$(PREFIX)/share/ember/

clean:
	rm -rf $(BUILD)

$(BUILD)/test-tokenizer: $(BUILD)/tests/test_tokenizer.o $(BUILD)/libember-engine.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bench-tokenizer: $(BUILD)/scripts/bench_tokenizer.o $(BUILD)/libember-engine.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/test-sampler: $(BUILD)/tests/test_sampler.o $(BUILD)/libember-engine.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/test-worker: $(BUILD)/tests/test_worker.o $(BUILD)/worker/api.o $(BUILD)/worker/http.o \
                      $(BUILD)/worker/metrics.o $(BUILD)/libember-engine.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/emberd: $(BUILD)/supervisor/emberd.o $(SUPERVISOR_OBJ) $(BUILD)/libember-engine.a
	$(CC) $(LDFLAGS) -o $@ $^ $(SUPERVISOR_LIBS) -lsystemd $(LDLIBS)

$(BUILD)/test-supervisor: $(BUILD)/tests/test_supervisor.o $(SUPERVISOR_OBJ) $(BUILD)/libember-engine.a
	$(CC) $(LDFLAGS) -o $@ $^ $(SUPERVISOR_LIBS) $(LDLIBS)

$(BUILD)/bench-wstore: $(BUILD)/scripts/bench_wstore.o $(SUPERVISOR_OBJ) $(BUILD)/libember-engine.a
	$(CC) $(LDFLAGS) -o $@ $^ $(SUPERVISOR_LIBS) $(LDLIBS)

$(BUILD)/journal-capture: $(BUILD)/tests/journal_capture.o
	$(CC) $(LDFLAGS) -o $@ $^

$(BUILD)/test-sched: $(BUILD)/tests/test_sched.o $(DEVICE_LIBS)
	$(CC) $(LDFLAGS) -o $@ $(DEVICE_LINK) $(LDLIBS)

# The GPU's kernels against their CPU references; the GPU benchmark.
$(BUILD)/test-gpu: $(BUILD)/tests/test_gpu.o $(DEVICE_LIBS)
	$(CC) $(LDFLAGS) -o $@ $(DEVICE_LINK) $(LDLIBS)

$(BUILD)/bench-gpu: $(BUILD)/scripts/bench_gpu.o $(DEVICE_LIBS)
	$(CC) $(LDFLAGS) -o $@ $(DEVICE_LINK) $(LDLIBS)

$(BUILD)/bench-sched: $(BUILD)/scripts/bench_sched.o $(BUILD)/libember-engine.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
