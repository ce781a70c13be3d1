"""An independent PyTorch GPT, written from the math, to check kiln against.

Shared by tests/reference/make_parity_fixture.py (expected logits, loss and gradients for
tests/core/test_parity.cpp) and bench/train_vs_pytorch.py (training speed and loss curve).
Nothing here is derived from kiln's C++; only the parameter names and layouts are shared,
because they are Hugging Face GPT-2's:

    x = wte[tokens] + wpe[positions]                                 (B, T, C)
    pre-LN block:   x = x + Attn(LN1(x));   x = x + MLP(LN2(x))
    post-LN block:  x = LN1(x + Attn(x));   x = LN2(x + MLP(x))       (no final LN)
    logits = LN_f(x) @ wte[:vocab]^T       (pre-LN; post-LN uses x)  (B, T, V)
    Attn: qkv = x @ c_attn.weight (C, 3C) + bias; causal softmax(q k^T / sqrt(hd)) v; c_proj
    MLP:  gelu_tanh(x @ c_fc.weight (C, 4C) + bias) @ c_proj.weight (4C, C) + bias
    loss = sum(mask * CE(logits, targets)) / sum(mask)

Weights are read from a kiln model.safetensors (wte holds only the real vocabulary rows).
Two arithmetic paths: `fused=False` spells out LayerNorm, GELU, softmax and cross-entropy
element by element (the parity fixture uses it, in float64 and float32); `fused=True` uses
torch's own kernels (F.layer_norm, F.gelu(approximate="tanh"), F.cross_entropy), as a plain
PyTorch training script would (the benchmark uses it). The fixture script checks that both agree.

Safetensors are read and written by hand (8-byte little-endian header length, JSON header,
raw little-endian data): the `safetensors` pip package is not a Debian package.
"""

import json
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LN_EPS = 1e-5

# ---------------------------------------------------------------------------------------------
# safetensors

_DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}


def read_safetensors(path):
    """Returns ({name: numpy array}, metadata dict)."""
    with open(path, "rb") as f:
        raw = f.read()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len].decode("utf-8"))
    metadata = header.pop("__metadata__", {}) or {}
    data = raw[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if info["dtype"] == "BF16":
            begin, end = info["data_offsets"]
            bits = np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32) << 16
            tensors[name] = bits.view(np.float32).reshape(info["shape"]).copy()
            continue
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
        tensors[name] = array.astype(dtype.newbyteorder("="))
    return tensors, metadata


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: array} as F32 (float arrays) or I32 (integer arrays), in the given order."""
    header = {}
    blobs = []
    offset = 0
    for name, array in tensors.items():
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.integer):
            dtype, blob = "I32", array.astype("<i4").tobytes()
        else:
            dtype, blob = "F32", array.astype("<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


# ---------------------------------------------------------------------------------------------
# model


@dataclass
class GptConfig:
    n_layer: int
    n_head: int
    n_embd: int
    context: int
    vocab: int
    post_norm: bool = False


def parameter_names(config):
    """Hugging Face GPT-2 names in kiln's order."""
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for layer in range(config.n_layer):
        p = f"transformer.h.{layer}."
        names += [p + s for s in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight",
                                   "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
                                   "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                                   "mlp.c_proj.weight", "mlp.c_proj.bias")]
    if not config.post_norm:
        names += ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    return names


def parameter_shapes(config):
    c, v = config.n_embd, config.vocab
    shapes = {}
    for name in parameter_names(config):
        if name == "transformer.wte.weight":
            shapes[name] = (v, c)
        elif name == "transformer.wpe.weight":
            shapes[name] = (config.context, c)
        elif name.endswith("c_attn.weight"):
            shapes[name] = (c, 3 * c)
        elif name.endswith("c_attn.bias"):
            shapes[name] = (3 * c,)
        elif name.endswith("c_fc.weight"):
            shapes[name] = (c, 4 * c)
        elif name.endswith("c_fc.bias"):
            shapes[name] = (4 * c,)
        elif name.endswith("mlp.c_proj.weight"):
            shapes[name] = (4 * c, c)
        elif name.endswith("attn.c_proj.weight"):
            shapes[name] = (c, c)
        else:  # LayerNorm gains and biases, projection biases
            shapes[name] = (c,)
    return shapes


def decays(name):
    """AdamW weight decay applies to the 2-D matmul weights only (not wte, wpe, LN, biases)."""
    return name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))


def layer_norm(x, weight, bias, fused):
    if fused:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, LN_EPS)
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as LayerNorm defines it
    return (x - mean) / torch.sqrt(var + LN_EPS) * weight + bias


