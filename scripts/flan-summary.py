#!/usr/bin/env python3
"""The table of the FLAN experiment in miniature (scripts/flan-experiment), from `kiln eval`
results of the base model and of the tuned model, one results file per tuning seed:

    scripts/flan-summary.py --heldout rules --base BASE.json TUNED_SEED1.json [TUNED_SEED2.json ...]
                            [--train-metrics RUN/metrics.jsonl ...]

Template groups, by the built-in suite's names (core/eval/suite.h): "cC_fF" tuned on,
"unseen_cC_fF" the cue-frame pair held out of tuning, "novel_cC" the frame no task is tuned on.
A seed's score for a group is the mean over tasks of the mean over the task's templates in that
group; the table gives the mean and standard deviation of that over seeds. "template spread" is
the mean over seen tasks of the standard deviation over each task's templates (tuned and unseen),
with the lowest and highest single template score. Chance: 1 / options for multiple choice, 0 for
exact match. Standard library only."""
import argparse
import json
import statistics
from collections import defaultdict


def group_of(template):
    if template.startswith("unseen_"):
        return "unseen"
    if template.startswith("novel_"):
        return "novel"
    return "tuned"


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def per_seed(results, heldout):
    """{(k, column): value} for one results file, plus per-task details."""
    # by[(k, task)][group] = [values]
    gen = defaultdict(lambda: defaultdict(list))
    eot = defaultdict(list)
    held = defaultdict(lambda: defaultdict(list))
    chance = {}
    per_template = defaultdict(list)  # (k, task) -> exact match of every tuned/unseen template
    for s in results["scores"]:
        k, task, m = s["k"], s["task"], s["metrics"]
        if s["cluster"] == heldout:
            held[k][task].append(m.get("acc", float("nan")))
            held[k][task + "/norm"].append(m.get("acc_norm", float("nan")))
            continue
        if "exact_match" not in m:
            continue
        g = group_of(s["template"])
        gen[(k, task)][g].append(m["exact_match"])
        if g != "novel":
            per_template[(k, task)].append(m["exact_match"])
        if g == "tuned":
            eot[k].append(m.get("stopped_at_eot", float("nan")))
    row = {}
    ks = sorted({k for k, _ in gen} | set(held))
    tasks_by_k = defaultdict(dict)
    for k in ks:
        for g in ("tuned", "unseen", "novel"):
            row[(k, g)] = mean([mean(v[g]) for (kk, _), v in gen.items() if kk == k and v[g]])
            for (kk, task), v in gen.items():
                if kk == k and v[g]:
                    tasks_by_k[k][(task, g)] = mean(v[g])
        row[(k, "eot")] = mean(eot[k])
        row[(k, "held")] = mean([mean(v) for t, v in held[k].items() if not t.endswith("/norm")])
        row[(k, "held_norm")] = mean([mean(v) for t, v in held[k].items() if t.endswith("/norm")])
        for t, v in held[k].items():
            if not t.endswith("/norm"):
                tasks_by_k[k][(t, "held")] = mean(v)
        spreads = [statistics.pstdev(v) for (kk, _), v in per_template.items() if kk == k and len(v) > 1]
        row[(k, "spread")] = mean(spreads)
        flat = [x for (kk, _), v in per_template.items() if kk == k for x in v]
        row[(k, "min")] = min(flat) if flat else float("nan")
        row[(k, "max")] = max(flat) if flat else float("nan")
    return row, ks, tasks_by_k


def fmt(values):
    values = [v for v in values if v == v]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True)
    parser.add_argument("--heldout", required=True, help="the held-out cluster")
    parser.add_argument("--train-metrics", nargs="*", default=[])
    parser.add_argument("tuned", nargs="+")
    args = parser.parse_args()
    base = json.load(open(args.base))
    tuned = [json.load(open(p)) for p in args.tuned]
    models = [("base", [per_seed(base, args.heldout)]), (f"tuned ({len(tuned)} seeds)", [per_seed(t, args.heldout) for t in tuned])]

    print(f"Held-out cluster: {args.heldout} (multiple choice, two options each: chance 0.500). "
          "Seen tasks: exact match, chance 0.\n")
    print("| model | k | seen tasks, tuned templates | seen tasks, unseen template | seen tasks, novel frame "
          "| ended with end-of-text | held-out acc | held-out acc_norm | template spread (std; min-max) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, runs in models:
        ks = runs[0][1]
        for k in ks:
            col = lambda c: fmt([r[0][(k, c)] for r in runs])  # noqa: E731
            spread = f"{fmt([r[0][(k, 'spread')] for r in runs])}; " \
                     f"{min(r[0][(k, 'min')] for r in runs):.2f}-{max(r[0][(k, 'max')] for r in runs):.2f}"
            print(f"| {name} | {k} | {col('tuned')} | {col('unseen')} | {col('novel')} | {col('eot')} "
                  f"| {col('held')} | {col('held_norm')} | {spread} |")

    print("\nPer task, zero-shot, tuned model (mean ± std over seeds):\n")
    print("| task | tuned templates | unseen template | novel frame |")
    print("|---|---|---|---|")
    runs = models[1][1]
    tasks = sorted({t for r in runs for (t, g) in r[2][0]})
    for t in tasks:
        cells = [fmt([r[2][0].get((t, g), float("nan")) for r in runs]) for g in ("tuned", "unseen", "novel")]
        if all(c == "-" for c in cells):
            cells = [fmt([r[2][0].get((t, "held"), float("nan")) for r in runs]) + " (acc, held out)", "", ""]
        print(f"| {t} | " + " | ".join(cells) + " |")

    print("\nThroughput (2-core CPU unless stated):\n")
    for name, results in [("base", base)] + [(f"tuned seed {i + 1}", t) for i, t in enumerate(tuned)]:
        tp = results.get("throughput", {})
        print(f"- eval {name}: {tp.get('multiple_choice_examples_per_s', float('nan')):.0f} multiple-choice "
              f"examples/s, {tp.get('generated_tokens_per_s', float('nan')):.0f} generated tokens/s, "
              f"{tp.get('seconds', float('nan')):.1f} s")
    for path in args.train_metrics:
        rates = [json.loads(line).get("tokens_per_s") for line in open(path)]
        rates = [r for r in rates if r]
        if rates:
            print(f"- training {path}: {statistics.median(rates):.0f} tokens/s (median over steps)")


if __name__ == "__main__":
    main()
