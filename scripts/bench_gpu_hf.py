"""The same figures as bench-gpu for Hugging Face transformers (bf16,
generate with greedy decoding, the default attention) on the same model
directory, as one JSON object:

    python3 scripts/bench_gpu_hf.py MODEL_DIR [--decode 128] [--batches 8,32,64,128]
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--batches", default="8,32,64,128")
    a = ap.parse_args()
    m = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).cuda().eval()
    gen = torch.Generator(device="cuda").manual_seed(1)

    def ids(n, p):
        return torch.randint(100, 30000, (n, p), device="cuda", generator=gen)

    @torch.no_grad()
    def decode(n, steps):
        x = ids(n, 16)
        kw = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(x))
        m.generate(x, max_new_tokens=4, min_new_tokens=4, **kw)
        torch.cuda.synchronize()
        t = time.perf_counter()
        m.generate(x, max_new_tokens=steps, min_new_tokens=steps, **kw)
        torch.cuda.synchronize()
        return n * steps / (time.perf_counter() - t)

    @torch.no_grad()
    def prefill(p):
        x = ids(1, p)
        best = 1e30
        for r in range(4):
            torch.cuda.synchronize()
            t = time.perf_counter()
            m(x, use_cache=True, logits_to_keep=1)
            torch.cuda.synchronize()
            if r:
                best = min(best, time.perf_counter() - t)
        return p / best

    out = {"decode_batch1_tps": round(decode(1, a.decode), 1), "decode_batched_tps": {}}
    for n in [int(s) for s in a.batches.split(",")]:
        out["decode_batched_tps"][str(n)] = round(decode(n, a.decode // 2), 1)
    out["prefill_512_tps"] = round(prefill(512), 1)
    out["prefill_2048_tps"] = round(prefill(2048), 1)
    print(json.dumps(out))


main()
