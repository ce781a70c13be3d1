#!/usr/bin/env python3
"""Writes tests/data/bpe/fixture.json: GPT-2 BPE ids made by tiktoken, the reference that
tests/core/test_gpt2_bpe.cpp compares kiln's Gpt2Bpe with (exact id equality per text).

tiktoken builds the GPT-2 encoding from the local vocabulary files, with no download:
    python3 -m venv /tmp/venv-bpe && /tmp/venv-bpe/bin/pip install tiktoken
    /tmp/venv-bpe/bin/python tests/reference/make_bpe_fixture.py [--bpe-dir ../shared/data/gpt2-bpe]

"ordinary" texts are encoded with encode_ordinary (kiln: encode), "special" texts with
allowed_special="all" (kiln: encode_with_special).
"""
import argparse
import json
import os

import tiktoken
import tiktoken.load

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FORTUNES = "/usr/share/games/fortunes/fortunes"


def gpt2_encoding(bpe_dir):
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.path.join(bpe_dir, "vocab.bpe"),
        encoder_json_file=os.path.join(bpe_dir, "encoder.json"))
    return tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def texts():
    out = [
        "",
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "I'm sure they'll say it's what we'd've done; you're right, I've seen 'em.",
        "DON'T SHOUT, it'S odd 'S and 'T",
        "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe \u00c5ngstr\u00f6m se\u00f1or",
        "emoji \U0001F525\U0001F680 family \U0001F468\u200d\U0001F469\u200d\U0001F467 flag \U0001F1EF\U0001F1F5",
        "\u4e2d\u6587\u6587\u672c\u3002\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \ud55c\uad6d\uc5b4",
        "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442 \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
        "   leading spaces and trailing spaces   ",
        "tabs\tand\t\ttabs\n\nnew  lines\n \n\t \r\n",
        "a     b      \n\n\n   c",
        "    \n",
        " ",
        "\n",
        "12345678901234567890 3.14159 1,000,000 0x1F 2024-06-01",
        "\u0661\u0662\u0663 \u2160\u2161 \u00bd \u00b2",
        "!!!??? ... --- === +++ *** ### $$$ @@@ ((()))[[]]{{}} <<>> ;;; ::",
        "foo@example.com https://example.org/path?q=1&r=2#frag",
        "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
        "non-breaking\u00a0space, ideographic\u3000space, em\u2003space, nel\u0085here",
        "mongolian\u180eseparator and \x1cfile\x1dgroup\x1erecord\x1funit",
        "zero\u200bwidth and soft\u00adhyphen and combining e\u0301",
        "a" * 300,
        # pieces longer than 256 bytes take Gpt2Bpe's heap merge; shorter ones the linear scan
        " " + "".join("etaoinshrdlucmfw"[(i * 7 + i // 5) % 16] for i in range(1200)),
        "=-" * 400 + "!" * 300,
        "-" * 200 + " " + "ab" * 100,
        "<|endoftext|> is text here",
        "Mixed\u00e9\U0001F600123abc'sDEF 'll",
    ]
    with open(FORTUNES, encoding="utf-8") as f:
        fortunes = f.read()
    out.append(fortunes[:6000])
    # a couple of separate fortunes, as `kiln tokenize --separator %` sees them
    out.extend(doc.strip("\n") for doc in fortunes.split("\n%\n")[100:110])
    return out


SPECIAL_TEXTS = [
    "one<|endoftext|>two",
    "<|endoftext|>",
    "a <|endoftext|> b<|endoftext|><|endoftext|>\n",
    "no special here",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bpe-dir", default=os.path.join(ROOT, "..", "shared", "data", "gpt2-bpe"))
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "bpe", "fixture.json"))
    args = parser.parse_args()
    enc = gpt2_encoding(args.bpe_dir)
    ordinary = [{"text": t, "ids": enc.encode_ordinary(t)} for t in texts()]
    special = [{"text": t, "ids": enc.encode(t, allowed_special="all")} for t in SPECIAL_TEXTS]
    for case in ordinary:
        assert enc.decode(case["ids"]) == case["text"]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"generator": "tests/reference/make_bpe_fixture.py",
                   "tiktoken": tiktoken.__version__,
                   "ordinary": ordinary, "special": special}, f, ensure_ascii=True)
        f.write("\n")
    print(f"wrote {args.out}: {len(ordinary)} ordinary + {len(special)} special texts")


if __name__ == "__main__":
    main()
