#!/bin/sh
# Makes the test models and their reference outputs with transformers, on a
# machine that has torch and transformers (see README: "Reference outputs").
# Writes tests/fixtures/<model>/reference.json, or into $1 when given.
set -eu
out=${1:-tests/fixtures}
make build/make-model >/dev/null
for m in tiny-qwen2 tiny-llama; do
	mkdir -p build/models/$m
	build/make-model --shape $m --out build/models/$m
	python3 scripts/reference.py --model build/models/$m --name $m --out "$out/$m/reference.json"
done
