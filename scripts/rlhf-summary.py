#!/usr/bin/env python3
"""The table (and plots) of the preference-tuning experiment (scripts/rlhf-experiment):

    scripts/rlhf-summary.py RUNS_DIR --seeds 1 2 3 [--gamed-kl 0 0.2] [--plot OUT.png]

RUNS_DIR holds the runs (sft, reward, reward-length, ppo-S, dpo-S, ppo-gamed-klK) and eval/,
the `kiln policy-eval` results of each policy on the held-out prompts (greedy responses, gold
rule, reward-model score in units of its standard deviation). Per seed the PPO row reads the last
rollout's KL from metrics.jsonl. Mean +- standard deviation over seeds. The plot (matplotlib)
draws, over PPO steps, the rollouts' proxy reward, gold reward, KL and response length for every
seed and for the gamed runs. Standard library only without --plot."""
import argparse
import json
import os
import statistics


def load(path):
    with open(path) as f:
        return json.load(f)


def records(run):
    out = []
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def steps(run):
    return [r for r in records(run) if "loss" in r]


def last_val(run, key):
    vals = [r[key] for r in records(run) if key in r]
    return vals[-1] if vals else float("nan")


def fmt(xs):
    xs = [x for x in xs if x == x]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("--seeds", nargs="+", default=["1", "2", "3"])
    ap.add_argument("--gamed-kl", nargs="*", default=[])
    ap.add_argument("--plot")
    a = ap.parse_args()
    r = a.runs
    ev = lambda name: load(os.path.join(r, "eval", name + ".json"))
    sft = ev("sft")
    rows = []
    rows.append(("SFT", [sft["gold"]], [sft["correct"]], [sft["proxy"]], [sft["length"]], []))
    for kind in ("ppo", "dpo"):
        e = [ev(f"{kind}-{s}") for s in a.seeds]
        kl = [steps(os.path.join(r, f"{kind}-{s}"))[-1].get("kl", float("nan")) for s in a.seeds]
        rows.append((kind.upper(), [x["gold"] for x in e], [x["correct"] for x in e], [x["proxy"] for x in e],
                     [x["length"] for x in e], kl))
    print(f"Held-out prompts: {sft['n']}; responses sampled at temperature {sft.get('temperature', 0)}; proxy = reward-model score, normalised by "
          f"its reference samples (the SFT policy's own responses: it scores 0, and 1 is one of its standard deviations); seeds {' '.join(a.seeds)}.\n")
    rm_acc = last_val(os.path.join(r, "reward"), "val_accuracy")
    rm_len_acc = last_val(os.path.join(r, "reward-length"), "val_accuracy")
    print(f"Reward model accuracy on held-out gold-ranked pairs: {rm_acc:.3f} "
          f"(the length-ranked reward model: {rm_len_acc:.3f})\n")
    print("| policy | gold reward | correct | proxy (std) | length (tokens) | KL at the end (nats) |")
    print("|---|---|---|---|---|---|")
    for name, gold, correct, proxy, length, kl in rows:
        print(f"| {name} | {fmt(gold)} | {fmt(correct)} | {fmt(proxy)} | {fmt(length)} | {fmt(kl)} |")
    ppo_proxy = statistics.mean(ev(f"ppo-{s}")["proxy"] for s in a.seeds)
    print(f"\nPPO raises the proxy by {ppo_proxy - sft['proxy']:.2f} standard deviations over the SFT policy.")
    if a.gamed_kl:
        sft_len = ev("sft-length")
        print("\nNegative control: PPO against the length-ranked reward model (proxy: its score).\n")
        print("| policy | gold reward | correct | proxy (std) | length (tokens) | KL at the end (nats) |")
        print("|---|---|---|---|---|---|")
        print(f"| SFT | {fmt([sft_len['gold']])} | {fmt([sft_len['correct']])} | {fmt([sft_len['proxy']])} | "
              f"{fmt([sft_len['length']])} | - |")
        for k in a.gamed_kl:
            e = ev(f"ppo-gamed-kl{k}")
            kl = steps(os.path.join(r, f"ppo-gamed-kl{k}"))[-1].get("kl", float("nan"))
            print(f"| PPO, kl_coef {k} | {fmt([e['gold']])} | {fmt([e['correct']])} | {fmt([e['proxy']])} | "
                  f"{fmt([e['length']])} | {fmt([kl])} |")
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 4, figsize=(18, 4))
        runs = [(f"PPO seed {s}", f"ppo-{s}", "-") for s in a.seeds]
        runs += [(f"gamed RM, kl_coef {k}", f"ppo-gamed-kl{k}", "--") for k in a.gamed_kl]
        for label, run, style in runs:
            m = steps(os.path.join(r, run))
            x = [p["step"] for p in m]
            for ax, key in zip(axes, ("proxy", "gold", "kl", "length")):
                ax.plot(x, [p.get(key, float("nan")) for p in m], style, label=label)
        for ax, title in zip(axes, ("proxy reward (std)", "gold reward", "KL to the reference (nats)", "response length (tokens)")):
            ax.set_title(title)
            ax.set_xlabel("PPO step")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)


if __name__ == "__main__":
    main()
