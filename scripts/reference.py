#!/usr/bin/env python3
"""Reference outputs for ember's engine tests, computed with Hugging Face
transformers from a model directory made by `make-model`.

Runs on a machine with torch and transformers (the GPU machine; the CPU is
used when no GPU is visible). Loads the bf16 weights as float32, runs eager
attention with TF32 off, and writes, for prompts of several lengths given as
token ids: the top-50 logits at several positions, and the greedy
continuation with the top-1 minus top-2 margin at each step.

    python3 scripts/reference.py --model build/models/tiny-qwen2 \
        --name tiny-qwen2 --out tests/fixtures/tiny-qwen2/reference.json
"""
import argparse
import hashlib
import json
import os
import platform
import random
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

PROMPT_LENGTHS = [1, 7, 64, 320]
TOP = 50
NEW_TOKENS = 48


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(model_dir, device):
    kw = dict(attn_implementation="eager")
    try:
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw)
    except TypeError:
        m = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, **kw)
    return m.to(device).eval()


@torch.no_grad()
def logits_of(model, ids, device):
    x = torch.tensor([ids], dtype=torch.long, device=device)
    return model(input_ids=x, use_cache=False).logits[0].float().cpu()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load(args.model, device)
    cfg = model.config
    vocab = cfg.vocab_size
    bos = cfg.bos_token_id

    rng = random.Random(args.seed)
    prompts = []
    min_margin = float("inf")
    max_cpu_diff = 0.0
    cpu_model = load(args.model, "cpu") if device != "cpu" else None
    for n in PROMPT_LENGTHS:
        # Ordinary tokens of the vocabulary, after the BOS token when there
        # are several: ids past 100000 are rare words and special tokens.
        ids = [rng.randrange(0, min(vocab, 100000)) for _ in range(n)]
        if n > 1 and bos is not None:
            ids[0] = bos
        full = logits_of(model, ids, device)
        if cpu_model is not None:
            ref = logits_of(cpu_model, ids, "cpu")
            max_cpu_diff = max(max_cpu_diff, (full - ref).abs().max().item())
        positions = sorted({0, n // 2, n - 1})
        tops = []
        for p in positions:
            v, i = torch.topk(full[p], TOP)
            tops.append({"pos": p, "top": [[int(a), float(b)] for a, b in zip(i, v)]})
        seq = list(ids)
        greedy, margins = [], []
        for _ in range(NEW_TOKENS):
            last = logits_of(model, seq, device)[-1]
            v, i = torch.topk(last, 2)
            greedy.append(int(i[0]))
            margins.append(float(v[0] - v[1]))
            seq.append(int(i[0]))
        min_margin = min(min_margin, min(margins))
        prompts.append({"ids": ids, "logits": tops, "greedy": greedy, "greedy_margins": margins})

    files = sorted(f for f in os.listdir(args.model)
                   if f.endswith(".safetensors") or f == "config.json")
    out = {
        "model": args.name,
        "made_by": "scripts/reference.sh, which runs: python3 scripts/reference.py "
                   "--model build/models/%s --name %s --out tests/fixtures/%s/reference.json "
                   "(prompt seed %d)" % (args.name, args.name, args.name, args.seed),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "precision": "float32 from bf16 weights, eager attention, TF32 off",
        "max_abs_diff_gpu_vs_cpu": max_cpu_diff,
        "min_greedy_margin": min_margin,
        "files_sha256": {f: sha256_of(os.path.join(args.model, f)) for f in files},
        "prompts": prompts,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("%s: min greedy margin %.4f, GPU vs CPU max |diff| %.2e, %s" %
          (args.name, min_margin, max_cpu_diff, out["device"]))
    return 0 if min_margin >= 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
