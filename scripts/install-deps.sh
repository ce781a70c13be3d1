#!/usr/bin/env bash
# Installs kiln's Debian packages. Idempotent: does nothing when everything is present.
# KILN_WITH_TORCH=1 also installs PyTorch (Debian's python3-torch), used by the parity
# fixture generator and the benchmark's reference, not by the build or the tests.
# KILN_WITH_PLOT=1 also installs matplotlib (python3-matplotlib), for scripts/plot-eval.py.
#
# Packages are installed without their Recommends, so everything kiln needs is named here:
# ocl-icd-opencl-dev because libdnnl-dev's CMake package requires OpenCL (Debian only recommends
# it); libopenblas0-pthread because python3-torch otherwise calls the reference BLAS through
# Debian's alternatives and trains about 15x slower. slurm-wlm and munge: the tests start a
# single-node Slurm (tests/slurm) to test kiln submit, preemption and requeue. liblbfgs-dev:
# the L-BFGS of the scaling-law fit (kiln scaling fit).
set -euo pipefail
pkgs=(cmake g++ make pkg-config libyaml-cpp-dev libdnnl-dev ocl-icd-opencl-dev libpcre2-dev
      nlohmann-json3-dev libcli11-dev libgtest-dev libbenchmark-dev fortunes openmpi-bin
      libopenmpi-dev python3 slurm-wlm munge liblbfgs-dev)
if [ "${KILN_WITH_TORCH:-0}" = 1 ]; then pkgs+=(python3-torch python3-numpy libopenblas0-pthread); fi
if [ "${KILN_WITH_PLOT:-0}" = 1 ]; then pkgs+=(python3-matplotlib); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "kiln: installing ${missing[*]}"
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
# env, not export: sudo resets the environment of the command it runs.
apt=($sudo env DEBIAN_FRONTEND=noninteractive apt-get)
"${apt[@]}" update -qq
if ! "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  echo "kiln: apt-get could not install ${missing[*]} (see its message above); install them by hand" >&2
  exit 1
fi
