// The reference tokenization for ember's tests: @lenml/tokenizers (a port of
// Hugging Face's tokenizers) on a model directory's tokenizer files.
//   node tests/tokenizer/encode.mjs MODEL_DIR CORPUS.jsonl
// prints, for each JSON string of the corpus, the JSON list of its ids
// (without the post-processor's special tokens).
import { TokenizerLoader } from "@lenml/tokenizers";
import fs from "fs";

const [dir, corpus] = process.argv.slice(2);
const tok = TokenizerLoader.fromPreTrained({
  tokenizerJSON: JSON.parse(fs.readFileSync(dir + "/tokenizer.json", "utf8")),
  tokenizerConfig: JSON.parse(fs.readFileSync(dir + "/tokenizer_config.json", "utf8")),
});
const out = [];
for (const line of fs.readFileSync(corpus, "utf8").split("\n")) {
  if (line === "") continue;
  out.push(JSON.stringify(tok.encode(JSON.parse(line), { add_special_tokens: false })));
}
process.stdout.write(out.join("\n") + "\n");
