#!/usr/bin/env bash
# kiln vs PyTorch training speed and loss, from the same initial weights on the same batches.
# Four shapes (GPT-2 and LLaMA, small and 124M-sized), 10 AdamW steps each, each trained by
# kiln in fp32 and with bf16 matmuls, then by the independent PyTorch reference
# (tests/reference/gpt_torch.py, llama_torch.py) in fp32; prints one table (see
# docs/performance.md for the measured one and how to read it). About 8 minutes on 2 cores.
#
#   bench/train_vs_pytorch.sh BUILD_DIR [OUT_DIR]      (OUT_DIR default: BUILD_DIR/bench-runs)
#
# Needs BUILD_DIR/bench/train_step (cmake --build BUILD_DIR) and Debian's python3-torch for
# /usr/bin/python3 with an optimised BLAS (libopenblas0-pthread; KILN_WITH_TORCH=1
# scripts/install-deps.sh installs both). Exits 1 when a row misses its target (speed ratio
# >= 2, loss at step 10 within 1e-3 of PyTorch's; 5e-2 for bf16). Run it on an otherwise idle
# machine: both sides use both cores, so any other load skews the ratio.
#
# The PyTorch reference runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (some machines
# set them as a guard for old OpenBLAS builds; they slow a current one); the script prints the
# values they had. Before kiln trains, `train_vs_pytorch.py --check` prints which BLAS PyTorch
# calls (library, OpenBLAS kernel, threads) and exits 2 when that is the reference (netlib) BLAS
# or unknown: a speed-up against it would mean nothing.
set -euo pipefail

build=${1:?usage: bench/train_vs_pytorch.sh BUILD_DIR [OUT_DIR]}
out=${2:-$build/bench-runs}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${KILN_PYTHON:-/usr/bin/python3}
train_step=$build/bench/train_step
steps=10
threads=2

[[ -x $train_step ]] || { echo "no $train_step; build first: cmake --build $build" >&2; exit 2; }
"$python" -c "import torch" 2>/dev/null ||
  { echo "$python cannot import torch; install Debian's python3-torch (KILN_WITH_TORCH=1 scripts/install-deps.sh)" >&2; exit 2; }

# The PyTorch reference runs without these (see above); say what they were.
reference_env=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
was=()
for v in OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; do
  if [[ -v $v ]]; then was+=("$v=${!v}"); else was+=("$v unset"); fi
done
echo "PyTorch reference runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (they were: ${was[0]}, ${was[1]})"
"${reference_env[@]}" "$python" "$here/train_vs_pytorch.py" --check --threads $threads || exit

# name: train_step arguments
shapes=(
  "small:--n_layer 4 --n_head 4 --n_embd 256 --vocab 50304 --context 256 --seq 256 --batch 8"
  "gpt2-124m:--n_layer 12 --n_head 12 --n_embd 768 --vocab 50257 --context 1024 --seq 256 --batch 4"
  "llama-small:--arch llama --n_layer 4 --n_head 4 --n_kv_head 2 --n_embd 256 --vocab 50304 --context 256 --seq 256 --batch 8"
  "llama-124m:--arch llama --n_layer 12 --n_head 12 --n_kv_head 4 --n_embd 768 --vocab 50257 --context 1024 --seq 256 --batch 4"
)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average $(cut -d' ' -f1-3 /proc/loadavg)"
dirs=()
for entry in "${shapes[@]}"; do
  name=${entry%%:*}
  args=${entry#*:}
  for precision in f32 bf16; do
    dir=$out/$name-$precision
    flag=""
    [[ $precision == bf16 ]] && flag=--bf16
    echo "== kiln $name $precision"
    # shellcheck disable=SC2086
    "$train_step" $args --steps $steps --threads $threads --out "$dir" $flag
    dirs+=("$dir")
  done
done
echo "== PyTorch (load average $(cut -d' ' -f1-3 /proc/loadavg))"
"${reference_env[@]}" "$python" "$here/train_vs_pytorch.py" --threads $threads --json "$out/table.json" "${dirs[@]}"
