"""DMC (Dynamic Memory Compression, Nawrot et al., arXiv 2403.09636) in its training form.

The engine's `dmc:mode=learned` (kvcache/dmc_policy.cc, docs/compression.md) runs the released
code's inference algorithm: per (layer, KV head), with D = head_dim and G query heads per KV head,

    alpha_t = [k_t[D-1] - 5 > 0]                       1: merge into the tail slot, 0: append
    omega_t = sigmoid(mean_g q_t,g[D-1] + 5) + 2^-7    importance weight
    k[D-1] = q[D-1] = 0 before attention (and after RoPE)
    slot    = RoPE_t(sum of omega k over the run's last `window` tokens / sum of omega)

This module computes the same thing for all positions at once, as DMC trains it: every position
holds the partial accumulation of its run (a windowed, alpha-decayed weighted sum), and query i
sees key j < i only if j ends a run (bias log(1 - alpha_{j+1})) plus itself. With hard decisions
(`hard=True`) it equals the engine's sequential algorithm; for training, alpha is relaxed with a
Gumbel-sigmoid (temperature 0.1), as in the released code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import apply_rope, grouped_attention

INIT_VAL = 5.0
OMEGA_EPS = 2.0**-7
WINDOW = 12


class DmcAttention:
    """attention(layer, q, k, v, cos, sin) for Llama.forward. After a call, `alphas` holds the
    decision of every (layer) as [B, T, Hkv] (soft or hard) for the compression loss."""

    def __init__(self, config, hard: bool, tau: float = 0.1, window: int = WINDOW,
                 zero_out: float = 1.0, merge: bool = True, generator=None):
        self.config = config
        self.hard = hard
        self.tau = tau
        self.window = window
        # Stage 1 of the retrofit: the repurposed element is faded out of attention
        # (zero_out 0 -> 1) while no token merges (merge=False).
        self.zero_out = zero_out
        self.merge = merge
        self.generator = generator
        self.alphas: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []

    def decisions(self, k, q):
        c = self.config
        d = c.head_dim
        bsz, t, n_kv, _ = k.shape
        g = c.n_head // n_kv
        a_logit = k[..., d - 1] - INIT_VAL  # [B,T,Hkv]
        w_logit = q[..., d - 1].reshape(bsz, t, n_kv, g).mean(-1) + INIT_VAL
        omega = torch.sigmoid(w_logit) + OMEGA_EPS
        if not self.merge:
            alpha = torch.zeros_like(a_logit)
        elif self.hard:
            alpha = (a_logit > 0).to(k.dtype)
        else:
            u = torch.rand(a_logit.shape + (2,), generator=self.generator).clamp(1e-6, 1 - 1e-6)
            gumbel = -torch.log(-torch.log(u))
            alpha = torch.sigmoid((a_logit + gumbel[..., 0] - gumbel[..., 1]) / self.tau)
        # The first token of a sequence always appends.
        alpha = torch.cat((torch.zeros_like(alpha[:, :1]), alpha[:, 1:]), dim=1)
        return alpha, omega, a_logit

    def __call__(self, layer, q, k, v, cos, sin):
        c = self.config
        d = c.head_dim
        bsz, t, n_kv, _ = k.shape
        alpha, omega, a_logit = self.decisions(k, q)
        self.alphas.append(alpha)
        self.logits.append(a_logit)
        keep = torch.ones(d, dtype=q.dtype)
        keep[d - 1] = 1.0 - self.zero_out
        q = q * keep
        k = k * keep

        # The partial accumulation of position i: sum over i - window < j <= i of
        # omega_j * prod_{m=j+1..i} alpha_m * (k_j, v_j, 1), a band of `window` offsets.
        if self.hard:
            runs = torch.cumsum(1.0 - alpha, dim=1)  # a new run starts where alpha = 0
        else:
            logs = torch.cumsum(torch.log(alpha.clamp_min(1e-12)), dim=1)
        span = self.window if self.window > 0 else t
        k_sum = torch.zeros_like(k)
        v_sum = torch.zeros_like(v)
        w_sum = torch.zeros_like(omega)
        for off in range(min(span, t)):
            n = t - off  # positions i >= off, paired with j = i - off
            if self.hard:
                decay = (runs[:, off:] == runs[:, :n]).to(k.dtype)
            else:
                decay = torch.exp(logs[:, off:] - logs[:, :n])
            w = decay * omega[:, :n]
            pad = (0, 0, 0, 0, off, 0)  # back to T positions: the first `off` get nothing
            k_sum = k_sum + F.pad(w[..., None] * k[:, :n], pad)
            v_sum = v_sum + F.pad(w[..., None] * v[:, :n], pad)
            w_sum = w_sum + F.pad(w, pad[2:])
        k_acc = k_sum / w_sum[..., None]
        v_acc = v_sum / w_sum[..., None]
        a = alpha.permute(0, 2, 1)  # [B,Hkv,T]

        q = apply_rope(q, cos, sin, c.n_rot)
        k_acc = apply_rope(k_acc, cos, sin, c.n_rot)
        if c.n_rot == d:  # RoPE mixes element D-2 into D-1: zero it again
            q = q * keep
            k_acc = k_acc * keep

        # Query i sees key j < i iff alpha_{j+1} = 0 (j ends its run), and always itself.
        nxt = torch.cat((a[..., 1:], torch.zeros_like(a[..., :1])), dim=-1)  # alpha_{j+1}
        if self.hard:
            closed = torch.where(nxt > 0.5, float("-inf"), 0.0)
        else:
            closed = torch.log((1.0 - nxt).clamp_min(1e-6))
        bias = closed[..., None, :].expand(bsz, n_kv, t, t)
        eye = torch.eye(t, dtype=torch.bool)
        bias = bias.masked_fill(eye, 0.0)
        return grouped_attention(q, k_acc, v_acc, bias)


def kv_ratio(alphas: list[torch.Tensor]) -> float:
    """Slots kept per token over layers, heads, sequences (hard decisions): 1 - mean alpha."""
    a = torch.stack([x.float() for x in alphas])
    return float(1.0 - a.mean())


def compression_loss(alphas: list[torch.Tensor], target_ratio: float) -> torch.Tensor:
    """DMC's one-sided loss: mean over sequences of max(0, (1 - 1/CR) - mean alpha), the mean
    taken over layers, heads and positions after the first."""
    a = torch.stack([x[:, 1:] for x in alphas])  # [L,B,T-1,Hkv]
    per_seq = a.mean(dim=(0, 2, 3))
    return torch.relu((1.0 - 1.0 / target_ratio) - per_seq).mean()
