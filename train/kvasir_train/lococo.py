"""LoCoCo's compressor in PyTorch, as the engine runs it (kvcache/lococo_policy.cc), for training
its convolution with the model frozen.

The sequence goes through the model `chunk` tokens at a time. Each layer keeps, per KV head, a
cache of post-RoPE keys and values: at most `slots` slots plus the current chunk. A chunk's
queries attend to the cache and causally to the chunk; the attention probabilities summed over
the chunk's queries and the heads of the KV group are the slots' scores (hh). When a chunk is
complete and the cache holds more than `slots` slots, it is compressed to `slots`:

  1. the m_h = slots - slots // 2 slots of highest score are kept as they are, in slot order;
  2. the rest R (in slot order) feed a Conv1d over [K_R; V_R] (2 * head_dim channels, kernel
     `kernel`, zero padding), ReLU, softmax over R: the mixing weights Wc [m_c, |R|];
  3. the m_c = slots // 2 slots of R of highest score, in slot order, give one-hot rows Wr;
  4. W = (1 - lambda) Wr + lambda Wc; the fused slots are W K_R and W V_R.

Scores tie-break by slot index (topk over scores that are sums of probabilities: exact ties do
not occur in practice). The cache entering a compression is detached, as in the released code:
the gradient reaches the convolution through the next chunk's attention over the fused slots.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .model import Llama, apply_rope, rms_norm, rope_tables


class LococoCompressor(torch.nn.Module):
    """Per layer: conv weight [m_c, 2 * head_dim, kernel], bias [m_c], lambda (a scalar)."""

    def __init__(self, n_layer: int, head_dim: int, slots: int, kernel: int = 21,
                 lambda_init: float = 0.5, seed: int = 0):
        super().__init__()
        if slots < 2 or kernel < 1 or kernel % 2 == 0:
            raise ValueError("slots >= 2 and an odd kernel are needed")
        self.slots = slots
        self.m_c = slots // 2
        self.kernel = kernel
        gen = torch.Generator().manual_seed(seed)
        in_ch = 2 * head_dim
        bound = 1.0 / math.sqrt(in_ch * kernel)  # Conv1d's default initialization range
        self.weight = torch.nn.ParameterList()
        self.bias = torch.nn.ParameterList()
        self.lam = torch.nn.ParameterList()
        for _ in range(n_layer):
            w = (torch.rand(self.m_c, in_ch, kernel, generator=gen) * 2 - 1) * bound
            b = (torch.rand(self.m_c, generator=gen) * 2 - 1) * bound
            self.weight.append(torch.nn.Parameter(w))
            self.bias.append(torch.nn.Parameter(b))
            self.lam.append(torch.nn.Parameter(torch.tensor(float(lambda_init))))

    def compress(self, layer: int, k: torch.Tensor, v: torch.Tensor, hh: torch.Tensor):
        """k, v [N, L, D] (L > slots), hh [N, L] -> k, v [N, slots, D]."""
        kept, rest, sel = split_slots(hh, self.slots)
        k_h, v_h = gather_slots(k, kept), gather_slots(v, kept)
        k_r, v_r = gather_slots(k, rest), gather_slots(v, rest)
        # 2) Convolution weights over the rest.
        x = torch.cat((k_r, v_r), dim=2).transpose(1, 2)  # [N, 2D, S']
        y = F.conv1d(x, self.weight[layer], self.bias[layer], padding=(self.kernel - 1) // 2)
        wc = torch.softmax(F.relu(y), dim=2)  # [N, m_c, S']
        # 3) One-hot rows: the selected slots of the rest.
        wr = torch.zeros_like(wc).scatter_(2, sel[..., None], 1.0)
        lam = self.lam[layer]
        w = (1 - lam) * wr + lam * wc
        return torch.cat((k_h, w @ k_r), dim=1), torch.cat((v_h, w @ v_r), dim=1)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors kvcache/lococo_weights.h reads."""
        out = {}
        for layer in range(len(self.weight)):
            out[f"layers.{layer}.conv.weight"] = self.weight[layer].detach().contiguous()
            out[f"layers.{layer}.conv.bias"] = self.bias[layer].detach().contiguous()
            out[f"layers.{layer}.lambda"] = self.lam[layer].detach().reshape(1).contiguous()
        return out


