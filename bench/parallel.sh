#!/usr/bin/env bash
# Parallel benchmark on this machine: the same global batch trained by one process and by two
# MPI ranks (one thread each) as data parallel, data parallel with ZeRO-1, and tensor parallel.
# Prints tokens/s, the share of step time spent on communication, and bytes per rank per step
# beside the ring-algorithm formulas. Usage: bench/parallel.sh BUILD_DIR [STEPS]
set -euo pipefail
build=${1:-build}
steps=${2:-30}
kiln="$build/kiln"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
data=data/fortunes
[ -f "$data/manifest.json" ] || "$kiln" tokenize --input /usr/share/games/fortunes --separator % --out "$data" >/dev/null
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader)
# A 6-layer, 384-wide model (10.9M parameters), 16 sequences of 256 bytes per step.
layers=6 width=384 seq=256 batch=16
common=(configs/quickstart.yaml "model.n_layer=$layers" model.n_head=6 "model.n_embd=$width"
        "model.context=$seq" "train.seq_len=$seq" "train.max_steps=$steps" train.eval_every=0
        checkpoint.every=0 log.every=1000 train.threads=1 --overwrite
        data.corpus= "data.train=$data/train_*.bin" "data.val=$data/val_*.bin")
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$kiln" train "${common[@]}" "train.micro_batch=$batch" "train.run_dir=$out/one" | tail -1
export OMP_NUM_THREADS=1
"${mpi[@]}" -np 2 "$kiln" train "${common[@]}" "train.micro_batch=$((batch / 2))" "train.run_dir=$out/dp" | tail -1
"${mpi[@]}" -np 2 "$kiln" train "${common[@]}" "train.micro_batch=$((batch / 2))" parallel.zero=1 "train.run_dir=$out/zero" | tail -1
"${mpi[@]}" -np 2 "$kiln" train "${common[@]}" "train.micro_batch=$batch" parallel.tp=2 "train.run_dir=$out/tp" | tail -1
params=$("$kiln" train "${common[@]}" train.max_steps=1 "train.run_dir=$out/count" | grep -o '[0-9]* parameters' | cut -d' ' -f1)
python3 bench/parallel.py "$params" "$layers" "$((batch * seq))" "$width" \
  "one process, 1 thread" "$out/one/metrics.jsonl" 1 none \
  "dp=2" "$out/dp/metrics.jsonl" 2 dp \
  "dp=2, ZeRO-1" "$out/zero/metrics.jsonl" 2 dp \
  "tp=2" "$out/tp/metrics.jsonl" 2 tp
