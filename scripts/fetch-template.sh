#!/bin/sh
# Copies a model's chat template, as llama.cpp keeps it in models/templates/
# (fetched there from the model's Hugging Face repository), out of the
# source bundle that the pinned npm package node-llama-cpp ships
# (llama/gitRelease.bundle). The package is cached in build/npm, so that a
# second run needs no network.
#   fetch-template.sh FILE.jinja OUT
set -eu
file=$1
out=$2
version=3.22.1
tgz="build/npm/node-llama-cpp-$version.tgz"
. "$(dirname "$0")/npm-cache.sh"
npm_cached "node-llama-cpp@$version" "$tgz"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$tgz" -C "$tmp" package/llama/gitRelease.bundle
git clone -q --bare "$tmp/package/llama/gitRelease.bundle" "$tmp/llama.git"
git --git-dir="$tmp/llama.git" show "HEAD:models/templates/$file" >"$out.tmp"
mv "$out.tmp" "$out"
