#!/bin/sh
# Runs every suite against each build directory given (the plain build and
# the sanitizer build), then prints one closing line with the totals.
#   tests/run.sh BUILD_DIR...
# The test models are in build/models whatever the build directory. With
# EMBER_NSROOT (a root made by scripts/nsroot.sh), the first build's emberd
# also runs under a real systemd booted in a container.
#   tests/run.sh --gpu BUILD_DIR
# runs what needs a GPU (make test-gpu): the kernels against their CPU
# references, and the whole model and the scheduler on the CUDA backend.
set -u
models=${EMBER_MODELS:-build/models}
passed=0 failed=0 skipped=0

# Adds the counts of a runner's closing line "N passed, N failed, N skipped".
count() {
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1)
	if [ -z "$line" ]; then
		failed=$((failed + 1))
		return
	fi
	set -- $(echo "$line" | tr -dc '0-9 ')
	passed=$((passed + $1)) failed=$((failed + $2)) skipped=$((skipped + ${3:-0}))
}

# A program that passes by exiting 0 counts as one test.
one() {
	name=$1
	shift
	if "$@" >"$log" 2>&1; then
		echo "PASS $name"
		passed=$((passed + 1))
	else
		sed 's/^/    /' "$log"
		echo "FAIL $name"
		failed=$((failed + 1))
	fi
}

first=$1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if [ "$1" = --gpu ]; then
	build=$2
	"$build/test-gpu" --models "$models" | tee "$log"
	count "$log"
	for t in reference_tiny_qwen2 reference_tiny_llama sample_rows; do
		"$build/test-engine" --models "$models" --device cuda --only "$t" | tee "$log"
		count "$log"
	done
	"$build/test-sched" --models "$models" --device cuda | tee "$log"
	count "$log"
	echo "$passed passed, $failed failed, $skipped skipped"
	[ "$failed" -eq 0 ]
	exit
fi
for build in "$@"; do
	echo "== suite in $build"
	"$build/test-engine" --models "$models" --worker "$build/ember-worker" | tee "$log"
	count "$log"
	"$build/test-tokenizer" --models "$models" --worker "$build/ember-worker" | tee "$log"
	count "$log"
	"$build/test-sampler" | tee "$log"
	count "$log"
	"$build/test-sched" --models "$models" | tee "$log"
	count "$log"
	"$build/test-worker" | tee "$log"
	count "$log"
	"$build/test-supervisor" --models "$models" --worker "$build/ember-worker" | tee "$log"
	count "$log"
	# The CUDA kernels (a build with CUDA; SKIP without a GPU).
	if [ -x "$build/test-gpu" ]; then
		"$build/test-gpu" --models "$models" | tee "$log"
		count "$log"
	fi
	# The worker behind real Caddy, Apache httpd and nginx.
	node tests/http/run.mjs --worker "$build/ember-worker" --models "$models" | tee "$log"
	count "$log"
	for f in tests/fuzz/corpus/*; do
		name=$(basename "$f")
		one "fuzz corpus $name ($(ls "$f" | wc -l) inputs)" "$build/fuzz-replay-$name" "$f"
	done
done
if [ -n "${EMBER_NSROOT:-}" ]; then
	echo "== the units under systemd in a container, with $first"
	node tests/http/systemd.mjs --build "$first" --models "$models" --nsroot "$EMBER_NSROOT" | tee "$log"
	count "$log"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
