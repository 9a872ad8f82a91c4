"""A Llama forward pass in PyTorch over Kvasir's model files (GGUF), with LoRA adapters.

The forward follows the C++ engine (worker/cpu_model_runner.cc): RMSNorm, q/k/v projections,
RoPE in the file's layout, grouped-query attention scaled by 1/sqrt(head_dim), SwiGLU feed-forward,
a final norm and the output layer (the embedding when tied). GGUF files store the q/k rows
permuted for adjacent-pair RoPE (pairs 2i, 2i+1), so that is the layout used here; adapters are
trained on, and merged into, the tensors as the file stores them.

Every tensor is dequantized to float32 on load (the engine computes quantized weights with 8-bit
activations, so its logits differ from these by that rounding).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from . import PROJECTIONS


@dataclasses.dataclass
class LlamaConfig:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    rms_eps: float
    rope_base: float
    n_rot: int

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ValueError(f"GGUF file lacks {key}")
        return default
    return field.contents()


def load_gguf(path: str) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """Reads a llama-architecture GGUF file: its config and every tensor as float32."""
    import gguf  # optional dependency, installed with scripts/install-deps.sh --train

    reader = gguf.GGUFReader(path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r}, only llama is supported")
    n_embd = int(_field(reader, "llama.embedding_length"))
    n_head = int(_field(reader, "llama.attention.head_count"))
    tensors = {}
    for t in reader.tensors:
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = np.asarray(t.data, dtype=np.float32)
        else:
            data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[t.name] = torch.from_numpy(data.reshape(shape).copy())
    n_vocab = tensors["token_embd.weight"].shape[0]
    config = LlamaConfig(
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=int(_field(reader, "llama.block_count")),
        n_head=n_head,
        n_head_kv=int(_field(reader, "llama.attention.head_count_kv", n_head)),
        n_ff=int(_field(reader, "llama.feed_forward_length")),
        rms_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_base=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        n_rot=int(_field(reader, "llama.rope.dimension_count", n_embd // n_head)),
    )
    if "output.weight" not in tensors:
        tensors["output.weight"] = tensors["token_embd.weight"]
    return config, tensors


class LoRA(torch.nn.Module):
    """Low-rank adapters: W' = W + scale * B @ A for each adapted projection of each layer."""

    def __init__(self, config: LlamaConfig, tensors: dict[str, torch.Tensor], rank: int,
                 alpha: float, projections=PROJECTIONS, seed: int = 0):
        super().__init__()
        self.rank = rank
        self.alpha = alpha
        self.scale = alpha / rank
        self.projections = tuple(projections)
        gen = torch.Generator().manual_seed(seed)
        self.a = torch.nn.ParameterDict()
        self.b = torch.nn.ParameterDict()
        for layer in range(config.n_layer):
            for proj in self.projections:
                name = f"blk.{layer}.{proj}"
                out_dim, in_dim = tensors[name + ".weight"].shape
                # A random, B zero: the adapted model starts as the base model.
                a = torch.randn(rank, in_dim, generator=gen) / math.sqrt(in_dim)
                self.a[name.replace(".", "_")] = torch.nn.Parameter(a)
                self.b[name.replace(".", "_")] = torch.nn.Parameter(torch.zeros(out_dim, rank))

    def delta(self, name: str):
        key = name.replace(".", "_")
        if key not in self.a:
            return None
        return self.a[key], self.b[key]

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """The inverse of state_tensors (names and shapes checked by the caller)."""
        with torch.no_grad():
            for key in self.a:
                name = key.replace("_", ".", 2)
                self.a[key].copy_(tensors[name + ".lora_a"])
                self.b[key].copy_(tensors[name + ".lora_b"])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The adapter as the artifact stores it: NAME.lora_a [r, in], NAME.lora_b [out, r]."""
        out = {}
        for key in self.a:
            name = key.replace("_", ".", 2)  # blk_0_attn_q -> blk.0.attn_q
            out[name + ".lora_a"] = self.a[key].detach().contiguous()
            out[name + ".lora_b"] = self.b[key].detach().contiguous()
        return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_tables(config: LlamaConfig, positions: torch.Tensor):
    """cos/sin [T, n_rot/2] for adjacent-pair RoPE, computed in float64 like the engine."""
    half = config.n_rot // 2
    inv = config.rope_base ** (-2.0 * torch.arange(half, dtype=torch.float64) / config.n_rot)
    angle = positions.to(torch.float64)[:, None] * inv[None, :]
    return torch.cos(angle).float(), torch.sin(angle).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_rot: int) -> torch.Tensor:
    """x [..., T, heads, D]: rotates the pairs (2i, 2i+1) for i < n_rot/2 (GGUF layout)."""
    rot = x[..., :n_rot]
    even, odd = rot[..., 0::2], rot[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    r_even = even * c - odd * s
    r_odd = even * s + odd * c
    rotated = torch.stack((r_even, r_odd), dim=-1).flatten(-2)
    return torch.cat((rotated, x[..., n_rot:]), dim=-1)


class Llama(torch.nn.Module):
    """The frozen base model plus optional adapters. `attention` is replaceable per call so that
    a KV method (DMC) can supply its own attention over the pre-RoPE q, k, v."""

    def __init__(self, config: LlamaConfig, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.config = config
        self.w = {k: v.requires_grad_(False) for k, v in tensors.items()}
        self.lora: LoRA | None = None

    def project(self, x: torch.Tensor, name: str, use_lora: bool = True) -> torch.Tensor:
        y = x @ self.w[name + ".weight"].T
        if use_lora and self.lora is not None:
            d = self.lora.delta(name)
            if d is not None:
                a, b = d
                y = y + self.lora.scale * ((x @ a.T) @ b.T)
        return y

    def forward(self, tokens: torch.Tensor, attention=None, use_lora: bool = True,
                return_hidden: bool = False):
        """tokens [B, T] -> logits [B, T, vocab]. `attention(layer, q, k, v, cos, sin)` gets
        pre-RoPE q [B,T,H,D], k, v [B,T,Hkv,D] and returns [B,T,H,D]; None is full causal."""
        c = self.config
        bsz, t = tokens.shape
        x = self.w["token_embd.weight"][tokens]
        cos, sin = rope_tables(c, torch.arange(t))
        attention = attention or self.full_attention
        for layer in range(c.n_layer):
            q, k, v = self.qkv(x, layer, use_lora)
            o = attention(layer, q, k, v, cos, sin).reshape(bsz, t, c.n_embd)
            x = self.ffn(x + self.project(o, f"blk.{layer}.attn_output", use_lora), layer, use_lora)
        x = rms_norm(x, self.w["output_norm.weight"], c.rms_eps)
        logits = x @ self.w["output.weight"].T
        return (logits, x) if return_hidden else logits

    def qkv(self, x, layer: int, use_lora: bool = True):
        """The pre-RoPE q [B,T,H,D], k, v [B,T,Hkv,D] of `layer` for the residual stream x."""
        c = self.config
        bsz, t = x.shape[:2]
        p = f"blk.{layer}."
        h = rms_norm(x, self.w[p + "attn_norm.weight"], c.rms_eps)
        q = self.project(h, p + "attn_q", use_lora).view(bsz, t, c.n_head, c.head_dim)
        k = self.project(h, p + "attn_k", use_lora).view(bsz, t, c.n_head_kv, c.head_dim)
        v = self.project(h, p + "attn_v", use_lora).view(bsz, t, c.n_head_kv, c.head_dim)
        return q, k, v

    def ffn(self, x, layer: int, use_lora: bool = True):
        """x plus the feed-forward block of `layer`."""
        p = f"blk.{layer}."
        h = rms_norm(x, self.w[p + "ffn_norm.weight"], self.config.rms_eps)
        g = self.project(h, p + "ffn_gate", use_lora)
        u = self.project(h, p + "ffn_up", use_lora)
        return x + self.project(F.silu(g) * u, p + "ffn_down", use_lora)

    def full_attention(self, layer, q, k, v, cos, sin):
        c = self.config
        q = apply_rope(q, cos, sin, c.n_rot)
        k = apply_rope(k, cos, sin, c.n_rot)
        return grouped_attention(q, k, v, bias=None)


def grouped_attention(q, k, v, bias):
    """q [B,T,H,D], k, v [B,T,Hkv,D]; causal softmax(q k^T / sqrt(D) + bias) v, bias
    [B,Hkv,T,T] (or None) shared by the query heads of a KV head. Returns [B,T,H,D]."""
    bsz, t, n_head, d = q.shape
    g = n_head // k.shape[2]
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))  # [B,heads,T,D]
    if bias is None:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)
    else:
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        mask = bias.masked_fill(~causal, float("-inf")).repeat_interleave(g, dim=1)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2)


@torch.no_grad()
def sample(model: Llama, n_seq: int, length: int, bos: int, temperature: float = 1.0,
           seed: int = 0, batch: int = 64) -> torch.Tensor:
    """Text the base model generates: n_seq sequences of `length` tokens starting with BOS,
    sampled at `temperature` with a KV cache (the adapters are not used)."""
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    out = []
    cos, sin = rope_tables(c, torch.arange(length))
    for start in range(0, n_seq, batch):
        b = min(batch, n_seq - start)
        seq = torch.full((b, length), bos, dtype=torch.long)
        kc = [torch.zeros(b, length, c.n_head_kv, c.head_dim) for _ in range(c.n_layer)]
        vc = [torch.zeros(b, length, c.n_head_kv, c.head_dim) for _ in range(c.n_layer)]
        for pos in range(length - 1):
            x = model.w["token_embd.weight"][seq[:, pos]][:, None]
            cs, sn = cos[pos:pos + 1], sin[pos:pos + 1]
            for layer in range(c.n_layer):
                q, k, v = model.qkv(x, layer, False)
                kc[layer][:, pos] = apply_rope(k, cs, sn, c.n_rot)[:, 0]
                vc[layer][:, pos] = v[:, 0]
                q = apply_rope(q, cs, sn, c.n_rot)
                g = c.n_head // c.n_head_kv
                qh = q.view(b, c.n_head_kv, g, c.head_dim)
                keys = kc[layer][:, :pos + 1].permute(0, 2, 1, 3)  # [b,Hkv,T,D]
                vals = vc[layer][:, :pos + 1].permute(0, 2, 1, 3)
                att = torch.softmax(qh @ keys.transpose(-1, -2) / math.sqrt(c.head_dim), -1)
                o = (att @ vals).reshape(b, 1, c.n_embd)
                x = x + model.project(o, f"blk.{layer}.attn_output", False)
                x = model.ffn(x, layer, False)
            x = rms_norm(x, model.w["output_norm.weight"], c.rms_eps)
            logits = (x @ model.w["output.weight"].T)[:, 0]
            probs = torch.softmax(logits / temperature, dim=-1)
            seq[:, pos + 1] = torch.multinomial(probs, 1, generator=gen)[:, 0]
        out.append(seq)
    return torch.cat(out)
