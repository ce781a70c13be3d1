#!/usr/bin/env bash
# Data-parallel benchmark on this machine: the same global batch trained by one process and by
# two MPI ranks (one thread each), plain and with ZeRO-1; prints tokens/s, the share of step
# time spent waiting on gradient communication, and bytes per rank per step beside the ring
# all-reduce formula. Usage: bench/data_parallel.sh BUILD_DIR [STEPS]
set -euo pipefail
build=${1:-build}
steps=${2:-40}
kiln="$build/kiln"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
data=data/fortunes
[ -f "$data/manifest.json" ] || "$kiln" tokenize --input /usr/share/games/fortunes --separator % --out "$data" >/dev/null
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader)
# A 6-layer, 384-wide model (10.7M parameters), 16 sequences of 256 bytes per step.
common=(configs/quickstart.yaml model.n_layer=6 model.n_head=6 model.n_embd=384 model.context=256
        train.seq_len=256 "train.max_steps=$steps" train.eval_every=0 checkpoint.every=0 log.every=1000
        "data.train=$data/train_*.bin" "data.val=$data/val_*.bin")
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$kiln" train "${common[@]}" train.micro_batch=16 train.threads=1 "train.run_dir=$out/dp1" | tail -1
OMP_NUM_THREADS=1 "${mpi[@]}" -np 2 "$kiln" train "${common[@]}" train.micro_batch=8 train.threads=1 \
  "train.run_dir=$out/dp2" | tail -1
OMP_NUM_THREADS=1 "${mpi[@]}" -np 2 "$kiln" train "${common[@]}" train.micro_batch=8 train.threads=1 \
  parallel.zero=1 "train.run_dir=$out/dp2z" | tail -1
params=$("$kiln" train "${common[@]}" train.max_steps=1 "train.run_dir=$out/count" | grep -o '[0-9]* parameters' | cut -d' ' -f1)
python3 bench/data_parallel.py "$params" "dp=1, 1 thread" "$out/dp1/metrics.jsonl" 1 \
  "dp=2, 1 thread/rank" "$out/dp2/metrics.jsonl" 2 "dp=2 + ZeRO-1" "$out/dp2z/metrics.jsonl" 2
