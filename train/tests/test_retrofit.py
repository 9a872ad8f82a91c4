"""Tests of the retrofit package (run by `make retrofit-smoke`; they need torch, gguf and
safetensors, installed by scripts/install-deps.sh --train).

- The PyTorch forward against the independent golden outputs (llama.cpp) of stories260K.
- The tokenizer against the golden prompts' token ids.
- DMC's parallel training form with hard decisions against the sequential algorithm the engine
  runs (the released inference code: one token at a time, a ring of the last 12 weighted keys).
- LoCoCo's chunked cache: slots covering the sequence give the full forward; with lambda = 0 the
  compressor is the heavy-hitter selection, which a slot-by-slot loop over the engine's rule
  (kvcache/lococo_policy.cc) reproduces; the gradient reaches the convolution.
- PoD's attention (one softmax over own keys where proximal, anchor keys where distant) against a
  token-by-token loop over the engine's rule (kvcache/pod_policy.cc), which a mask off by one
  fails.
- A few retrofit steps end to end (DMC, LoCoCo and PoD), writing artifacts with the metadata the
  engine checks.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))

try:
    import gguf  # noqa: F401,E402
    import safetensors  # noqa: F401,E402
    import torch  # noqa: E402
except ImportError as e:  # ctest: SKIP_RETURN_CODE 77
    print(f"skipped: {e.name} is not installed (scripts/install-deps.sh --train)")
    sys.exit(77)

from kvasir_train.dmc import INIT_VAL, OMEGA_EPS, DmcAttention  # noqa: E402
from kvasir_train.lococo import LococoCompressor, heavy_hitters, lococo_forward  # noqa: E402
from kvasir_train.model import Llama, apply_rope, load_gguf, rope_tables, sample  # noqa: E402
from kvasir_train.pod import PodAttention, fixed_anchors, parse_spec  # noqa: E402
from kvasir_train.tokenizer import SpmTokenizer  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared")
STORIES = os.path.join(SHARED, "models", "stories260K.gguf")
GOLDEN = os.path.join(SHARED, "golden", "stories260K_public.jsonl")


def golden():
    with open(GOLDEN) as f:
        return [json.loads(line) for line in f]


class ForwardTest(unittest.TestCase):
    def test_matches_golden_logits_and_greedy_tokens(self):
        config, tensors = load_gguf(STORIES)
        model = Llama(config, tensors)
        for g in golden():
            ids = g["prompt_ids"] + g["greedy_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ids]))[0]
            n = len(g["prompt_ids"])
            for tok, want in g["first_step_top5"]:
                got = float(logits[n - 1, tok])
                self.assertLess(abs(got - want), 1e-3 * max(1.0, abs(want)) + 5e-3)
            greedy = logits[n - 1:-1].argmax(-1).tolist()
            self.assertEqual(greedy, g["greedy_ids"])

    def test_sampling_with_its_kv_cache_follows_the_full_forward(self):
        config, tensors = load_gguf(STORIES)
        model = Llama(config, tensors)
        seq = sample(model, 2, 48, 1, temperature=1e-4, seed=1)
        with torch.no_grad():
            greedy = model(seq)[:, :-1].argmax(-1)
        self.assertTrue(torch.equal(seq[:, 1:], greedy))

    def test_tokenizer_matches_golden_prompts(self):
        tok = SpmTokenizer.from_gguf(STORIES)
        for g in golden():
            self.assertEqual(tok.encode(g["prompt"]), g["prompt_ids"])
            self.assertEqual(tok.encode_lines(g["prompt"]), g["prompt_ids"])


def sequential_dmc(config, q, k, v, window=12):
    """The engine's learned-mode step (docs/compression.md), token by token, for one sequence:
    q [T,H,D], k, v [T,Hkv,D] pre-RoPE -> attention output [T,H,D], and the slot counts."""
    t_len, n_head, d = q.shape
    n_kv = k.shape[1]
    g = n_head // n_kv
    cos, sin = rope_tables(config, torch.arange(t_len))
    out = torch.zeros(t_len, n_head, d, dtype=torch.float64)
    slots = []
    for h in range(n_kv):
        keys, vals = [], []
        ring = []
        run = 0
        k_sum = v_sum = None
        w_sum = 0.0
        for t in range(t_len):
            kt = k[t, h].double().clone()
            alpha = 0 if not keys else int(kt[d - 1] - INIT_VAL > 0)
            w_logit = q[t, h * g:(h + 1) * g, d - 1].double().mean()
            omega = 1.0 / (1.0 + math.exp(-(float(w_logit) + INIT_VAL))) + OMEGA_EPS
            kt[d - 1] = 0
            vt = v[t, h].double()
            run = run * alpha + 1
            if alpha == 0:
                k_sum, v_sum, w_sum = omega * kt, omega * vt, omega
                ring = [(omega * kt, omega * vt, omega)]
            else:
                k_sum, v_sum, w_sum = k_sum + omega * kt, v_sum + omega * vt, w_sum + omega
                ring.append((omega * kt, omega * vt, omega))
                if window > 0 and len(ring) > window:
                    ok, ov, ow = ring.pop(0)
                    k_sum, v_sum, w_sum = k_sum - ok, v_sum - ov, w_sum - ow
            slot_k = apply_rope((k_sum / w_sum).float()[None, None], cos[t:t + 1], sin[t:t + 1],
                                config.n_rot)[0, 0].double()
            slot_k[d - 1] = 0
            slot_v = v_sum / w_sum
            if alpha == 1:
                keys[-1], vals[-1] = slot_k, slot_v
            else:
                keys.append(slot_k)
                vals.append(slot_v)
            kmat, vmat = torch.stack(keys), torch.stack(vals)
            for j in range(g):
                qt = q[t, h * g + j].clone()
                qt[d - 1] = 0
                qr = apply_rope(qt[None, None], cos[t:t + 1], sin[t:t + 1],
                                config.n_rot)[0, 0].double()
                qr[d - 1] = 0
                att = torch.softmax(kmat @ qr / math.sqrt(d), dim=0)
                out[t, h * g + j] = att @ vmat
        slots.append(len(keys))
    return out, slots


class DmcTest(unittest.TestCase):
    def test_parallel_hard_form_equals_the_sequential_algorithm(self):
        config, _ = load_gguf(STORIES)
        gen = torch.Generator().manual_seed(5)
        t_len, d = 40, config.head_dim
        q = torch.randn(1, t_len, config.n_head, d, generator=gen)
        k = torch.randn(1, t_len, config.n_head_kv, d, generator=gen)
        v = torch.randn(1, t_len, config.n_head_kv, d, generator=gen)
        # Decision logits around the threshold: about half the tokens merge, with runs longer
        # than the window of 12 in head 0.
        k[..., d - 1] = INIT_VAL + 2.0 * torch.randn(1, t_len, config.n_head_kv, generator=gen)
        k[0, 5:25, 0, d - 1] = INIT_VAL + 1.0
        cos, sin = rope_tables(config, torch.arange(t_len))
        att = DmcAttention(config, hard=True)
        got = att(0, q, k, v, cos, sin)[0].double()
        want, slots = sequential_dmc(config, q[0], k[0], v[0])
        self.assertLess(float((got - want).abs().max()), 1e-4)
        alpha = att.alphas[0][0]  # [T, Hkv]
        self.assertEqual([int(t_len - alpha[:, h].sum()) for h in range(config.n_head_kv)], slots)
        self.assertGreater(float(alpha.mean()), 0.3)


def lococo_rule(k, v, hh, slots, weight, bias, lam):
    """The engine's compression of one table, slot by slot (LococoPolicy::Compress): k, v [L, D],
    hh [L]; ties by smaller slot index."""
    n, d = k.shape
    m_c = slots // 2
    m_h = slots - m_c

    def top(idx, count):
        order = sorted(range(len(idx)), key=lambda i: (-float(hh[idx[i]]), i))[:count]
        return sorted(order)

    everything = list(range(n))
    kept = [everything[i] for i in top(everything, m_h)]
    rest = [s for s in everything if s not in kept]
    sel = top(rest, m_c)
    out_k = [k[s] for s in kept]
    out_v = [v[s] for s in kept]
    kernel = weight.shape[2]
    pad = (kernel - 1) // 2
    x = torch.cat((k[rest], v[rest]), dim=1).T  # [2D, S']
    for m in range(m_c):
        y = torch.full((len(rest),), float(bias[m]))
        for s in range(len(rest)):
            for t in range(kernel):
                j = s + t - pad
                if 0 <= j < len(rest):
                    y[s] += float((weight[m, :, t] * x[:, j]).sum())
        w = lam * torch.softmax(torch.relu(y), 0)
        w[sel[m]] += 1 - lam
        out_k.append(w @ k[rest])
        out_v.append(w @ v[rest])
    return torch.stack(out_k), torch.stack(out_v)


class LococoTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        config, tensors = load_gguf(STORIES)
        cls.model = Llama(config, tensors)
        cls.x = sample(cls.model, 2, 80, 1, seed=3)

    def test_slots_covering_the_sequence_equal_the_full_forward(self):
        with torch.no_grad():
            full = self.model(self.x)
            got, held = lococo_forward(self.model, None, self.x, 128, 16)
        self.assertLess(float((got - full).abs().max()), 1e-4)
        self.assertEqual(held[-1], 80)
        with torch.no_grad():
            small, held = lococo_forward(self.model, None, self.x, 32, 16)
        self.assertGreater(float((small - full).abs().max()), 1e-2)
        self.assertEqual(held, [16, 32, 32, 32, 32])  # compressed at 48, 64 and 80

    def test_compression_follows_the_engines_rule(self):
        gen = torch.Generator().manual_seed(4)
        k, v = torch.randn(2, 40, 8, generator=gen), torch.randn(2, 40, 8, generator=gen)
        hh = torch.rand(2, 40, generator=gen)
        comp = LococoCompressor(1, 8, 16, kernel=5, lambda_init=0.3, seed=2)
        with torch.no_grad():
            comp.weight[0].mul_(20)  # peaked mixing weights, not near-uniform ones
            got_k, got_v = comp.compress(0, k, v, hh)
            for row in range(2):
                want_k, want_v = lococo_rule(k[row], v[row], hh[row], 16, comp.weight[0],
                                             comp.bias[0], 0.3)
                self.assertLess(float((got_k[row] - want_k).abs().max()), 1e-5)
                self.assertLess(float((got_v[row] - want_v).abs().max()), 1e-5)
            comp.lam[0].zero_()
            zero_k, zero_v = comp.compress(0, k, v, hh)
            hh_k, hh_v = heavy_hitters(k, v, hh, 16)
        self.assertTrue(torch.equal(zero_k, hh_k) and torch.equal(zero_v, hh_v))
        self.assertFalse(torch.equal(got_k, hh_k))

    def test_the_gradient_reaches_the_convolution(self):
        c = self.model.config
        comp = LococoCompressor(c.n_layer, c.head_dim, 32, seed=1)
        logits, _ = lococo_forward(self.model, comp, self.x, 32, 16)
        logits[:, 48:].logsumexp(-1).mean().backward()
        for layer in range(c.n_layer):
            self.assertGreater(float(comp.weight[layer].grad.abs().sum()), 0)
            self.assertNotEqual(float(comp.lam[layer].grad), 0)


def pod_rule(q, k_layers, v, anchor_of, layer, sink, window):
    """The engine's PoD attention of `layer` for one sequence, query by query, in float64:
    q [T,H,D] and k_layers[l] [T,Hkv,D] post-RoPE, v [T,Hkv,D]; anchor_of[h] the anchor layer of
    (layer, h). Key j of query i is the layer's own if j < sink or j > i - window (proximal),
    else the anchor's; the values are always the layer's."""
    t_len, n_head, d = q.shape
    n_kv = v.shape[1]
    g = n_head // n_kv
    out = torch.zeros(t_len, n_head, d, dtype=torch.float64)
    for h in range(n_kv):
        for i in range(t_len):
            keys = []
            for j in range(i + 1):
                proximal = j < sink or j > i - window
                keys.append(k_layers[layer if proximal else anchor_of[h]][j, h].double())
            kmat = torch.stack(keys)
            vmat = v[:i + 1, h].double()
            for qh in range(h * g, (h + 1) * g):
                att = torch.softmax(kmat @ q[i, qh].double() / math.sqrt(d), dim=0)
                out[i, qh] = att @ vmat
    return out


class PodTest(unittest.TestCase):
    def test_attention_equals_the_engines_rule_token_by_token(self):
        config, _ = load_gguf(STORIES)
        gen = torch.Generator().manual_seed(11)
        t_len, d, n_kv = 30, config.head_dim, config.n_head_kv
        cos, sin = rope_tables(config, torch.arange(t_len))
        # Per head a different anchor of layer 3: 0, 2, 3 (itself) and 1.
        anchors = [[0] * n_kv, [0, 1, 1, 1], [0, 2, 2, 1], [0, 2, 3, 1], [4] * n_kv]
        sink, window = 3, 6
        att = PodAttention(config, sink, window, anchors)
        qs, ks, vs = [], [], []
        for layer in range(4):
            q = torch.randn(1, t_len, config.n_head, d, generator=gen)
            k = 2 * torch.randn(1, t_len, n_kv, d, generator=gen)
            v = torch.randn(1, t_len, n_kv, d, generator=gen)
            got = att(layer, q, k, v, cos, sin)
            qs.append(apply_rope(q, cos, sin, config.n_rot)[0])
            ks.append(apply_rope(k, cos, sin, config.n_rot)[0])
            vs.append(v[0])
        want = pod_rule(qs[3], ks, vs[3], anchors[3], 3, sink, window)
        self.assertLess(float((got[0].double() - want).abs().max()), 1e-5)
        # The test sees a boundary moved by one: the rule with another sink or window differs.
        for s, w in ((sink, window + 1), (sink, window - 1), (sink + 1, window),
                     (sink - 1, window)):
            moved = pod_rule(qs[3], ks, vs[3], anchors[3], 3, s, w)
            self.assertGreater(float((moved - want).abs().max()), 1e-3, (s, w))
        # Head 2 is its own anchor: plain causal attention.
        full = pod_rule(qs[3], ks, vs[3], [3] * n_kv, 3, 0, 1)
        self.assertLess(float((got[0, :, 4:6].double() - full[:, 4:6]).abs().max()), 1e-5)

    def test_specs_and_the_ratio_follow_the_engine(self):
        config, tensors = load_gguf(STORIES)
        sink, window, anchors = parse_spec("pod:sink=4,window=60,group_size=5", 5, 4)
        self.assertEqual((sink, window), (4, 60))
        self.assertEqual(anchors, [[0] * 4] * 5)
        self.assertEqual(fixed_anchors(5, 1, 2), [[0], [0], [2], [2], [4]])
        self.assertEqual(parse_spec("pod", 5, 4)[:2], (4, 252))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "groups.json")
            with open(path, "w") as f:
                json.dump({"n_layer": 5, "n_head_kv": 2, "window": 9,
                           "groups": [[[0, 1, 2], [3, 4]], [[0], [1, 2, 3, 4]]]}, f)
            self.assertEqual(parse_spec(f"pod:groups={path}", 5, 2),
                             (4, 9, [[0, 0], [0, 1], [0, 1], [3, 1], [3, 1]]))
        # docs/compression.md: window=60,group_size=5 holds 0.65 of the full cache at 512 tokens.
        self.assertAlmostEqual(PodAttention.from_spec(
            config, "pod:sink=4,window=60,group_size=5").kv_ratio(512), 0.65)
        # A window covering the sequence is full attention.
        model = Llama(config, tensors)
        x = sample(model, 2, 40, 1, seed=2)
        with torch.no_grad():
            full = model(x)
            wide = model(x, attention=PodAttention.from_spec(config, "pod:window=36,group_size=5"))
            narrow = model(x, attention=PodAttention.from_spec(config, "pod:window=8,group_size=5"))
        self.assertLess(float((wide - full).abs().max()), 1e-4)
        self.assertGreater(float((narrow - full).abs().max()), 1e-2)


class RetrofitSmokeTest(unittest.TestCase):
    def test_a_few_steps_write_an_artifact(self):
        from safetensors import safe_open
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "smoke.safetensors")
            subprocess.run(
                [sys.executable, os.path.join(ROOT, "train", "retrofit.py"), "dmc",
                 "--model", STORIES, "--out", out, "--ratio", "2", "--rank", "4",
                 "--zero-out-steps", "2", "--retrofit-steps", "2", "--finetune-steps", "1",
                 "--batch", "2", "--seq-len", "32", "--train-seqs", "4", "--eval-seqs", "2",
                 "--log-every", "1"],
                check=True, capture_output=True, timeout=600)
            with safe_open(out, "pt") as f:
                meta = f.metadata()
                names = set(f.keys())
                self.assertEqual(meta["kvasir.format"], "lora-1")
                self.assertEqual(meta["kvasir.layout"], "gguf")
                self.assertEqual(meta["kvasir.lora_rank"], "4")
                self.assertIn("blk.0.attn_k.lora_a", names)
                self.assertEqual(tuple(f.get_tensor("blk.0.attn_k.lora_a").shape), (4, 64))
                self.assertEqual(tuple(f.get_tensor("blk.4.ffn_down.lora_b").shape), (64, 4))
                self.assertEqual(tuple(f.get_tensor("check.logits").shape), (32, 512))
                self.assertEqual(f.get_tensor("check.tokens").dtype, torch.int32)

    def test_a_few_lococo_steps_write_its_weights(self):
        from safetensors import safe_open
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "lococo.safetensors")
            subprocess.run(
                [sys.executable, os.path.join(ROOT, "train", "retrofit.py"), "lococo",
                 "--model", STORIES, "--out", out, "--slots", "16", "--chunk", "8",
                 "--kernel", "5", "--steps", "2", "--batch", "2", "--seq-len", "48",
                 "--train-seqs", "4", "--eval-seqs", "2", "--log-every", "1"],
                check=True, capture_output=True, timeout=600)
            with safe_open(out, "pt") as f:
                meta = f.metadata()
                self.assertEqual(meta["kvasir.kv_policy"], "lococo:slots=16,chunk=8")
                self.assertEqual(tuple(f.get_tensor("layers.0.conv.weight").shape), (8, 16, 5))
                self.assertEqual(tuple(f.get_tensor("layers.4.conv.bias").shape), (8,))
                self.assertEqual(tuple(f.get_tensor("layers.4.lambda").shape), (1,))
                self.assertEqual(tuple(f.get_tensor("check.logits").shape), (48, 512))
                held = json.loads(meta["kvasir.held_out"])
                self.assertAlmostEqual(held["kv_ratio"], 16 / 48, places=3)

    def test_a_few_pod_steps_write_an_adapter(self):
        from safetensors import safe_open
        spec = "pod:sink=2,window=10,group_size=5"
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "pod.safetensors")
            subprocess.run(
                [sys.executable, os.path.join(ROOT, "train", "retrofit.py"), "pod",
                 "--model", STORIES, "--out", out, "--spec", spec, "--rank", "4", "--steps", "3",
                 "--batch", "2", "--seq-len", "40", "--train-seqs", "4", "--eval-seqs", "2",
                 "--log-every", "1", "--lr", "1e-2"],
                check=True, capture_output=True, timeout=600)
            with safe_open(out, "pt") as f:
                meta = f.metadata()
                self.assertEqual(meta["kvasir.format"], "lora-1")
                self.assertEqual(meta["kvasir.method"], "pod")
                self.assertEqual(meta["kvasir.kv_policy"], spec)
                self.assertEqual(meta["kvasir.layout"], "gguf")
                self.assertEqual(tuple(f.get_tensor("blk.0.attn_q.lora_a").shape), (4, 64))
                self.assertEqual(tuple(f.get_tensor("check.logits").shape), (40, 512))
                # Trained: the adapters moved from their zero start.
                self.assertGreater(float(f.get_tensor("blk.3.attn_q.lora_b").abs().max()), 0)
                held = json.loads(meta["kvasir.held_out"])
                # 5 layers x 4 heads, 4 anchors: (20 + 4) * 40 + 16 * 12 slots of 2 * 20 * 40.
                self.assertAlmostEqual(held["kv_ratio"], (24 * 40 + 16 * 12) / 1600, places=4)
                self.assertIn("untrained_perplexity", held)


if __name__ == "__main__":
    unittest.main()
