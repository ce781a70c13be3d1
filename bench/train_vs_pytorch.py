"""PyTorch's half of bench/train_vs_pytorch.sh, and the comparison table.

For each DIR written by `train_step` (init.safetensors, batches.bin, kiln.json) this trains the
independent PyTorch GPT of tests/reference/gpt_torch.py from the same initial weights on the same
batches with the same optimizer (AdamW, decay on matmul weights only, global-norm clipping as
kiln does it, constant lr), times every step, writes DIR/torch.json and prints one table row:

    tokens/s kiln and torch (median of steps 2..N), their ratio, kiln's MFU, the loss at the
    last step (step 10 in the standard run) of both and |diff|, PASS/FAIL against the targets:
    ratio >= 1.5 and |loss diff| <= 1e-3 (5e-2 for kiln's bf16 matmuls against torch's fp32).

Directories that share init weights, batches and settings (the fp32 and bf16 run of one shape)
share one PyTorch run. PyTorch uses 2 threads (torch.set_num_threads). Exit status 1 when a row
fails its targets.

    /usr/bin/python3 bench/train_vs_pytorch.py DIR [DIR ...]
"""

import argparse
import hashlib
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
import gpt_torch  # noqa: E402

SPEED_TARGET = 1.5
LOSS_TARGET = {"f32": 1e-3, "bf16": 5e-2}


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


def train_torch(folder, kiln, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = kiln["model"]
    config = gpt_torch.GptConfig(m["n_layer"], m["n_head"], m["n_embd"], m["context"], m["vocab"],
                                 post_norm=m["norm"] == "post")
    model = gpt_torch.ReferenceGpt.from_safetensors(os.path.join(folder, "init.safetensors"),
                                                    config, torch.float32, fused=True)
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
            "mfu": tps * kiln["flops_per_token"] / kiln["peak_flops"]}


def describe(kiln):
    m = kiln["model"]
    return (f"L{m['n_layer']} H{m['n_head']} C{m['n_embd']} V{m['vocab']} "
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
    parser.add_argument("dirs", nargs="+", help="folders written by bench/train_step")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--json", help="also write the table rows to this file")
    args = parser.parse_args()
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
            json.dump(rows, f, indent=1)
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
