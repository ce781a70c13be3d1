"""PyTorch's half of bench/train_vs_pytorch.sh, and the comparison table.

For each DIR written by `train_step` (init.safetensors, batches.bin, kiln.json) this trains the
independent PyTorch GPT of tests/reference/gpt_torch.py (or, for `--arch llama`, the LLaMA of
tests/reference/llama_torch.py) from the same initial weights on the same
batches with the same optimizer (AdamW, decay on matmul weights only, global-norm clipping as
kiln does it, constant lr), times every step, writes DIR/torch.json and prints one table row:

    tokens/s kiln and torch (median of steps 2..N), their ratio, kiln's MFU, the loss at the
    last step (step 10 in the standard run) of both and |diff|, PASS/FAIL against the targets:
    ratio >= 2 and |loss diff| <= 1e-3 (5e-2 for kiln's bf16 matmuls against torch's fp32).

Directories that share init weights, batches and settings (the fp32 and bf16 run of one shape)
share one PyTorch run. PyTorch uses 2 threads (torch.set_num_threads). Exit status 1 when a row
fails its targets.

Before training it checks which BLAS PyTorch's fp32 matmuls really call (blas_report): Debian's
python3-torch calls whatever Debian's alternatives point libblas.so.3 at, and without
libopenblas0-pthread that is the reference (netlib) BLAS of libblas3, about 15x slower, against
which a speed-up means nothing. It prints one line (torch version and threads, the BLAS file,
for OpenBLAS its build config, the kernel it picked for this CPU and its threads, and the
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE it ran with), stores the same facts under "reference" in
the --json file, and exits with status 2, naming the fix, when the BLAS is the reference BLAS
or cannot be identified. --check does only that (bench/train_vs_pytorch.sh runs it first).

    /usr/bin/python3 bench/train_vs_pytorch.py [--threads N] [--json FILE] DIR [DIR ...]
    /usr/bin/python3 bench/train_vs_pytorch.py --check [--threads N]
"""

import argparse
import ctypes
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
import gpt_torch  # noqa: E402
import llama_torch  # noqa: E402

SPEED_TARGET = 2.0
LOSS_TARGET = {"f32": 1e-3, "bf16": 5e-2}
# Set on some machines as a guard for old OpenBLAS builds; they slow a current one.
OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
BLAS_FIX = ("install OpenBLAS: apt-get install libopenblas0-pthread (or KILN_WITH_TORCH=1 "
            "scripts/install-deps.sh); if it is installed, point Debian's alternative at it: "
            "update-alternatives --config libblas.so.3-x86_64-linux-gnu")


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def sgemm_provider():
    """The shared library that gives libtorch_cpu its sgemm_ (the fp32 matmul PyTorch calls), as
    the dynamic linker loaded it, or None (a torch with its BLAS linked in, like pip's MKL)."""
    libtorch = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        sgemm = ctypes.CDLL(libtorch, mode=os.RTLD_NOLOAD | os.RTLD_LAZY).sgemm_
    except (OSError, AttributeError):
        return None
    info = _DlInfo()
    if not ctypes.CDLL(None).dladdr(ctypes.cast(sgemm, ctypes.c_void_p), ctypes.byref(info)):
        return None
    return info.dli_fname.decode()


def c_string(lib, name):
    """The string the library's function `name` (no arguments) returns."""
    function = getattr(lib, name)
    function.restype = ctypes.c_char_p
    return function().decode().strip()


def identify_blas(path):
    """Which BLAS the loaded library at `path` is, from the functions it exports."""
    lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    if hasattr(lib, "openblas_get_config"):
        info = {"kind": "OpenBLAS", "config": c_string(lib, "openblas_get_config"),
                "core": c_string(lib, "openblas_get_corename")}
        if hasattr(lib, "openblas_get_num_threads"):
            info["threads"] = lib.openblas_get_num_threads()
        if hasattr(lib, "openblas_get_parallel"):
            info["threading"] = {0: "sequential", 1: "pthreads", 2: "OpenMP"}.get(
                lib.openblas_get_parallel(), "unknown")
        return info
    if hasattr(lib, "bli_info_get_version_str"):
        return {"kind": "BLIS", "config": c_string(lib, "bli_info_get_version_str")}
    if hasattr(lib, "MKL_Get_Version_String"):
        return {"kind": "MKL"}
    if os.path.basename(os.path.dirname(path)) == "blas" and hasattr(lib, "sgemm_"):
        return {"kind": "reference"}  # Debian's libblas3: .../x86_64-linux-gnu/blas/libblas.so.3
    return {"kind": "unknown"}


def debian_package(path):
    """The Debian package that installed `path`, or None."""
    try:
        out = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.split(":")[0] if out.returncode == 0 else None


