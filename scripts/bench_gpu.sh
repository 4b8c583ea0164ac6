#!/bin/sh
# make bench-gpu: bench-gpu and transformers on random weights of the
# DeepSeek-R1-Distill-Qwen 1.5B and 7B shapes, in one run, with the ratios.
#   scripts/bench_gpu.sh BUILD_DIR [SHAPE...]
set -eu
build=$1
shift
shapes=${*:-r1-distill-qwen-1.5b r1-distill-qwen-7b}
for shape in $shapes; do
	dir=$build/models/$shape
	[ -f "$dir/.done" ] || { "$build/make-model" --shape "$shape" --out "$dir" && touch "$dir/.done"; }
	ours=$("$build/bench-gpu" --model "$dir")
	theirs=$(python3 scripts/bench_gpu_hf.py "$dir" 2>/dev/null | tail -n 1)
	python3 - "$shape" "$ours" "$theirs" <<'PY'
import json, sys
shape, ours, theirs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"== {shape}: weights {ours['weight_bytes_per_token'] / 1e9:.2f} GB per token, "
      f"copy bandwidth {ours['copy_bandwidth_gbs']:.0f} GB/s, limit {ours['bandwidth_limit_tps']:.0f} tokens/s")
print(f"   upload {ours['upload_gbs']:.2f} GB/s ({ours['upload_s']:.2f} s, {ours['upload_threads']} threads), "
      f"CUDA init {ours['cuda_init_s']:.2f} s, {ours['graphs']} graphs captured in {ours['graph_capture_s']:.2f} s")
def row(name, a, b):
    print(f"   {name:<28} ember {a:>10.1f}   transformers {b:>10.1f}   ratio {a / b:6.2f}")
row("decode, batch 1", ours["decode_batch1_tps"], theirs["decode_batch1_tps"])
print(f"   decode at batch 1 is {100 * ours['fraction_of_limit']:.1f}% of the bandwidth limit")
for n, v in ours["decode_batched_tps"].items():
    row(f"decode, {n} sequences", v, theirs["decode_batched_tps"][n])
row("prefill, 512 tokens", ours["prefill_512_tps"], theirs["prefill_512_tps"])
row("prefill, 2048 tokens", ours["prefill_2048_tps"], theirs["prefill_2048_tps"])
print(f"   decode, batch 1, context 4096: {ours['decode_batch1_ctx4096_tps']:.1f} tokens/s, "
      f"{100 * ours['ctx4096_fraction_of_limit']:.1f}% of its limit ({ours['ctx4096_limit_tps']:.0f})")
for k, v in ours.items():
    if k.startswith("step_split_"):
        print(f"   step {k[11:]:<18} {v['step_us']:7.1f} us: " + ", ".join(
            f"{c} {v[c]['us']:.1f} us at {v[c]['gbs']:.0f} GB/s" for c in ("products", "attention", "rest")))
        print("      " + ", ".join(f"{q['what']} x{q['count']} {q['us']:.0f} us {q['gbs']:.0f} GB/s"
                                   for q in v["parts"]))
print("   step, n sequences, kernel by kernel: our products vs cublasLt (us): " + ", ".join(
    f"{n}: {a:.0f}/{b:.0f}" for n, (a, b) in ours["step_us_dgemm_cublaslt"].items()))
PY
done
