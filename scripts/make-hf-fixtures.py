#!/usr/bin/env python3
"""Makes the tiny Hugging Face models kiln's interop tests read (tests/fixtures/hf/): a GPT-2 and
a LLaMA (4 heads, 2 key/value heads, untied head), both with 300 tokens (room for the byte
tokenizer's 257, so a run can train them on byte-tokenized text), random weights from a fixed seed, saved with
transformers' save_pretrained (config.json + model.safetensors), and beside each expected.json:
the logits transformers computes for fixed token ids and the greedy continuation `generate`
gives. The tests compare kiln against these files, so `make test` needs neither torch nor
transformers; this script needs both (Debian's python3-torch and transformers 4.36.x from PyPI:
    python3 -m venv --system-site-packages /tmp/hf && /tmp/hf/bin/pip install transformers==4.36.2
    /tmp/hf/bin/python scripts/make-hf-fixtures.py tests/fixtures/hf
). Rerunning it rewrites the same files (fixed seeds, fp32 on the cpu)."""
import json
import os
import sys

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

IDS = [[3, 17, 42, 8, 99, 0, 55, 23, 71, 4, 60, 12], [90, 1, 33, 33, 7, 48, 2, 100, 64, 5, 19, 86]]
NEW_TOKENS = 8


def save(model, out):
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(IDS)).logits
        # Every prompt token counts (an explicit mask: generate would otherwise mask the pad id).
        greedy = model.generate(torch.tensor(IDS), attention_mask=torch.ones(len(IDS), len(IDS[0]), dtype=torch.long),
                                max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, eos_token_id=None)
    expected = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "ids": IDS,
        "logits": logits.tolist(),
        "greedy": [row[len(IDS[0]):] for row in greedy.tolist()],
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)
    print(out, "logits", tuple(logits.shape), "greedy", expected["greedy"])


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hf"
    torch.manual_seed(1234)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                      initializer_range=0.2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    save(gpt2, os.path.join(out, "gpt2"))
    torch.manual_seed(5678)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                                         initializer_range=0.2))
    save(llama, os.path.join(out, "llama"))


if __name__ == "__main__":
    main()
