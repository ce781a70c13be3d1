#!/usr/bin/env python3
"""kiln checkpoints in transformers: AutoModelForCausalLM.from_pretrained(checkpoint folder)
loads a kiln-trained GPT-2 and a kiln-trained LLaMA (4 query heads sharing 2 key/value heads;
config.json beside model.safetensors), and
its greedy continuation of a prompt equals `kiln sample --temperature 0`'s, token for token.

    tests/hf/from_pretrained.py KILN_BINARY WORK_DIR

Exits 77 (ctest: skipped) when torch or transformers is not importable: `make test` does not
install them (the fixtures in tests/fixtures/hf cover reading); scripts/make-hf-fixtures.py
says how to get them."""
import os
import subprocess
import sys

try:
    import torch
    from transformers import AutoModelForCausalLM
except ImportError as e:  # not installed: skip
    print(f"skipped: {e} (install python3-torch and transformers==4.36.2 to run this check)")
    sys.exit(77)

kiln, work = sys.argv[1], sys.argv[2]
source = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
prompt, new_tokens = "Q: What is", 20
failures = 0
for arch in ("gpt2", "llama"):
    run = os.path.join(work, arch)
    subprocess.run([kiln, "train", os.path.join(source, "configs/quickstart.yaml"), f"model.arch={arch}",
                    "model.n_layer=2", "model.n_embd=64", "model.n_head=4", "model.mlp_multiple_of=32",
                    "model.init_std=0.4", "train.max_steps=2", "train.micro_batch=4", "checkpoint.every=2", "log.every=2",
                    "train.eval_every=2", f"train.run_dir={run}", "--overwrite"]
                   + (["model.n_kv_head=2"] if arch == "llama" else []), check=True,
                   stdout=subprocess.DEVNULL)
    checkpoint = os.path.join(run, "checkpoints", sorted(os.listdir(os.path.join(run, "checkpoints")))[-1])
    out = subprocess.run([kiln, "sample", "--checkpoint", checkpoint, "--prompt", prompt, "--max-tokens",
                          str(new_tokens), "--temperature", "0", "--no-stop", "--ids"],
                         check=True, capture_output=True).stdout.decode("utf-8", "replace")
    ids_line = [line for line in out.splitlines() if line.strip().startswith("ids:")][-1]
    kiln_ids = [int(t) for t in ids_line.split(":", 1)[1].split()]
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    prompt_ids = list(prompt.encode())  # the byte tokenizer
    with torch.no_grad():
        hf = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                            max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    hf_ids = hf[0, len(prompt_ids):].tolist()
    ok = hf_ids == kiln_ids[-new_tokens:]
    failures += not ok
    print(f"{arch}: {type(model).__name__} from {checkpoint}: greedy tokens {'equal' if ok else 'DIFFER'}", kiln_ids[-new_tokens:])
    if not ok:
        print("  kiln:", kiln_ids[-new_tokens:], "\n  transformers:", hf_ids)
sys.exit(1 if failures else 0)
