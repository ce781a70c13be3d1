"""Prints the data-parallel benchmark table from the metrics.jsonl of runs made by
bench/data_parallel.sh: tokens/s, the fraction of step time spent waiting on gradient
communication, and the gradient bytes each rank hands to collectives per step beside the ring
all-reduce formula 2 * P * 4 * (n - 1) / n bytes sent per rank (P parameters, n ranks)."""

import json
import statistics
import sys


def summary(path, ranks):
    steps = [json.loads(line) for line in open(path) if '"loss"' in line]
    steps = steps[1:]  # the first step warms caches and allocators
    tok = statistics.median(s["tokens_per_s"] for s in steps)
    wait = sum(s.get("comm_wait_s", 0.0) for s in steps) / sum(s["step_s"] for s in steps)
    payload = statistics.median(s.get("comm_bytes", 0.0) for s in steps)
    return tok, wait, payload, steps[-1]["loss"]


def main():
    params = int(sys.argv[1])
    rows = []
    base = None
    for label, path, ranks in zip(sys.argv[2::3], sys.argv[3::3], map(int, sys.argv[4::3])):
        tok, wait, payload, loss = summary(path, ranks)
        base = base or tok
        ring = 2 * params * 4 * (ranks - 1) / ranks
        rows.append((label, ranks, tok, tok / base, 100 * wait, payload / 1e6, ring / 1e6, loss))
    print("| run | ranks | tokens/s | vs dp=1 | comm wait % of step | payload MB/step/rank "
          "| ring all-reduce MB sent/rank (formula) | loss at last step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.2f}x | {r[4]:.1f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.4f} |")


if __name__ == "__main__":
    main()