def torch_build_setting(name):
    """A NAME=value build setting of torch.__config__.show() (BLAS_INFO is "generic" for
    Debian's torch, which takes whatever libblas.so.3 is), or None."""
    _, found, rest = torch.__config__.show().partition(f" {name}=")
    return rest.split(",")[0].strip() if found else None


def blas_report():
    """What PyTorch's fp32 matmuls run on, in this process and its environment: torch's version
    and threads, the BLAS library (as loaded and resolved), what identify_blas says of it, and
    the OPENBLAS_* variables that change OpenBLAS's choice of kernel. Call torch.set_num_threads
    first for the thread counts of the run."""
    (torch.ones(64, 64) @ torch.ones(64, 64)).sum()  # the BLAS is loaded and started
    report = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "torch_blas_info": torch_build_setting("BLAS_INFO"),
              "mkldnn": torch.backends.mkldnn.is_available(),
              "env": {name: os.environ.get(name) for name in OPENBLAS_ENV}}
    loaded = sgemm_provider()
    if loaded is None:
        kind = "MKL" if torch.backends.mkl.is_available() else "unknown"
        report["blas"] = {"kind": kind, "file": "linked into torch" if kind == "MKL" else None}
    else:
        file = os.path.realpath(loaded)
        report["blas"] = dict(identify_blas(file), loaded_as=loaded, file=file,
                              package=debian_package(file))
    return report


def describe_reference(report):
    """One line for the report of blas_report."""
    blas = report["blas"]
    if blas["kind"] == "OpenBLAS":
        what = f"{blas['config']}, core {blas['core']}"
        if "threads" in blas:
            what += f", {blas['threads']} threads ({blas.get('threading', 'threading unknown')})"
    elif blas["kind"] == "reference":
        what = f"reference BLAS, netlib, package {blas.get('package') or 'libblas3'}"
    else:
        what = " ".join(filter(None, (blas["kind"], blas.get("config"))))
    env = ", ".join(f"{k}={v}" if v is not None else f"{k} unset"
                    for k, v in report["env"].items())
    return (f"PyTorch reference: torch {report['torch']}, {report['torch_threads']} threads, "
            f"BLAS {blas['file'] or 'not found'} ({what}); {env}")


def blas_problem(report):
    """Why a speed-up against this reference would mean nothing, or None."""
    kind = report["blas"]["kind"]
    if kind == "reference":
        return ("PyTorch calls the reference (netlib) BLAS, about 15x slower than OpenBLAS, so a "
                "speed-up against it means nothing. Fix: " + BLAS_FIX)
    if kind == "unknown":
        return ("cannot tell which BLAS PyTorch calls (none of OpenBLAS, BLIS, MKL), so a "
                "speed-up against it would mean nothing. Fix: " + BLAS_FIX)
    return None


