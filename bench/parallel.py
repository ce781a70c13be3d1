"""Prints the parallel benchmark table from the metrics.jsonl of runs made by bench/parallel.sh:
tokens/s, the share of step time spent on communication, and the bytes each rank hands to
collectives per step beside the textbook volume sent per rank by ring algorithms:
  data parallel (all-reduce of P gradients, or ZeRO-1's reduce-scatter + all-gather):
      2 * P * 4 * (n - 1) / n bytes
  tensor parallel (Megatron: 4 all-reduces of B*T*C activations per layer, forward and backward):
      4 * L * (B*T*C * 4) * 2 * (n - 1) / n bytes
Usage: data_parallel.py PARAMS LAYERS TOKENS_PER_STEP WIDTH (LABEL METRICS RANKS KIND)..."""

import json
import statistics
import sys


def summary(path):
    steps = [json.loads(line) for line in open(path) if '"loss"' in line][1:]  # skip warm-up
    tok = statistics.median(s["tokens_per_s"] for s in steps)
    wait = sum(s.get("comm_wait_s", 0.0) for s in steps) / sum(s["step_s"] for s in steps)
    payload = statistics.median(s.get("comm_bytes", 0.0) for s in steps)
    return tok, wait, payload, steps[-1]["loss"]


def main():
    params, layers, tokens, width = (int(a) for a in sys.argv[1:5])
    rest = sys.argv[5:]
    print("| run | ranks | tokens/s | vs 1 rank | communication % of step | bytes handed to "
          "collectives, MB/step/rank | ring volume sent, MB/step/rank (formula) | loss at last step |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for label, path, ranks, kind in zip(rest[0::4], rest[1::4], map(int, rest[2::4]), rest[3::4]):
        tok, wait, payload, loss = summary(path)
        base = base or tok
        share = (ranks - 1) / ranks
        if kind == "dp":
            formula = 2 * params * 4 * share
        elif kind == "tp":
            formula = 4 * layers * tokens * width * 4 * 2 * share
        else:
            formula = 0.0
        print(f"| {label} | {ranks} | {tok:.0f} | {tok / base:.2f}x | {100 * wait:.1f} | "
              f"{payload / 1e6:.2f} | {formula / 1e6:.2f} | {loss:.4f} |")


if __name__ == "__main__":
    main()
