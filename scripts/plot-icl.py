#!/usr/bin/env python3
"""Draws in-context learning across model sizes from a sweep's records (kiln sweep with `eval:`),
with matplotlib. One row per task:
  - accuracy (mean over templates) against model size, one line per k (GPT-3's figure in miniature);
  - accuracy against k, one line per model size;
  - prompt sensitivity: the standard deviation of accuracy over the templates, against size, per k;
  - accuracy against the run's validation loss, for every evaluated run of the sweep.
The first three panels draw the runs of the largest token budget (every size on the same data), or,
in a sweep of compute budgets only, those of the largest budget.

  scripts/plot-icl.py runs/scaling/results.jsonl docs/img/scaling-icl.png [--metric acc]
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def chosen_runs(runs):
    """The runs of the largest token budget, else of the largest compute budget, and their label."""
    budgets = [r["token_budget"] for r in runs if "token_budget" in r]
    if budgets:
        top = max(budgets)
        return [r for r in runs if r.get("token_budget") == top], f"every size on {top:.3g} tokens"
    groups = {}
    for r in runs:
        if "group" in r:
            groups.setdefault(r["group"], []).append(r)
    if groups:
        name = max(groups, key=lambda g: sum(r["flops"] for r in groups[g]) / len(groups[g]))
        return groups[name], f"the IsoFLOP group {name}"
    return runs, "every run"


def main(results_path, out_path, metric="acc"):
    runs = [json.loads(line) for line in open(results_path) if line.strip()]
    runs = [r for r in runs if r.get("finished") and "eval" in r]
    if not runs:
        sys.exit(f"{results_path}: no run has evaluation results; give the sweep an `eval:` section (docs/scaling.md)")
    every_run = runs
    runs, label = chosen_runs(runs)
    runs.sort(key=lambda r: r["params"])
    spread = {}  # (task, k, params) -> the spread record
    for r in runs:
        for s in r["eval"]["spreads"]:
            if s["metric"] == metric:
                spread[(s["task"], s["k"], r["params"])] = s
    tasks = sorted({t for t, _, _ in spread})
    ks = sorted({k for _, k, _ in spread})
    ns = [r["params"] for r in runs]
    fig, ax = plt.subplots(len(tasks), 4, figsize=(20, 4.2 * len(tasks)), squeeze=False)
    kcolor = {k: plt.get_cmap("plasma")(i / max(1, len(ks))) for i, k in enumerate(ks)}
    ncolor = {n: plt.get_cmap("viridis")(i / max(1, len(ns) - 1)) for i, n in enumerate(ns)}
    for row, task in enumerate(tasks):
        # Chance: one over the options of a record (the task's files hold 4 options each).
        def against_size(a, field, ylabel, title, chance=False):
            """One line per k of a spread field against model size."""
            for k in ks:
                pts = [(n, spread[(task, k, n)][field]) for n in ns if (task, k, n) in spread]
                a.plot(*zip(*pts), "o-", color=kcolor[k], label=f"k = {k}")
            if chance:
                a.axhline(0.25, color="gray", ls=":", label="chance (4 options)")
            a.set_xscale("log")
            a.set_xlabel("parameters N (non-embedding)")
            a.set_ylabel(ylabel)
            a.set_title(f"{task}: {title}")
            a.legend(fontsize=7)

        against_size(ax[row][0], "mean", f"{metric} (mean over templates)", "accuracy against size", chance=True)
        a = ax[row][1]
        for n in ns:
            pts = [(k, spread[(task, k, n)]["mean"]) for k in ks if (task, k, n) in spread]
            lo = [spread[(task, k, n)]["min"] for k in ks if (task, k, n) in spread]
            hi = [spread[(task, k, n)]["max"] for k in ks if (task, k, n) in spread]
            a.plot(*zip(*pts), "o-", color=ncolor[n], label=f"N = {n:.3g}")
            a.fill_between([p[0] for p in pts], lo, hi, color=ncolor[n], alpha=0.12)
        a.axhline(0.25, color="gray", ls=":")
        a.set_xscale("symlog", linthresh=1)
        a.set_xticks(ks)
        a.set_xticklabels([str(k) for k in ks])
        a.set_xlabel("examples in context k")
        a.set_ylabel(metric)
        a.set_title(f"{task}: accuracy against k (band: min-max over templates)")
        a.legend(fontsize=7)
        against_size(ax[row][2], "std", f"std of {metric} over templates", "prompt sensitivity")
        a = ax[row][3]
        for k in (ks[0], ks[-1]):
            pts = [(r["final_val_loss"], s["mean"]) for r in every_run for s in r["eval"]["spreads"]
                   if s["metric"] == metric and s["task"] == task and s["k"] == k]
            a.plot(*zip(*pts), "o", color=kcolor[k], alpha=0.8, label=f"k = {k} ({len(pts)} runs)")
        a.axhline(0.25, color="gray", ls=":")
        a.invert_xaxis()
        a.set_xlabel("final validation loss (nats per byte), lower to the right")
        a.set_ylabel(metric)
        a.set_title(f"{task}: accuracy against loss, every run")
        a.legend(fontsize=7)
    fig.suptitle(f"In-context learning across sizes ({label})")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)


if __name__ == "__main__":
    args = sys.argv[1:]
    metric = "acc"
    if "--metric" in args:
        i = args.index("--metric")
        metric = args[i + 1]
        del args[i:i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    main(*args, metric=metric)
