#!/usr/bin/env bash
# Runs each libFuzzer target (fuzz/*.cpp) for a bounded time against kiln's readers: token
# shards, safetensors files, JSONL instruction records, experiment configs and the GPT-2 BPE.
# The readers are compiled with clang and -fsanitize=fuzzer,address,undefined, so a crash, a
# memory error or undefined behaviour on any input fails the run. Usage:
#   scripts/fuzz.sh [SECONDS_PER_TARGET=30] [OUT_DIR=build-fuzz]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
out=${2:-build-fuzz}
# What the fuzz build needs beyond kiln's own packages (scripts/install-deps.sh: pkg-config,
# libpcre2-dev, libyaml-cpp-dev, nlohmann-json3-dev): clang++, the fuzzer and sanitizer runtime
# (libclang_rt.fuzzer, asan, ubsan) and LLVM's OpenMP (omp.h and libomp for clang's -fopenmp).
declare -A needed=([clang]="clang++" [libclang-rt-14-dev]="clang's fuzzer/sanitizer runtime"
                   [libomp-dev]="-fopenmp with clang")
missing=()
for p in "${!needed[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "fuzz.sh: installing ${missing[*]}"
  $sudo apt-get update -qq || { echo "fuzz.sh: apt-get update failed" >&2; exit 1; }
  for p in "${missing[@]}"; do
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null ||
      { echo "fuzz.sh: could not install the Debian package $p (${needed[$p]})" >&2; exit 1; }
  done
fi
./scripts/install-deps.sh || { echo "fuzz.sh: scripts/install-deps.sh failed (kiln's Debian packages)" >&2; exit 1; }
mkdir -p "$out"
flags=(-std=c++20 -O1 -g -fopenmp -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I.
       $(pkg-config --cflags libpcre2-8))
libs=(-lyaml-cpp $(pkg-config --libs libpcre2-8))

build() {  # name, sources...
  local name=$1; shift
  clang++ "${flags[@]}" "fuzz/$name.cpp" "$@" core/tensor.cpp kernels/no_cuda.cpp "${libs[@]}" -o "$out/$name"
}
build fuzz_shard core/data/shard.cpp
build fuzz_safetensors core/checkpoint/safetensors.cpp core/checkpoint/atomic_file.cpp
build fuzz_jsonl core/data/jsonl.cpp core/data/instruct.cpp core/data/tokenizer.cpp core/data/gpt2_bpe.cpp
build fuzz_config core/config.cpp core/config_schema.cpp core/model/attention_layout.cpp
build fuzz_bpe core/data/tokenizer.cpp core/data/gpt2_bpe.cpp
export KILN_GPT2_BPE_DIR=${KILN_GPT2_BPE_DIR:-$PWD/../shared/data/gpt2-bpe}
status=0
for target in fuzz_shard fuzz_safetensors fuzz_jsonl fuzz_config fuzz_bpe; do
  mkdir -p "$out/corpus/$target"
  echo "== $target for ${seconds}s"
  if ! "$out/$target" -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 \
      -artifact_prefix="$out/$target-" "$out/corpus/$target" 2>"$out/$target.log"; then
    echo "$target FAILED: see $out/$target.log and the crash input $out/$target-*"
    status=1
  fi
  grep -E "^(#[0-9]+|Done)" "$out/$target.log" | tail -1
done
exit $status
