#!/usr/bin/env python3
"""Draws a scaling-law fit (kiln scaling fit) with matplotlib: loss against compute for every run
with the fitted compute-optimal frontier, IsoFLOP curves of the fitted law with their minima (and
Approach 2's groups when the sweep had them), the fitted L(N, D) as contours with the runs, and
the residuals of every run.

  scripts/plot-scaling.py runs/scaling/results.jsonl runs/scaling/fit.json docs/img/scaling.png
"""
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def finish(a, xlabel, ylabel, title, legend=True):
    """Log-scaled x axis, labels, title and a small legend: what every panel ends with."""
    a.set_xscale("log")
    a.set_xlabel(xlabel)
    a.set_ylabel(ylabel)
    a.set_title(title)
    if legend:
        a.legend(fontsize=7)


def main(results_path, fit_path, out_path, extra_path=None):
    runs = [json.loads(line) for line in open(results_path) if line.strip()]
    runs = [r for r in runs if r.get("finished")]
    fit = json.load(open(fit_path))
    law = fit["approach3"]
    E, A, B, al, be = law["E"], law["A"], law["B"], law["alpha"], law["beta"]

    def loss(n, d):
        return E + A / n**al + B / d**be

    def optimal(c):
        g = (al * A / (be * B)) ** (1 / (al + be))
        n = g * (c / 6) ** (be / (al + be))
        return n, c / 6 / n

    extra = [json.loads(line) for line in open(extra_path) if line.strip()] if extra_path else []
    fig, ax = plt.subplots(2, 2, figsize=(12, 9.5))
    ns = sorted({r["params"] for r in runs})
    cmap = plt.get_cmap("viridis")
    color = {n: cmap(i / max(1, len(ns) - 1)) for i, n in enumerate(ns)}

    # 1. Loss against compute, every run, with the frontier of the fitted law.
    a = ax[0][0]
    for n in ns:
        pts = sorted((r["flops"], r["final_val_loss"]) for r in runs if r["params"] == n)
        a.plot(*zip(*pts), "o-", color=color[n], label=f"N = {n:.3g}")
    cs = np.logspace(math.log10(min(r["flops"] for r in runs)) - 0.3,
                     math.log10(max([r["flops"] for r in runs + extra])) + 0.3, 100)
    a.plot(cs, [loss(*optimal(c)) for c in cs], "k--", label="fitted frontier L(N_opt(C), D_opt(C))")
    for r in extra:
        a.plot(r["flops"], r["final_val_loss"], "r*", ms=14, label=f"{r['name']} (measured)")
        a.plot(r["flops"], loss(r["params"], r["tokens"]), "rx", ms=12, mew=2, label=f"{r['name']} (predicted)")
    finish(a, "training compute C = 6ND (FLOPs)", "final validation loss", "Loss against compute")

    # 2. IsoFLOP curves of the fitted law, with their minima; Approach 2's groups when present.
    a = ax[0][1]
    budgets = np.logspace(math.log10(min(r["flops"] for r in runs)), math.log10(max(r["flops"] for r in runs)), 4)
    for i, c in enumerate(budgets):
        nn = np.logspace(math.log10(min(ns)) - 0.5, math.log10(max(ns)) + 0.5, 100)
        a.plot(nn, [loss(n, c / 6 / n) for n in nn], color=plt.get_cmap("plasma")(i / 4), label=f"C = {c:.2g}")
        n_opt, d_opt = optimal(c)
        a.plot(n_opt, loss(n_opt, d_opt), "o", color=plt.get_cmap("plasma")(i / 4))
    for g in fit.get("approach2", {}).get("groups", []):
        pts = sorted((r["params"], r["final_val_loss"]) for r in runs if r.get("group") == g["name"])
        a.plot(*zip(*pts), "s", mfc="none", color="k")
        a.plot(g["n_opt"], g["loss_min"], "kD")
    losses = [r["final_val_loss"] for r in runs]
    a.set_ylim(min(losses) * 0.9, max(losses) * 1.15)
    finish(a, "parameters N (non-embedding)", "loss", "IsoFLOP curves of the fit (dots: their minima)")

    # 3. The fitted L(N, D) as contours, with the runs.
    a = ax[1][0]
    n_grid = np.logspace(math.log10(min(ns)) - 0.3, math.log10(max(ns)) + 0.5, 120)
    ds = [r["tokens"] for r in runs + extra]
    d_grid = np.logspace(math.log10(min(ds)) - 0.3, math.log10(max(ds)) + 0.5, 120)
    nn, dd = np.meshgrid(n_grid, d_grid)
    z = loss(nn, dd)
    cs_ = a.contour(nn, dd, z, levels=12, cmap="viridis")
    a.clabel(cs_, fontsize=7, fmt="%.2f")
    a.scatter([r["params"] for r in runs], [r["tokens"] for r in runs], c="k", s=15, label="runs")
    c_line = np.logspace(math.log10(min(r["flops"] for r in runs)) - 1, math.log10(max(r["flops"] for r in runs)) + 1.5, 50)
    opt = [optimal(c) for c in c_line]
    a.plot([o[0] for o in opt], [o[1] for o in opt], "r--", label="compute-optimal N, D")
    a.set_yscale("log")
    a.set_xlim(n_grid[0], n_grid[-1])
    a.set_ylim(d_grid[0], d_grid[-1])
    finish(a, "parameters N", "tokens D", f"L(N, D) = {E:.3g} + {A:.3g}/N^{al:.3f} + {B:.3g}/D^{be:.3f}")

    # 4. Residuals: log of measured over fitted loss, per run.
    a = ax[1][1]
    for r in runs:
        a.plot(r["params"], math.log(r["final_val_loss"] / loss(r["params"], r["tokens"])), "o", color=color[r["params"]])
    a.axhline(0, color="k", lw=0.8)
    finish(a, "parameters N", "log(measured / fitted loss)", "Residuals", legend=False)

    fig.tight_layout()
    fig.savefig(out_path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    main(*sys.argv[1:])
