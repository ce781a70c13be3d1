#!/usr/bin/env python3
"""A metric against the number of shots k from `kiln eval` results (matplotlib): one panel per
task, one line per template (one results file), or one line per results file, averaged over the
task's templates with the min-max band (several files, e.g. one per model or seed):

    scripts/plot-eval.py OUT.png [--metric acc] [--tasks T1,T2] RESULTS.json [LABEL=RESULTS.json ...]

The metric defaults to each task's first: acc (multiple choice) or exact_match (generation).
Needs matplotlib (Debian's python3-matplotlib, or PyPI's)."""
import argparse
import json
import math
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(spec):
    label, _, path = spec.rpartition("=")
    with open(path) as f:
        return label or path, json.load(f)


def metric_of(score, wanted):
    if wanted:
        return wanted if wanted in score["metrics"] else None
    return "acc" if "acc" in score["metrics"] else "exact_match"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("results", nargs="+", help="kiln eval JSON files, optionally LABEL=FILE")
    parser.add_argument("--metric", default="")
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    args = parser.parse_args()
    runs = [load(r) for r in args.results]
    wanted = set(filter(None, args.tasks.split(",")))
    # curves[task][line] = {k: [values]}
    curves = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    metric_name = {}
    for label, results in runs:
        for s in results["scores"]:
            if wanted and s["task"] not in wanted:
                continue
            m = metric_of(s, args.metric)
            if m is None:
                continue
            metric_name[s["task"]] = m
            line = s["template"] if len(runs) == 1 else label
            curves[s["task"]][line][s["k"]].append(s["metrics"][m])
    if not curves:
        raise SystemExit("no scores to plot (check --tasks and --metric)")
    tasks = sorted(curves)
    cols = min(4, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for line, by_k in sorted(curves[task].items()):
            ks = sorted(by_k)
            mean = [sum(by_k[k]) / len(by_k[k]) for k in ks]
            ax.plot(ks, mean, marker="o", label=line)
            if len(runs) > 1:
                ax.fill_between(ks, [min(by_k[k]) for k in ks], [max(by_k[k]) for k in ks], alpha=0.2)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("shots (k)")
        ax.set_ylabel(metric_name[task])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}: {len(tasks)} task(s), metric per task: {dict(sorted(metric_name.items()))}")


if __name__ == "__main__":
    main()
