#!/usr/bin/env bash
# The README's main job: pretrain the quickstart model on real English text (Debian's fortunes,
# tokenized by kiln train itself into data/cache/) on the CPU, then sample from it.
# Usage: scripts/demo.sh KILN_BINARY CORPUS RUN_DIR [KEY=VALUE...] (extra config overrides, e.g.
# data.tokenizer=gpt2)
set -euo pipefail
kiln=${1:-build/kiln}
corpus=${2:-/usr/share/games/fortunes}
run_dir=${3:-runs/quickstart}
shift $(( $# < 3 ? $# : 3 ))

echo "== training configs/quickstart.yaml on $corpus (a fresh run in $run_dir)"
rm -rf "$run_dir"
"$kiln" train configs/quickstart.yaml "train.run_dir=$run_dir" "data.corpus=$corpus" "$@"

python3 - "$run_dir/metrics.jsonl" "$run_dir/config.yaml" <<'PY'
import json, math, re, sys
records = [json.loads(line) for line in open(sys.argv[1])]
val = [r["val_loss"] for r in records if "val_loss" in r]
first = next(r["loss"] for r in records if "loss" in r)
gpt2 = re.search(r"^\s*tokenizer:\s*\"?gpt2", open(sys.argv[2]).read(), re.M)
vocab = 50257 if gpt2 else 257
print(f"== loss: first step {first:.3f}, uniform ln({vocab}) = {math.log(vocab):.3f}, "
      f"final validation {val[-1]:.3f}")
PY

echo "== sampling from $run_dir"
for prompt in "The meaning of life is" "Q: Why did the chicken cross the road?"; do
  "$kiln" sample --checkpoint "$run_dir" --prompt "$prompt" --max-tokens 200 --temperature 0.8 \
    --top-k 40 --seed 7
  echo "--"
done
