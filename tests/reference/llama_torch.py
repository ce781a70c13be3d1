"""An independent PyTorch LLaMA, written from the math, to check kiln against.

Used by bench/train_vs_pytorch.py (training speed and loss curve of kiln's `model.arch: llama`).
Nothing here is derived from kiln's C++; the parameter names and layouts are Hugging Face's
LlamaForCausalLM ones, which is how kiln saves a LLaMA-family model:

    x = embed_tokens[tokens]                                               (B, T, C)
    block:  x = x + Attn(RMSNorm_in(x));   x = x + MLP(RMSNorm_post(x))
    logits = RMSNorm_f(x) @ lm_head^T                                       (B, T, V)
    RMSNorm(x) = x / sqrt(mean(x^2) + eps) * weight
    Attn: q = x Wq^T (H heads), k = x Wk^T, v = x Wv^T (K heads each, K dividing H: query head h
          reads key/value head h // (H / K)); rotary embeddings on q and k; causal
          softmax(q k^T / sqrt(hd)) v; o_proj
    RoPE: Hugging Face's "rotate half" layout: for frequency i < hd/2, dimension i pairs with
          i + hd/2; angle = position * theta^(-2i/hd)
    MLP:  down(silu(gate(x)) * up(x))
    loss = mean cross-entropy over the tokens

Linear weights are (out, in) as torch.nn.Linear holds them; the embedding and lm_head hold the
real vocabulary rows only. The forward uses torch's own kernels (F.linear, F.silu, softmax,
F.cross_entropy), as a plain PyTorch training script on this Debian's torch would.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gpt_torch import read_safetensors


@dataclass
class LlamaConfig:
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    ffn: int
    vocab: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0


def parameter_shapes(config):
    """Hugging Face LlamaForCausalLM names and shapes (untied head)."""
    c, f, v = config.n_embd, config.ffn, config.vocab
    hd = c // config.n_head
    kv = config.n_kv_head * hd
    shapes = {"model.embed_tokens.weight": (v, c)}
    for layer in range(config.n_layer):
        p = f"model.layers.{layer}."
        shapes.update({p + "input_layernorm.weight": (c,),
                       p + "self_attn.q_proj.weight": (c, c),
                       p + "self_attn.k_proj.weight": (kv, c),
                       p + "self_attn.v_proj.weight": (kv, c),
                       p + "self_attn.o_proj.weight": (c, c),
                       p + "post_attention_layernorm.weight": (c,),
                       p + "mlp.gate_proj.weight": (f, c),
                       p + "mlp.up_proj.weight": (f, c),
                       p + "mlp.down_proj.weight": (c, f)})
    shapes["model.norm.weight"] = (c,)
    shapes["lm_head.weight"] = (v, c)
    return shapes


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def rotary_tables(t, hd, theta, dtype):
    """cos and sin (T, hd) for positions 0..t-1, each frequency repeated for both halves."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    angles = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x, cos, sin):
    """x (B, heads, T, hd): x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class ReferenceLlama:
    """Parameters as a dict of leaf tensors keyed by Hugging Face names."""

    def __init__(self, config, params, dtype=torch.float32):
        self.config = config
        if config.n_head % config.n_kv_head:
            raise ValueError(f"n_kv_head {config.n_kv_head} does not divide n_head {config.n_head}")
        self.params = {}
        for name, shape in parameter_shapes(config).items():
            if name not in params:
                raise ValueError(f"{name} is missing")
            array = np.asarray(params[name])
            if name in ("model.embed_tokens.weight", "lm_head.weight"):
                array = array[: config.vocab]
            if tuple(array.shape) != shape:
                raise ValueError(f"{name}: shape {array.shape}, expected {shape}")
            self.params[name] = torch.tensor(np.array(array), dtype=dtype).requires_grad_(True)

    @staticmethod
    def from_safetensors(path, config, dtype=torch.float32):
        tensors, _ = read_safetensors(path)
        return ReferenceLlama(config, tensors, dtype)

    @staticmethod
    def decays(name):
        """AdamW decays the matmul weights and the untied head, not the embedding or the norms."""
        return name.endswith("_proj.weight") or name == "lm_head.weight"

    def attention(self, layer, h, cos, sin):
        p = lambda s: self.params[f"model.layers.{layer}.self_attn.{s}"]
        b, t, c = h.shape
        nh, nkv = self.config.n_head, self.config.n_kv_head
        hd = c // nh
        q = F.linear(h, p("q_proj.weight")).view(b, t, nh, hd).transpose(1, 2)
        k = F.linear(h, p("k_proj.weight")).view(b, t, nkv, hd).transpose(1, 2)
        v = F.linear(h, p("v_proj.weight")).view(b, t, nkv, hd).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if nkv != nh:  # each key/value head serves n_head / n_kv_head consecutive query heads
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        y = (probs @ v).transpose(1, 2).reshape(b, t, c)
        return F.linear(y, p("o_proj.weight"))

    def mlp(self, layer, h):
        p = lambda s: self.params[f"model.layers.{layer}.mlp.{s}"]
        hidden = F.silu(F.linear(h, p("gate_proj.weight"))) * F.linear(h, p("up_proj.weight"))
        return F.linear(hidden, p("down_proj.weight"))

    def logits(self, inputs):
        """inputs (B, T) int64 -> logits (B, T, vocab)."""
        cfg = self.config
        t = inputs.shape[1]
        x = self.params["model.embed_tokens.weight"][inputs]
        cos, sin = rotary_tables(t, cfg.n_embd // cfg.n_head, cfg.rope_theta, x.dtype)
        for layer in range(cfg.n_layer):
            p = lambda s: self.params[f"model.layers.{layer}.{s}"]
            x = x + self.attention(layer, rms_norm(x, p("input_layernorm.weight"), cfg.norm_eps), cos, sin)
            x = x + self.mlp(layer, rms_norm(x, p("post_attention_layernorm.weight"), cfg.norm_eps))
        x = rms_norm(x, self.params["model.norm.weight"], cfg.norm_eps)
        return F.linear(x, self.params["lm_head.weight"])

    def loss(self, inputs, targets, mask=None):
        """Returns (logits, mean cross-entropy over the tokens mask counts; all when None)."""
        logits = self.logits(inputs)
        per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                    reduction="none")
        if mask is None:
            return logits, per_token.mean()
        m = mask.reshape(-1).to(per_token.dtype)
        return logits, (per_token * m).sum() / m.sum()

    def zero_grad(self):
        for tensor in self.params.values():
            tensor.grad = None
