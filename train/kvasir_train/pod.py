"""PoD (Proximal tokens over Distant tokens, arXiv 2412.02252) in PyTorch, as the engine runs it.

The engine's `pod` policy (kvcache/pod_policy.cc, docs/compression.md): in layer l, KV head h,
with anchor layer a = anchor(l, h) (the lowest layer of the (l, h)'s group, kvcache/pod_groups.h),
the query at position i scores key position j <= i with

    j proximal (j < sink or j > i - window):   q_{l,i} . k_{l,j}     the layer's own key
    j distant  (sink <= j <= i - window):      q_{l,i} . k_{a,j}     the anchor layer's key

and the softmax over all j <= i weighs the layer's own values v_{l,j}. Queries and keys are
post-RoPE, each key rotated at its own position j (the anchor's table holds its keys as the
anchor layer wrote them). The engine merges the partial attentions of the proximal and distant
runs by log-sum-exp, which is one softmax over the union: ordinary attention over a mixed key
matrix. Here that is one scaled-dot-product attention over 2T keys, [own keys; anchor keys],
each masked to its band, with the values [v; v].
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from .model import apply_rope, grouped_attention


def fixed_anchors(n_layer: int, n_head_kv: int, group_size: int) -> list[list[int]]:
    """anchor[l][h] for groups of `group_size` consecutive layers (PodGroups::FixedSize)."""
    if group_size < 1:
        raise ValueError("group_size must be >= 1")
    return [[(l // group_size) * group_size] * n_head_kv for l in range(n_layer)]


def file_anchors(path: str, n_layer: int, n_head_kv: int):
    """anchor[l][h] from a groups file of `kvasir calibrate pod`, and its sink and window (None
    where the file has none). Checks what PodGroups::FromLists checks."""
    with open(path) as f:
        doc = json.load(f)
    if doc.get("n_layer") != n_layer or doc.get("n_head_kv") != n_head_kv:
        raise ValueError(f"{path}: groups for {doc.get('n_layer')} layers and "
                         f"{doc.get('n_head_kv')} KV heads, the model has {n_layer} and "
                         f"{n_head_kv}")
    lists = doc["groups"]
    if len(lists) != n_head_kv:
        raise ValueError(f"{path}: groups has {len(lists)} heads, expected {n_head_kv}")
    anchors = [[-1] * n_head_kv for _ in range(n_layer)]
    for h, groups in enumerate(lists):
        flat = [l for g in groups for l in g]
        if flat != list(range(n_layer)) or any(not g for g in groups):
            raise ValueError(
                f"{path}: head {h}: groups must cover layers 0..{n_layer - 1} in order")
        for g in groups:
            for l in g:
                anchors[l][h] = g[0]
    return anchors, doc.get("sink"), doc.get("window")


def parse_spec(spec: str, n_layer: int, n_head_kv: int):
    """(sink, window, anchors) of a `pod:...` spec as MakePodPolicy reads it (defaults sink 4,
    window 252, group_size 2; a groups file's sink and window where the spec gives none).
    `weights` is accepted and ignored (it names the adapter, not the policy)."""
    name, _, rest = spec.partition(":")
    if name != "pod":
        raise ValueError(f"not a pod spec: {spec!r}")
    args = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    unknown = set(args) - {"sink", "window", "group_size", "groups", "weights"}
    if unknown:
        raise ValueError(f"pod spec: unknown parameter(s) {sorted(unknown)}")
    if "groups" in args and "group_size" in args:
        raise ValueError("pod spec: give either groups=FILE or group_size=N, not both")
    sink = window = None
    if "groups" in args:
        anchors, sink, window = file_anchors(args["groups"], n_layer, n_head_kv)
    else:
        anchors = fixed_anchors(n_layer, n_head_kv, int(args.get("group_size", 2)))
    sink = int(args["sink"]) if "sink" in args else (4 if sink is None else sink)
    window = int(args["window"]) if "window" in args else (252 if window is None else window)
    if sink < 0 or window < 1:
        raise ValueError("pod spec: sink >= 0 and window >= 1 are needed")
    return sink, window, anchors


def proximal_mask(t: int, sink: int, window: int) -> torch.Tensor:
    """[T, T] bool, query i by key j: j <= i and (j < sink or j > i - window)
    (PodPolicy::IsProximal, causal)."""
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    return (j <= i) & ((j < sink) | (j > i - window))


def distant_mask(t: int, sink: int, window: int) -> torch.Tensor:
    """[T, T] bool: sink <= j <= i - window, the keys read from the anchor layer."""
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    return (j >= sink) & (j <= i - window)


def mixed_key_attention(q, k_own, k_anchor, v, sink: int, window: int):
    """q [B,T,H,D], k_own, k_anchor, v [B,T,Hkv,D] (post-RoPE q and keys) -> [B,T,H,D]: causal
    attention where query i reads key j from k_own if j is proximal, from k_anchor if distant."""
    t = q.shape[1]
    mask = torch.cat((proximal_mask(t, sink, window), distant_mask(t, sink, window)), dim=1)
    qh = q.transpose(1, 2)  # [B,H,T,D]
    kh = torch.cat((k_own, k_anchor), dim=1).transpose(1, 2)  # [B,Hkv,2T,D]
    vh = torch.cat((v, v), dim=1).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2)


class PodAttention:
    """attention(layer, q, k, v, cos, sin) for Llama.forward. Layers run in order, so an anchor's
    post-RoPE keys (kept in `keys`) are there when a later layer of its group needs them."""

    def __init__(self, config, sink: int, window: int, anchors: list[list[int]]):
        if len(anchors) != config.n_layer or any(len(a) != config.n_head_kv for a in anchors):
            raise ValueError("anchors must be [n_layer][n_head_kv]")
        for l, row in enumerate(anchors):
            if any(not 0 <= a <= l for a in row):
                raise ValueError(f"layer {l}: an anchor must be a layer <= {l}")
        self.config = config
        self.sink = sink
        self.window = window
        self.anchors = anchors
        self.keys: dict[int, torch.Tensor] = {}

    @classmethod
    def from_spec(cls, config, spec: str) -> "PodAttention":
        return cls(config, *parse_spec(spec, config.n_layer, config.n_head_kv))

    def kv_ratio(self, t: int) -> float:
        """K + V slots the engine holds after t tokens over those of the full cache
        (PodPolicy::HeldSlots)."""
        pairs = self.config.n_layer * self.config.n_head_kv
        anchors = sum(a == l for l, row in enumerate(self.anchors) for a in row)
        held = pairs * t + anchors * t + (pairs - anchors) * min(t, self.sink + self.window)
        return held / (2 * pairs * t)

    def __call__(self, layer, q, k, v, cos, sin):
        n_rot = self.config.n_rot
        q = apply_rope(q, cos, sin, n_rot)
        k = apply_rope(k, cos, sin, n_rot)
        self.keys[layer] = k
        row = self.anchors[layer]
        if all(a == layer for a in row):
            return grouped_attention(q, k, v, bias=None)
        k_anchor = torch.stack([self.keys[a][:, :, h] for h, a in enumerate(row)], dim=2)
        return mixed_key_attention(q, k, k_anchor, v, self.sink, self.window)