def lococo_forward(model: Llama, comp: LococoCompressor | None, tokens: torch.Tensor, slots: int,
                   chunk: int) -> tuple[torch.Tensor, list[int]]:
    """Logits [B, T, vocab] of the frozen model with a LoCoCo cache (comp None: lambda = 0, the
    heavy-hitter selection), and the slots each layer held after each chunk (for the ratio)."""
    c = model.config
    bsz, t = tokens.shape
    g = c.n_head // c.n_head_kv
    d = c.head_dim
    scale = 1.0 / math.sqrt(d)
    cos_all, sin_all = rope_tables(c, torch.arange(t))
    kc = [torch.zeros(bsz, c.n_head_kv, 0, d) for _ in range(c.n_layer)]
    vc = [torch.zeros(bsz, c.n_head_kv, 0, d) for _ in range(c.n_layer)]
    outs = []
    held = []
    for t0 in range(0, t, chunk):
        t1 = min(t, t0 + chunk)
        n = t1 - t0
        cos, sin = cos_all[t0:t1], sin_all[t0:t1]
        x = model.w["token_embd.weight"][tokens[:, t0:t1]]
        for layer in range(c.n_layer):
            q, k, v = model.qkv(x, layer, False)
            q = apply_rope(q, cos, sin, c.n_rot)
            k = apply_rope(k, cos, sin, c.n_rot)
            keys = torch.cat((kc[layer], k.transpose(1, 2)), dim=2)  # [B, Hkv, L, D]
            vals = torch.cat((vc[layer], v.transpose(1, 2)), dim=2)
            length = keys.shape[2]
            qh = q.view(bsz, n, c.n_head_kv, g, d).permute(0, 2, 3, 1, 4)  # [B, Hkv, g, n, D]
            s = (qh @ keys[:, :, None].transpose(-1, -2)) * scale  # [B, Hkv, g, n, L]
            old = length - n
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            mask = torch.cat((torch.ones(n, old, dtype=torch.bool), causal), dim=1)
            p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
            o = (p @ vals[:, :, None]).permute(0, 3, 1, 2, 4).reshape(bsz, n, c.n_embd)
            x = x + model.project(o, f"blk.{layer}.attn_output", False)
            x = model.ffn(x, layer, False)
            if t1 % chunk == 0 and length > slots:
                hh = p.detach().sum(dim=(2, 3)).reshape(bsz * c.n_head_kv, length)
                kf = keys.detach().reshape(bsz * c.n_head_kv, length, d)
                vf = vals.detach().reshape(bsz * c.n_head_kv, length, d)
                if comp is None:
                    nk, nv = heavy_hitters(kf, vf, hh, slots)
                else:
                    nk, nv = comp.compress(layer, kf, vf, hh)
                kc[layer] = nk.reshape(bsz, c.n_head_kv, slots, d)
                vc[layer] = nv.reshape(bsz, c.n_head_kv, slots, d)
            else:
                kc[layer], vc[layer] = keys.detach(), vals.detach()
        held.append(kc[0].shape[2])
        h = rms_norm(x, model.w["output_norm.weight"], c.rms_eps)
        outs.append(h @ model.w["output.weight"].T)
    return torch.cat(outs, dim=1), held


def split_slots(hh: torch.Tensor, slots: int):
    """Indices, each in slot order, for a compression of tables scored hh [N, L] to `slots`:
    the slots - slots // 2 heavy hitters kept, the rest, and (as positions into the rest) the
    slots // 2 best-scored of the rest, which give the one-hot rows."""
    n, length = hh.shape
    m_c = slots // 2
    m_h = slots - m_c
    kept = torch.topk(hh, m_h, dim=1).indices.sort(dim=1).values  # [N, m_h]
    is_kept = torch.zeros(n, length, dtype=torch.bool).scatter_(1, kept, True)
    # The rest, in slot order: a stable sort puts the 0s (not kept) first.
    rest = torch.sort(is_kept.to(torch.int8), dim=1, stable=True).indices[:, :length - m_h]
    sel = torch.topk(hh.gather(1, rest), m_c, dim=1).indices.sort(dim=1).values
    return kept, rest, sel


def gather_slots(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [N, L, D], idx [N, S] -> [N, S, D]."""
    return t.gather(1, idx[..., None].expand(-1, -1, t.shape[2]))


def heavy_hitters(k: torch.Tensor, v: torch.Tensor, hh: torch.Tensor, slots: int):
    """lambda = 0: the slots of highest score, in slot order (what compress() reduces to)."""
    kept, rest, sel = split_slots(hh, slots)
    chosen = torch.cat((kept, rest.gather(1, sel)), dim=1)
    return gather_slots(k, chosen), gather_slots(v, chosen)
