#!/usr/bin/env bash
# kiln on a real (single-node) Slurm, started by tests/slurm/slurm-cluster.sh; skipped (exit 77,
# with the reason) where Slurm cannot start. Usage: tests/slurm/test-slurm.sh KILN
#   1. kiln submit runs a 2-rank CPU job (srun --mpi=pmix) to completion;
#   2. scancel --signal=TERM: the job checkpoints, requeues itself (exit 75) and, started again,
#      resumes from the checkpoint to the same losses, bit for bit, as a run never stopped;
#   3. a job that reaches its time limit (--time=1, warned by SIGUSR1) does the same, as often as
#      it takes, and the requeue loop ends when the run is finished;
#   4. kiln sweep --array-out, then kiln submit --array: one array task per point; kiln sweep then
#      records each finished point (resuming it at its last step) with the losses of a sweep run
#      point by point.
# A requeued job waits for its BeginTime (Slurm holds it back a while); the test releases it at
# once with scontrol update StartTime=now.
set -uo pipefail
kiln=$(realpath "${1:?the kiln binary}")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/kiln-slurm-XXXXXX)
export KILN_SLURM_PORT=${KILN_SLURM_PORT:-6917}
"$here/slurm-cluster.sh" start "$work/cluster"
status=$?
[ $status = 0 ] || { rm -rf "$work"; exit $status; }
export SLURM_CONF=$work/cluster/slurm.conf
fail=0
cleanup() {
  scancel --full -u root 2>/dev/null
  "$here/slurm-cluster.sh" stop "$work/cluster"
  if [ $fail = 0 ]; then rm -rf "$work"; else echo "kept $work for a look"; fi
}
trap cleanup EXIT
check() {  # check CONDITION-MESSAGE COMMAND...
  local what=$1; shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; fail=1; fi
}

# Waits for job $1 to leave the queue, releasing it when it has waited 3 s for its BeginTime after
# a requeue (released at once, it can be allocated while its previous run is still ending, and
# Slurm then kills it: "Job credential revoked"); fails after $2 seconds.
wait_job() {
  local job=$1 limit=$2 start=$SECONDS held=""
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    local line
    line=$(squeue -h -j "$job" -o "%T %r" 2>/dev/null)
    [ -z "$line" ] && return 0
    case "$line" in
      *BeginTime*)
        if [ -z "$held" ]; then held=$SECONDS
        elif [ $((SECONDS - held)) -ge 3 ]; then scontrol update JobId="$job" StartTime=now 2>/dev/null; held=""; fi ;;
      *) held="" ;;
    esac
    sleep 1
  done
  echo "job $job still queued after $limit s: $(squeue -h -j "$job")"
  return 1
}
losses() { grep -o '"loss":[^,]*' "$1/metrics.jsonl"; }
submit() { "$kiln" submit "$work/tiny.yaml" "$@" --ranks-per-node 2 --cpus-per-task 1 | awk '/Submitted batch job/ {print $4}'; }

cd "$work"
"$kiln" tokenize --input /usr/share/games/fortunes/fortunes --separator % --out "$work/data" >/dev/null || exit 1
cat > "$work/tiny.yaml" <<CONF
model:
  n_layer: 1
  n_head: 2
  n_embd: 16
  context: 32
data:
  train: $work/data/train_*.bin
  val: $work/data/val_*.bin
train:
  micro_batch: 2
  seq_len: 32
  eval_every: 0
  threads: 1
checkpoint:
  every: 1000000
log:
  every: 100
CONF

# 1. A 2-rank job to completion.
job=$(submit train.run_dir="$work/done" train.max_steps=20)
check "kiln submit queued a job ($job)" test -n "$job"
wait_job "$job" 120
check "the job ran 2 ranks over srun --mpi=pmix" grep -q "communicator: mpi, 2 ranks" "$work"/done/slurm-*.out
check "the job trained to the end" test -d "$work/done/checkpoints/step_00000020"

