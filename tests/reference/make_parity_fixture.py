"""Writes the parity fixture that tests/core/test_parity.cpp checks kiln against.

For each LayerNorm placement (pre, post) it has kiln itself train a tiny GPT (2 layers, 2 heads,
width 32, context 48, byte vocabulary of 257) for 20 steps from a wide initialisation
(model.init_std 0.1, so every path carries signal), takes the checkpoint kiln wrote, and writes
tests/data/parity/<norm>/:
  model.safetensors     that kiln checkpoint's weights, byte for byte (Hugging Face names; kiln
                        pads wte to 320 rows in memory)
  fixture.json          the shape and one batch (B=2, T=40): inputs, targets, a loss mask
                        with zeros in it
  expected.safetensors  from gpt_torch.py (explicit-math path):
                          logits (2, 40, 257), loss (1), grad.<param name> (wte (257, 32))
                        computed in float64 (stored rounded to F32), and the same computed in
                        float32 under the prefix "f32." (the error an fp32 implementation
                        makes on this problem, for judging kiln's)

Deterministic for a given kiln build; run it with Debian's torch, from the repository root,
after building kiln:
    /usr/bin/python3 tests/reference/make_parity_fixture.py [--kiln build/kiln]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt_torch  # noqa: E402

# T = 40 spans three 16-token attention blocks, the last one partial (the C++ test uses
# attention_block 16), so off-diagonal and partial blocks are exercised; context 48 > T leaves
# position rows that must get zero gradient.
BATCH, SEQ, CONTEXT = 2, 40, 48
SEED = 20240611


WORDS = "the cat sat on a mat dog ran to log and then slept under old red tree".split()


def kiln_checkpoint(kiln, norm, seed, workdir):
    """Trains the tiny model with kiln for 20 steps; returns the checkpoint folder kiln wrote."""
    rng = np.random.default_rng(seed)
    with open(os.path.join(workdir, "corpus.txt"), "w") as f:
        f.write("\n%\n".join(" ".join(rng.choice(WORDS, size=12)) for _ in range(400)))
    data = os.path.join(workdir, "data")
    subprocess.run([kiln, "tokenize", "--input", os.path.join(workdir, "corpus.txt"),
                    "--separator", "%", "--out", data, "--val-fraction", "0"],
                   check=True, stdout=subprocess.DEVNULL)
    config = os.path.join(workdir, "tiny.yaml")
    run_dir = os.path.join(workdir, "run")
    with open(config, "w") as f:
        f.write(f"""model: {{n_layer: 2, n_head: 2, n_embd: 32, context: {CONTEXT}, norm: {norm},
        attention_block: 16, init_std: 0.1}}
data: {{train: "{data}/train_*.bin", val: ""}}
optim: {{lr: 1e-2, warmup_steps: 0, schedule: constant}}
train: {{micro_batch: 4, seq_len: {SEQ}, max_steps: 20, eval_every: 0, threads: 1,
        seed: {seed}, run_dir: "{run_dir}"}}
checkpoint: {{every: 0}}
""")
    subprocess.run([kiln, "train", config], check=True, stdout=subprocess.DEVNULL)
    return os.path.join(run_dir, "checkpoints", "step_00000020")


def make_batch(config, rng):
    inputs = rng.integers(0, config.vocab, size=(BATCH, SEQ))
    targets = rng.integers(0, config.vocab, size=(BATCH, SEQ))
    mask = (rng.random((BATCH, SEQ)) > 0.25).astype(np.int64)
    mask[0, :3] = 0  # a masked-out prefix, as a prompt would be
    mask[1, -1] = 0
    return inputs, targets, mask


def reference(config, weights, batch, dtype, fused=False):
    model = gpt_torch.ReferenceGpt(config, weights, dtype=dtype, fused=fused)
    inputs, targets, mask = (torch.tensor(a) for a in batch)
    logits, loss = model.loss(inputs, targets, mask)
    loss.backward()
    out = {"logits": logits.detach().numpy(), "loss": np.array([loss.item()])}
    for name, tensor in model.params.items():
        out["grad." + name] = tensor.grad.numpy()
    return out


def max_rel_gap(a, b):
    worst = 0.0
    for name in a:
        scale = np.abs(a[name]).max() + 1e-30
        worst = max(worst, float(np.abs(a[name] - b[name]).max() / scale))
    return worst


def write_variant(root, norm, seed, kiln):
    config = gpt_torch.GptConfig(n_layer=2, n_head=2, n_embd=32, context=CONTEXT, vocab=257,
                                 post_norm=norm == "post")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as workdir:
        checkpoint = kiln_checkpoint(kiln, norm, seed, workdir)
        weights, _ = gpt_torch.read_safetensors(os.path.join(checkpoint, "model.safetensors"))
        folder = os.path.join(root, norm)
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(os.path.join(checkpoint, "model.safetensors"),
                        os.path.join(folder, "model.safetensors"))
    assert set(weights) == set(gpt_torch.parameter_shapes(config)), "unexpected tensor names"
    batch = make_batch(config, rng)
    f64 = reference(config, weights, batch, torch.float64)
    f32 = reference(config, weights, batch, torch.float32)
    fused = reference(config, weights, batch, torch.float64, fused=True)
    # The explicit-math path and torch's fused kernels must agree to float64 rounding.
    gap = max_rel_gap(f64, fused)
    assert gap < 1e-10, f"{norm}: explicit and fused reference paths differ by {gap}"

    expected = dict(f64)
    expected.update({"f32." + k: v for k, v in f32.items()})
    gpt_torch.write_safetensors(os.path.join(folder, "expected.safetensors"), expected,
                                {"generator": "tests/reference/make_parity_fixture.py",
                                 "reference": "float64 (names without prefix), float32 (f32.)"})
    inputs, targets, mask = batch
    fixture = {
        "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
        "context": config.context, "vocab": config.vocab, "norm": norm,
        "batch": BATCH, "seq_len": SEQ,
        "inputs": inputs.reshape(-1).tolist(), "targets": targets.reshape(-1).tolist(),
        "mask": mask.reshape(-1).tolist(),
    }
    with open(os.path.join(folder, "fixture.json"), "w") as f:
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in fixture.items()]
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"{norm}: loss {f64['loss'][0]:.9f} (float32 reference {f32['loss'][0]:.9f}), "
          f"float32 vs float64 max relative gap {max_rel_gap(f64, f32):.2e}, "
          f"explicit vs fused {gap:.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kiln", default="build/kiln", help="the kiln binary that trains the weights")
    args = parser.parse_args()
    kiln = os.path.abspath(args.kiln)
    torch.manual_seed(0)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "parity")
    root = os.path.normpath(root)
    write_variant(root, "pre", SEED, kiln)
    write_variant(root, "post", SEED + 1, kiln)
    print("wrote", root)


if __name__ == "__main__":
    main()
