#!/usr/bin/env python3
"""Training and validation loss of several kiln runs in one plot (matplotlib), from each run's
metrics.jsonl:
    scripts/plot-loss-curves.py OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]
Needs matplotlib (Debian's python3-matplotlib, or PyPI's)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(run_dir):
    train, val = [], []
    with open(f"{run_dir}/metrics.jsonl") as f:
        for line in f:
            record = json.loads(line)
            if "loss" in record:
                train.append((record["step"], record["loss"]))
            if "val_loss" in record:
                val.append((record["step"], record["val_loss"]))
    return train, val


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, spec in enumerate(sys.argv[2:]):
        label, _, run_dir = spec.partition("=")
        train, val = read(run_dir)
        color = f"C{i}"
        ax.plot(*zip(*train), color=color, alpha=0.35, linewidth=0.8, label=f"{label} (train)")
        if val:
            ax.plot(*zip(*val), color=color, marker="o", linewidth=1.8, label=f"{label} (validation)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_ylim(top=4.0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(sys.argv[1], dpi=110)
    print("wrote", sys.argv[1])


if __name__ == "__main__":
    main()
