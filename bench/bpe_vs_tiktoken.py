#!/usr/bin/env python3
"""GPT-2 BPE encode throughput: kiln (bench/bpe_bench) beside tiktoken, on the same text.

    /tmp/venv-bpe/bin/python bench/bpe_vs_tiktoken.py --kiln build/bpe_bench \
        [--bpe-dir ../shared/data/gpt2-bpe] [--input /usr/share/games/fortunes]

tiktoken builds the GPT-2 encoding from the local files (no download). Measured: encode_ordinary
of the whole text (one thread) and encode_ordinary_batch of the documents split on "\\n%\\n"
with 1 and 2 threads. MB/s = 10^6 input bytes per second; "cold" is the first pass, "warm" the
best of --repeat passes. Also checks that both produce the same ids for the whole text.
"""
import argparse
import array
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
from make_bpe_fixture import gpt2_encoding  # noqa: E402


def tiktoken_version():
    import tiktoken
    return tiktoken.__version__


def read_input(path):
    """A file, or every regular file of a folder (sorted; links and files with NUL skipped),
    concatenated as bench/bpe_bench.cpp does."""
    if not os.path.isdir(path):
        with open(path, "rb") as f:
            return f.read()
    raw = b""
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full) and not os.path.islink(full):
            with open(full, "rb") as f:
                body = f.read()
            if b"\0" not in body:
                raw += body
    return raw


def timed(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kiln", default=os.path.join(ROOT, "build", "bpe_bench"))
    parser.add_argument("--bpe-dir", default=os.path.join(ROOT, "..", "shared", "data", "gpt2-bpe"))
    parser.add_argument("--input", default="/usr/share/games/fortunes")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    raw = read_input(args.input)
    text = raw.decode("utf-8")
    docs = [d.decode("utf-8") for d in raw.split(b"\n%\n")]
    assert len(raw) == len(text.encode("utf-8"))
    mb = len(raw) / 1e6
    enc = gpt2_encoding(args.bpe_dir)

    tk = {}
    tk["single_cold"] = timed(lambda: enc.encode_ordinary(text))
    tk["single_warm"] = min(timed(lambda: enc.encode_ordinary(text)) for _ in range(args.repeat))
    for threads in (1, 2):
        run = lambda: enc.encode_ordinary_batch(docs, num_threads=threads)  # noqa: E731
        tk[f"batch{threads}_cold"] = timed(run)
        tk[f"batch{threads}_warm"] = min(timed(run) for _ in range(args.repeat))
    tk = {k: mb / v for k, v in tk.items()}

    with tempfile.TemporaryDirectory() as tmp:
        ids_file = os.path.join(tmp, "ids.bin")
        out = subprocess.run([args.kiln, "--bpe-dir", args.bpe_dir, "--input", args.input,
                              "--repeat", str(args.repeat), "--json", "--ids", ids_file],
                             check=True, capture_output=True, text=True).stdout
        kiln_ids = array.array("I")
        with open(ids_file, "rb") as f:
            kiln_ids.frombytes(f.read())
    kiln = json.loads(out)
    ref_ids = enc.encode_ordinary(text)
    n_tokens = len(ref_ids)
    if kiln_ids.tolist() != ref_ids:
        first = next((i for i, (a, b) in enumerate(zip(kiln_ids, ref_ids)) if a != b),
                     min(len(kiln_ids), n_tokens))
        sys.exit(f"MISMATCH: kiln and tiktoken ids differ first at token {first}")

    print(f"{args.input}: {len(raw)} bytes, {len(docs)} documents, {n_tokens} GPT-2 tokens "
          f"(kiln and tiktoken ids identical)")
    print(f"{'MB/s':32} {'kiln cold':>10} {'kiln warm':>10} {'tiktoken':>10}")
    rows = [("encode, one string, 1 thread", "single"), ("batch of documents, 1 thread", "batch1"),
            ("batch of documents, 2 threads", "batch2")]
    for label, key in rows:
        print(f"{label:32} {kiln[key + '_cold']:10.2f} {kiln[key + '_warm']:10.2f} "
              f"{tk[key + '_warm']:10.2f}")
    print(f"tiktoken {tiktoken_version()} first passes: " +
          ", ".join(f"{k[:-5]} {v:.2f}" for k, v in tk.items() if k.endswith("_cold")))


if __name__ == "__main__":
    main()
