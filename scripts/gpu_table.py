#!/usr/bin/env python3
"""One table from a scripts/gpu-check log folder: GPU tests, kernel benchmarks, training."""
import json
import pathlib
import re
import statistics
import sys
import xml.etree.ElementTree as ET

logs = pathlib.Path(sys.argv[1])
rows = []

gpu = (logs / "gpu.txt").read_text().strip() if (logs / "gpu.txt").exists() else "unknown GPU"
print(f"GPU: {gpu}\n")

# GPU tests: counts, and each failure by name.
xml = logs / "gpu_tests.xml"
if xml.exists():
    root = ET.parse(xml).getroot()
    total = int(root.get("tests", 0))
    failed = int(root.get("failures", 0)) + int(root.get("errors", 0))
    skipped = sum(1 for t in root.iter("testcase") if t.get("result") == "skipped" or t.find("skipped") is not None)
    rows.append(("gpu tests", f"{total - failed - skipped} passed, {failed} failed, {skipped} skipped", ""))
    for t in root.iter("testcase"):
        if t.find("failure") is not None:
            rows.append(("  FAILED", f"{t.get('classname')}.{t.get('name')}", ""))
else:
    rows.append(("gpu tests", "did not run (no gpu_tests.xml)", ""))

# Benchmarks: every counter that is a rate (GB/s, TFLOP/s, ratios) beside the time.
for log in sorted(logs.glob("cuda_*.log")):
    if not log.with_suffix(".json").exists():
        last = (log.read_text().strip().splitlines() or ["(empty log)"])[-1]
        rows.append((log.stem, "no results: " + last, ""))
for path in sorted(logs.glob("cuda_*.json")):
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        rows.append((path.stem, "no valid JSON (see its .log)", ""))
        continue
    for b in data.get("benchmarks", []):
        if b.get("run_type") == "aggregate":
            continue
        skip = {"name", "family_index", "per_family_instance_index", "run_name", "run_type",
                "repetitions", "repetition_index", "threads", "iterations", "real_time", "cpu_time",
                "time_unit", "label", "error_occurred", "error_message"}
        counters = []
        for key, value in b.items():
            if key in skip or not isinstance(value, (int, float)):
                continue
            if key == "bytes_per_second":
                counters.append(f"{value / 1e9:.0f} GB/s")
            elif key == "items_per_second":
                continue
            else:
                counters.append(f"{key} {value:.3g}")
        if b.get("error_occurred"):
            counters = ["ERROR: " + b.get("error_message", "")]
        time = f"{b['real_time']:.3g} {b['time_unit']}" if "real_time" in b else ""
        rows.append((f"{path.stem}: {b['name']}", ", ".join(counters) or b.get("label", ""), time))

# Training: median tokens/s and MFU over steps 2.., and the memory lines.
metrics = logs / "train124m" / "metrics.jsonl"
if metrics.exists():
    steps = [json.loads(line) for line in metrics.read_text().splitlines() if '"loss"' in line]
    later = steps[1:] or steps
    tps = statistics.median(s["tokens_per_s"] for s in later)
    mfu = statistics.median(s["mfu"] for s in later)
    rows.append(("train GPT-2 124M T=1024 bf16", f"{tps:,.0f} tok/s, MFU {100 * mfu:.1f}% "
                 f"(loss {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f})", f"{len(steps)} steps"))
else:
    last = (logs / "train124m.log").read_text().strip().splitlines()[-1:] if (logs / "train124m.log").exists() else []
    rows.append(("train GPT-2 124M T=1024 bf16", "did not finish: " + (last[0] if last else "no log"), ""))
log = logs / "train124m.log"
if log.exists():
    for line in log.read_text().splitlines():
        if line.startswith("memory"):
            rows.append(("  " + line.split(":")[0], line.split(":", 1)[1].strip(), ""))

width = max(len(r[0]) for r in rows)
print(f"| {'what':<{width}} | result | time |")
print(f"|{'-' * (width + 2)}|---|---|")
for name, result, time in rows:
    print(f"| {name:<{width}} | {result} | {time} |")