def run_key(folder, kiln):
    """What determines the PyTorch run: the initial weights, the batches and the settings."""
    digest = hashlib.sha256()
    for name in ("init.safetensors", "batches.bin"):
        with open(os.path.join(folder, name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
    settings = {k: kiln[k] for k in ("model", "seq", "batch", "steps", "optim")}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def reference_model(folder, m):
    """The PyTorch reference of kiln.json's model (gpt_torch's GPT, or llama_torch's LLaMA for
    --arch llama) from the run's init.safetensors."""
    init = os.path.join(folder, "init.safetensors")
    if m.get("arch", "gpt2") == "llama":
        config = llama_torch.LlamaConfig(m["n_layer"], m["n_head"], m["n_kv_head"], m["n_embd"],
                                         m["ffn"], m["vocab"], m["norm_eps"], m["rope_theta"])
        return llama_torch.ReferenceLlama.from_safetensors(init, config, torch.float32)
    config = gpt_torch.GptConfig(m["n_layer"], m["n_head"], m["n_embd"], m["context"], m["vocab"],
                                 post_norm=m["norm"] == "post")
    return gpt_torch.ReferenceGpt.from_safetensors(init, config, torch.float32, fused=True)


def train_torch(folder, kiln, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = reference_model(folder, kiln["model"])
    o = kiln["optim"]
    optimizer = gpt_torch.make_adamw(model, o["lr"], (o["beta1"], o["beta2"]), o["eps"],
                                     o["weight_decay"])
    steps, batch, seq = kiln["steps"], kiln["batch"], kiln["seq"]
    tokens = np.fromfile(os.path.join(folder, "batches.bin"), dtype="<i4")
    tokens = torch.from_numpy(tokens.astype(np.int64)).view(steps, batch, seq + 1)
    losses, seconds = [], []
    for step in range(steps):
        inputs, targets = tokens[step, :, :-1].contiguous(), tokens[step, :, 1:].contiguous()
        t0 = time.perf_counter()
        loss = gpt_torch.train_step(model, optimizer, inputs, targets, clip=o["grad_clip"])
        seconds.append(time.perf_counter() - t0)
        losses.append(loss)
        print(f"torch step {step + 1:2d}  loss {loss:.6f}  {seconds[-1]:.3f} s  "
              f"{batch * seq / seconds[-1]:.0f} tokens/s", flush=True)
    tps = statistics.median(batch * seq / s for s in seconds[1:])
    return {"losses": losses, "step_seconds": seconds, "tokens_per_s": tps, "threads": threads,
            "torch_version": torch.__version__,
            "mfu": tps * kiln["flops_per_token"] / kiln.get("peak_flops_fp32", kiln["peak_flops"])}  # torch runs fp32


def describe(kiln):
    m = kiln["model"]
    arch = ""
    if m.get("arch", "gpt2") == "llama":
        arch = f"LLaMA KV{m['n_kv_head']} F{m['ffn']} "
    return (f"{arch}L{m['n_layer']} H{m['n_head']} C{m['n_embd']} V{m['vocab']} "
            f"T{kiln['seq']} B{kiln['batch']} {kiln['matmul']}")


def row(folder, kiln, torch_run):
    ratio = kiln["tokens_per_s"] / torch_run["tokens_per_s"]
    last = kiln["steps"] - 1
    loss_k, loss_t = kiln["losses"][last], torch_run["losses"][last]
    diff = abs(loss_k - loss_t)
    loss_target = LOSS_TARGET[kiln["matmul"]]
    ok = ratio >= SPEED_TARGET and diff <= loss_target
    return {"dir": folder, "shape": describe(kiln), "kiln_tps": kiln["tokens_per_s"],
            "torch_tps": torch_run["tokens_per_s"], "ratio": ratio, "kiln_mfu": kiln["mfu"],
            "torch_mfu": torch_run["mfu"], "step": last + 1, "loss_kiln": loss_k,
            "loss_torch": loss_t, "loss_diff": diff, "loss_target": loss_target,
            "speed_ok": ratio >= SPEED_TARGET, "loss_ok": diff <= loss_target, "pass": ok}


def print_table(rows):
    header = ("| shape | kiln tok/s | torch tok/s | ratio | kiln MFU | torch MFU | step | "
              "loss kiln | loss torch | abs diff | target | result |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        verdict = "PASS" if r["pass"] else "FAIL (" + ", ".join(
            n for n, ok in (("speed", r["speed_ok"]), ("loss", r["loss_ok"])) if not ok) + ")"
        print(f"| {r['shape']} | {r['kiln_tps']:.0f} | {r['torch_tps']:.0f} | {r['ratio']:.2f} | "
              f"{100 * r['kiln_mfu']:.1f}% | {100 * r['torch_mfu']:.1f}% | {r['step']} | "
              f"{r['loss_kiln']:.6f} | {r['loss_torch']:.6f} | {r['loss_diff']:.2e} | "
              f"ratio >= {SPEED_TARGET}, diff <= {r['loss_target']:g} | {verdict} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="*", help="folders written by bench/train_step")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--json", help="also write the table rows and the reference's BLAS "
                        "report to this file")
    parser.add_argument("--check", action="store_true",
                        help="only check and report the BLAS PyTorch calls (exit status 2 when "
                        "it is the reference BLAS or unknown)")
    args = parser.parse_args()
    if not args.dirs and not args.check:
        parser.error("give the folders written by bench/train_step, or --check")
    torch.set_num_threads(args.threads)
    reference = blas_report()
    print(describe_reference(reference), flush=True)
    problem = blas_problem(reference)
    if problem:
        print(f"train_vs_pytorch: {problem}", file=sys.stderr)
        return 2
    if args.check:
        return 0
    runs, rows = {}, []
    for folder in args.dirs:
        with open(os.path.join(folder, "kiln.json")) as f:
            kiln = json.load(f)
        key = run_key(folder, kiln)
        if key not in runs:
            print(f"== PyTorch {torch.__version__}, {args.threads} threads: {describe(kiln)}",
                  flush=True)
            runs[key] = train_torch(folder, kiln, args.threads)
        else:
            print(f"== {describe(kiln)}: same weights, data and settings as an earlier folder; "
                  "its PyTorch run is reused", flush=True)
        with open(os.path.join(folder, "torch.json"), "w") as f:
            json.dump(runs[key], f, indent=1)
        rows.append(row(folder, kiln, runs[key]))
    print()
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reference": reference, "rows": rows}, f, indent=1)
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
