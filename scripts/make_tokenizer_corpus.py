#!/usr/bin/env python3
"""Writes tests/tokenizer/corpus.jsonl: the strings on which ember's tokenizer
must give the same ids as the reference. Deterministic (fixed seed); run it
again only to change the corpus:  python3 scripts/make_tokenizer_corpus.py"""
import json
import random
import unicodedata

rng = random.Random(20261123)

PROSE = [
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times.",
    "Operators judge a server by what it does at three in the morning.",
    "Don't panic; we'll restart it, and you'd never know it'd gone.",
    "Mr. O'Neil's 3rd-floor office isn't where the I.T. team's printers are.",
    "She said: \"I've seen it,\" then left — quietly — at 5:45 p.m.",
    "Hello, world! Hello... world? HELLO WORLD!!!",
    "e.g. i.e. etc. vs. a.k.a. U.S.A. Ph.D.",
    "A sentence with  double spaces,   triple spaces, and a tab\there.",
    "Costs rose 12.5% to $1,234,567.89 (up from €987.65) in Q3 2025.",
]
CODE = [
    "int main(int argc, char **argv)\n{\n\tprintf(\"%d\\n\", argc);\n\treturn 0;\n}\n",
    "static inline size_t min(size_t a, size_t b) { return a < b ? a : b; }",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "    if x is not None and len(x) > 0:\n        return [y ** 2 for y in x if y % 2 == 0]",
    "{\"model\": \"ember\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"stream\": true}",
    "[1, 2.5, -3e10, null, true, false, {\"a\": {\"b\": []}}]",
    "#!/bin/sh\nset -eu\nfor f in *.txt; do wc -l \"$f\" | awk '{print $1}'; done 2>/dev/null\n",
    "curl -sS -X POST http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' -d @req.json",
    "SELECT id, name FROM users WHERE created_at >= '2024-01-01' ORDER BY id DESC LIMIT 10;",
    "<div class=\"x\"><a href=\"https://example.com/?q=1&r=2\">link</a></div>",
    "fn main() { let v: Vec<u8> = (0..10).map(|i| i * 2).collect(); println!(\"{:?}\", v); }",
    "x += 1; y -= 2; z *= 3; w /= 4; a <<= 1; b >>= 2; c &&= d; e ||= f;",
]
CJK = [
    "我们的服务器在没有请求的时候不占用任何资源。",
    "深度求索发布了新的语言模型，性能大幅提升。",
    "今日はいい天気ですね。カタカナとひらがなと漢字が混ざっています。",
    "東京都渋谷区で新しいサービスを開始しました。",
    "コンピューター・プログラミング・ラーニング",
    "안녕하세요, 반갑습니다. 오늘 날씨가 좋네요.",
    "مرحبا بالعالم، هذه جملة باللغة العربية.",
    "नमस्ते दुनिया, यह हिंदी में एक वाक्य है।",
    "Привет, мир! Это предложение на русском языке.",
    "Γειά σου κόσμε· αυτή είναι μια ελληνική πρόταση.",
    "שלום עולם, זה משפט בעברית.",
    "สวัสดีชาวโลก นี่คือประโยคภาษาไทย",
]
EMOJI = [
    "👋🌍", "👍🏻👍🏼👍🏽👍🏾👍🏿", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🧑🏽‍💻 coding",
    "❤️‍🔥", "🇯🇵🇺🇸🇩🇪", "1️⃣2️⃣3️⃣", "😀😃😄😁😆😅😂🤣", "🫶🏾 and 🫠",
]
COMBINING = [
    "café", "naïve", "résumé", "Tiếng Việt có dấu", "Ångström", "ñandú", "Zürich",
    "ḱṷṓn", "a\u0301e\u0301i\u0301", "q\u0307\u0323", "\u1e9b\u0323",
]
SPECIALS = [
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>",
    "<|fim_prefix|>", "<tool_call>",
]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", " \n ", "\u00a0", "\u3000", "\u2003"]


def word():
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 12)))


def mix():
    parts = []
    for _ in range(rng.randint(1, 6)):
        pool = rng.choice([PROSE, CODE, CJK, EMOJI, COMBINING, SPECIALS, SPACES])
        parts.append(rng.choice(pool))
    return rng.choice(["", " ", "\n"]).join(parts)


out = []
out += PROSE + CODE + CJK + EMOJI + SPECIALS + SPACES
for s in COMBINING:
    out += [s, unicodedata.normalize("NFC", s), unicodedata.normalize("NFD", s)]
for n in range(1, 21):
    for _ in range(4):
        d = str(rng.randint(10 ** (n - 1) if n > 1 else 0, 10 ** n - 1))
        out += [d, "x" + d + "y", " " + d, d + ".5", "-" + d]
for sp in SPACES:
    for s in rng.sample(PROSE + CJK, 4):
        out += [sp + s, s + sp, sp + s + sp, s.replace(" ", sp)]
for t in SPECIALS:
    for s in rng.sample(PROSE + CJK + CODE, 3):
        out += [t + s, s + t, s[:10] + t + s[10:], t + t, " " + t + " "]
out += ["a" * 1000, "ab" * 2000, "supercalifragilisticexpialidocious" * 30, "字" * 3000,
        "😀" * 500, " " * 1000, "\n" * 300, "1234567890" * 100, "-" * 2000,
        "".join(word() for _ in range(300)), "x" * 10000]
while len(out) < 2400:
    r = rng.random()
    if r < 0.4:
        out.append(mix())
    elif r < 0.6:
        out.append(" ".join(word() for _ in range(rng.randint(1, 20))))
    elif r < 0.8:
        s = rng.choice(PROSE + CJK + CODE)
        i = rng.randint(0, len(s))
        out.append(s[:i] + rng.choice(SPACES + EMOJI + SPECIALS + COMBINING) + s[i:])
    else:
        out.append("".join(chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x2fff),
                                           rng.randint(0x3000, 0x9fff), rng.randint(0xac00, 0xd7a3),
                                           rng.randint(0x1f300, 0x1faff)]))
                           for _ in range(rng.randint(1, 40))))
with open("tests/tokenizer/corpus.jsonl", "w", encoding="utf-8") as f:
    for s in out:
        f.write(json.dumps(s, ensure_ascii=False) + "\n")
print(len(out), "strings")
