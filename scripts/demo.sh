#!/usr/bin/env bash
# The README's main job: tokenize real English text (Debian's fortunes), pretrain the quickstart
# model on the CPU, then sample from it. Usage: scripts/demo.sh KILN_BINARY CORPUS RUN_DIR
set -euo pipefail
kiln=${1:-build/kiln}
corpus=${2:-/usr/share/games/fortunes}
run_dir=${3:-runs/quickstart}
data=data/fortunes

if [ ! -f "$data/manifest.json" ]; then
  echo "== tokenizing $corpus -> $data"
  "$kiln" tokenize --input "$corpus" --separator % --out "$data"
fi

echo "== training configs/quickstart.yaml (a fresh run in $run_dir)"
rm -rf "$run_dir"
"$kiln" train configs/quickstart.yaml "train.run_dir=$run_dir" "data.train=$data/train_*.bin" \
  "data.val=$data/val_*.bin"

python3 - "$run_dir/metrics.jsonl" <<'PY'
import json, math, sys
records = [json.loads(line) for line in open(sys.argv[1])]
val = [r["val_loss"] for r in records if "val_loss" in r]
first = next(r["loss"] for r in records if "loss" in r)
print(f"== loss: first step {first:.3f}, uniform ln(257) = {math.log(257):.3f}, "
      f"final validation {val[-1]:.3f}")
PY

echo "== sampling from $run_dir"
for prompt in "The meaning of life is" "Q: Why did the chicken cross the road?"; do
  "$kiln" sample --checkpoint "$run_dir" --prompt "$prompt" --max-tokens 200 --temperature 0.8 \
    --top-k 40 --seed 7
  echo "--"
done