# The reference: the same 2 ranks, never stopped.
steps=1600
OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader -np 2 "$kiln" train "$work/tiny.yaml" \
  train.run_dir="$work/reference" train.max_steps=$steps >/dev/null 2>&1
check "the reference run finished" test "$(losses "$work/reference" | wc -l)" = "$steps"

# 2. scancel --signal=TERM: checkpoint, requeue, resume.
job=$(submit train.run_dir="$work/cancelled" train.max_steps=$steps)
for _ in $(seq 60); do [ -s "$work/cancelled/metrics.jsonl" ] && break; sleep 0.5; done
sleep 2
scancel --signal=TERM "$job"
wait_job "$job" 300
check "SIGTERM stopped the run with a checkpoint" grep -q "stopped by SIGTERM" "$work"/cancelled/slurm-*.out
check "the job requeued itself" grep -q "requeued Slurm job $job" "$work"/cancelled/slurm-*.out
check "the requeued job resumed from the checkpoint" grep -q "train.resume=auto: resumed from" "$work"/cancelled/slurm-*.out
check "its losses equal the uninterrupted run's" cmp -s <(losses "$work/cancelled") <(losses "$work/reference")

# 3. The time limit: warned by SIGUSR1 before it (Slurm sends it up to a minute early), the job
#    checkpoints and requeues until the run is done.
job=$(submit train.run_dir="$work/limited" train.max_steps=$steps --time 1 --signal-seconds 45)
wait_job "$job" 600
check "the time limit's warning stopped the run with a checkpoint" grep -q "stopped by SIGUSR1" "$work"/limited/slurm-*.out
check "the run finished after its requeues" grep -q "^done: " "$work"/limited/slurm-*.out
check "its losses equal the uninterrupted run's" cmp -s <(losses "$work/limited") <(losses "$work/reference")
restarts=$(scontrol show job "$job" 2>/dev/null | grep -o "Restarts=[0-9]*")
echo "time-limited job $job: ${restarts:-Restarts unknown}"

# 4. A sweep as a job array, recorded afterwards; the reference is the same sweep run point by point.
for dir in array serial; do
  cat > "$work/sweep-$dir.yaml" <<SWEEP
base: tiny.yaml
run_dir: $work/sweep-$dir
overrides: ["train.eval_batches=2"]
models:
  - {n_layer: 1, n_embd: 16, n_head: 2}
  - {n_layer: 2, n_embd: 16, n_head: 2}
tokens: [1280]
SWEEP
done
"$kiln" sweep "$work/sweep-array.yaml" --array-out "$work/points.txt" >/dev/null
check "kiln sweep --array-out listed the 2 points" test "$(grep -vc '^#' "$work/points.txt")" = 2
job=$("$kiln" submit "$work/tiny.yaml" train.run_dir="$work/sweep-array" --array "$work/points.txt" --ranks-per-node 1 \
      --cpus-per-task 1 | awk '/Submitted batch job/ {print $4}')
check "kiln submit --array queued the sweep ($job)" test -n "$job"
wait_job "$job" 180
"$kiln" sweep "$work/sweep-array.yaml" > "$work/sweep-array.out" 2>&1
check "kiln sweep recorded both array points" grep -q "2 of 2 points recorded" "$work/sweep-array.out"
check "each point was resumed at its end, not trained again" \
  test "$(grep -l "train.resume=auto: resumed from" "$work"/sweep-array/logs/*.log | wc -l)" = 2
"$kiln" sweep "$work/sweep-serial.yaml" >/dev/null 2>&1
records() { python3 -c 'import json,sys; [print(r["name"], r["final_val_loss"], r["tokens"]) for r in map(json.loads, open(sys.argv[1]))]' "$1"; }
check "the point-by-point sweep recorded both points" test "$(records "$work/sweep-serial/results.jsonl" | wc -l)" = 2
check "the array's records equal a sweep run point by point" \
  cmp -s <(records "$work/sweep-array/results.jsonl") <(records "$work/sweep-serial/results.jsonl")
exit $fail