def gelu_tanh(x, fused):
    if fused:
        return F.gelu(x, approximate="tanh")
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def causal_attention(qkv, n_head, fused):
    """qkv (B, T, 3C) -> (B, T, C): explicit masked softmax over the T x T scores."""
    b, t, c3 = qkv.shape
    c = c3 // 3
    hd = c // n_head
    q, k, v = qkv.split(c, dim=-1)
    q = q.view(b, t, n_head, hd).transpose(1, 2)  # (B, NH, T, hd)
    k = k.view(b, t, n_head, hd).transpose(1, 2)
    v = v.view(b, t, n_head, hd).transpose(1, 2)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))  # (B, NH, T, T)
    causal = torch.ones(t, t, dtype=torch.bool, device=qkv.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    if fused:
        probs = torch.softmax(scores, dim=-1)
    else:
        shifted = scores - scores.max(dim=-1, keepdim=True).values
        e = torch.exp(shifted)
        probs = e / e.sum(dim=-1, keepdim=True)
    y = probs @ v  # (B, NH, T, hd)
    return y.transpose(1, 2).reshape(b, t, c)


def cross_entropy(logits, targets, mask, fused):
    """Mean over counted tokens of -log softmax(logits)[target]; mask None counts every token."""
    flat = logits.reshape(-1, logits.shape[-1])
    tgt = targets.reshape(-1)
    if fused:
        per_token = F.cross_entropy(flat, tgt, reduction="none")
    else:
        per_token = torch.logsumexp(flat, dim=-1) - flat.gather(1, tgt[:, None])[:, 0]
    if mask is None:
        return per_token.mean()
    m = mask.reshape(-1).to(per_token.dtype)
    return (per_token * m).sum() / m.sum()


class ReferenceGpt:
    """Parameters as a dict of leaf tensors keyed by Hugging Face names."""

    def __init__(self, config, params, dtype=torch.float32, fused=False):
        self.config = config
        self.fused = fused
        shapes = parameter_shapes(config)
        self.params = {}
        for name in parameter_names(config):
            array = np.asarray(params[name])
            if name == "transformer.wte.weight":
                array = array[: config.vocab]  # a padded embedding keeps its real rows only
            if tuple(array.shape) != shapes[name]:
                raise ValueError(f"{name}: shape {array.shape}, expected {shapes[name]}")
            tensor = torch.tensor(np.array(array), dtype=dtype)
            self.params[name] = tensor.requires_grad_(True)

    @staticmethod
    def from_safetensors(path, config, dtype=torch.float32, fused=False):
        tensors, _ = read_safetensors(path)
        return ReferenceGpt(config, tensors, dtype, fused)

    def block(self, layer, x):
        p = lambda s: self.params[f"transformer.h.{layer}.{s}"]
        nh, fused = self.config.n_head, self.fused

        def attn(h):
            qkv = h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
            return causal_attention(qkv, nh, fused) @ p("attn.c_proj.weight") + p("attn.c_proj.bias")

        def mlp(h):
            hidden = gelu_tanh(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"), fused)
            return hidden @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")

        if self.config.post_norm:
            x = layer_norm(x + attn(x), p("ln_1.weight"), p("ln_1.bias"), fused)
            return layer_norm(x + mlp(x), p("ln_2.weight"), p("ln_2.bias"), fused)
        x = x + attn(layer_norm(x, p("ln_1.weight"), p("ln_1.bias"), fused))
        return x + mlp(layer_norm(x, p("ln_2.weight"), p("ln_2.bias"), fused))

    def logits(self, inputs):
        """inputs (B, T) int64 -> logits (B, T, vocab)."""
        t = inputs.shape[1]
        wte = self.params["transformer.wte.weight"]
        x = wte[inputs] + self.params["transformer.wpe.weight"][:t]
        for layer in range(self.config.n_layer):
            x = self.block(layer, x)
        if not self.config.post_norm:
            x = layer_norm(x, self.params["transformer.ln_f.weight"],
                           self.params["transformer.ln_f.bias"], self.fused)
        return x @ wte.t()

    def loss(self, inputs, targets, mask=None):
        """Returns (logits, mean masked cross-entropy)."""
        logits = self.logits(inputs)
        return logits, cross_entropy(logits, targets, mask, self.fused)

    def zero_grad(self):
        for tensor in self.params.values():
            tensor.grad = None


# ---------------------------------------------------------------------------------------------
# training, with kiln's optimizer semantics


def make_adamw(model, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
    """torch.optim.AdamW with decay on the matmul weights only, as kiln marks its parameters
    (the model's own `decays(name)` where it has one: llama_torch.ReferenceLlama)."""
    decides = getattr(model, "decays", decays)
    decay = [t for n, t in model.params.items() if decides(n)]
    rest = [t for n, t in model.params.items() if not decides(n)]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=False)


def clip_gradients(model, clip):
    """Global-norm clipping as kiln does it: norm in float64; if norm > clip, every gradient
    is multiplied by clip / (norm + 1e-6). Returns (norm, scale)."""
    grads = [t.grad for t in model.params.values() if t.grad is not None]
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    scale = 1.0
    if clip > 0 and norm > clip:
        scale = clip / (norm + 1e-6)
        for g in grads:
            g.mul_(scale)
    return norm, scale


def train_step(model, optimizer, inputs, targets, clip=1.0, mask=None):
    """One optimizer step on one batch; returns the loss before the update."""
    model.zero_grad()
    _, loss = model.loss(inputs, targets, mask)
    loss.backward()
    clip_gradients(model, clip)
    optimizer.step()
    return float(loss)
