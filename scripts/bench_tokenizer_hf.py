#!/usr/bin/env python3
"""Hugging Face tokenizers (the Rust library) on the same strings as
bench-tokenizer: encode each string of a JSON-lines file, one thread, without
special tokens, until 4 MB are done; prints MB/s, calling encode per string
and encode_batch per pass. For the ratio in the
README, run both on one machine:

    TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1 \\
        python3 scripts/bench_tokenizer_hf.py DIR/tokenizer.json tests/tokenizer/corpus.jsonl
"""
import json
import sys
import time

import tokenizers


def main():
    tok = tokenizers.Tokenizer.from_file(sys.argv[1])
    strings = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
    size = sum(len(s.encode()) for s in strings)
    target = 4e6
    done = tokens = 0
    t0 = time.perf_counter()
    while done < target:
        for s in strings:
            tokens += len(tok.encode(s, add_special_tokens=False).ids)
        done += size
    dt = time.perf_counter() - t0
    print("hf tokenizers %s: encode %.1f MB/s, %.2f million tokens/s (%s)" %
          (tokenizers.__version__, done / dt / 1e6, tokens / dt / 1e6, sys.argv[1]))
    # The same strings as one batch a pass, which leaves Python's per-call
    # cost out (still one thread when RAYON_NUM_THREADS=1).
    done = tokens = 0
    t0 = time.perf_counter()
    while done < target:
        tokens += sum(len(e.ids) for e in tok.encode_batch(strings, add_special_tokens=False))
        done += size
    dt = time.perf_counter() - t0
    print("hf tokenizers %s: encode_batch %.1f MB/s, %.2f million tokens/s" %
          (tokenizers.__version__, done / dt / 1e6, tokens / dt / 1e6))


if __name__ == "__main__":
    main()
