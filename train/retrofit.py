#!/usr/bin/env python3
"""Retrofits a Llama model for a KV-compression method by distillation, and writes the artifact
the engine loads. Built: DMC and PoD (LoRA adapters) and LoCoCo (its convolution, the model
frozen).

  python3 train/retrofit.py dmc --model ../shared/models/stories260K.gguf --ratio 4 \\
      --out train/artifacts/stories260K-dmc-4x.safetensors
  python3 train/retrofit.py lococo --model ../shared/models/stories260K.gguf --slots 128 \\
      --out train/artifacts/stories260K-lococo-4x.safetensors
  python3 train/retrofit.py pod --model ../shared/models/stories260K.gguf \\
      --spec pod:sink=4,window=60,group_size=5 \\
      --out train/artifacts/stories260K-pod-1.5x.safetensors

Data: text the model itself generates (sampled at temperature 1 from BOS); the loss is the KL
divergence from the full-cache model's next-token distribution (the teacher: the same file,
without adapters, full attention) plus DMC's one-sided compression loss. Stages, as in the
released DMC code: (1) zero-out, the repurposed q/k element fades out of attention while no
token merges; (2) retrofit, the compression target rises linearly from 1 to --ratio;
(3) fine-tune at --ratio. LoCoCo: the same data and loss, the cache of `lococo:slots=M,chunk=B`
(kvasir_train/lococo.py); only the per-layer convolution and lambda learn. PoD: the same data and
loss, the attention of --spec (kvasir_train/pod.py: distant keys from the group's anchor layer);
LoRA adapters learn, --steps of them. Needs torch, gguf, safetensors (scripts/install-deps.sh
--train).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from kvasir_train import PROJECTIONS  # noqa: E402 (after the path is set)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="retrofit.py",
        description="Retrofit a model for a KV method by distillation: DMC or PoD (writes LoRA "
        "adapters) or LoCoCo (writes its convolution); safetensors either way.")
    p.add_argument("method", choices=["dmc", "lococo", "pod"], help="the KV method to train for")
    p.add_argument("--model", required=True, help="a llama-architecture .gguf file")
    p.add_argument("--out", required=True, help="the artifact to write (.safetensors)")
    p.add_argument("--ratio", type=float, default=4.0, help="target compression ratio (>= 1)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (1..16)")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (scale = alpha/rank)")
    p.add_argument("--zero-out-steps", type=int, default=150, help="stage 1 steps")
    p.add_argument("--retrofit-steps", type=int, default=900, help="stage 2 steps (ratio ramp)")
    p.add_argument("--finetune-steps", type=int, default=450, help="stage 3 steps")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training sequence")
    p.add_argument("--train-seqs", type=int, default=2048, help="generated training sequences")
    p.add_argument("--eval-seqs", type=int, default=64, help="generated held-out sequences")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--cr-weight", type=float, default=10.0, help="weight of the compression loss")
    p.add_argument("--margin", type=float, default=0.0,
                   help="aim at ratio * (1 + margin), should the hard decisions of the engine "
                   "compress less than the relaxed ones of training")
    p.add_argument("--text", help="also train on this UTF-8 text (cut into --seq-len pieces)")
    p.add_argument("--text-from-byte", type=int, default=0,
                   help="use --text from this byte on (keep the evaluation part out)")
    p.add_argument("--projections", default=",".join(PROJECTIONS),
                   help="the projections the adapter corrects, GGUF names")
    p.add_argument("--init", help="start from the adapter of an earlier run (same rank and "
                   "projections), e.g. one written after the zero-out stage alone")
    p.add_argument("--slots", type=int, default=128, help="lococo: slots M (ratio M / window)")
    p.add_argument("--chunk", type=int, default=16, help="lococo: chunk B")
    p.add_argument("--kernel", type=int, default=21, help="lococo: convolution kernel (odd)")
    p.add_argument("--lambda-init", type=float, default=0.02,
                   help="lococo: initial lambda (the released code starts at 0.5)")
    p.add_argument("--lambda-lr", type=float, default=1e-4,
                   help="lococo: Adam learning rate of lambda (--lr is the convolution's)")
    p.add_argument("--steps", type=int, default=300, help="lococo, pod: training steps")
    p.add_argument("--spec", default="pod:sink=4,window=60,group_size=5",
                   help="pod: the policy spec to train for (group_size=N or groups=FILE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--log-every", type=int, default=50)
    a = p.parse_args(argv)
    if a.slots < 2 or a.chunk < 1 or a.kernel < 1 or a.kernel % 2 == 0:
        p.error("--slots >= 2, --chunk >= 1 and an odd --kernel are needed")
    if a.ratio < 1:
        p.error("--ratio must be >= 1")
    if not 1 <= a.rank <= 16:
        p.error("--rank must be in [1, 16]")
    if not os.path.isfile(a.model):
        p.error(f"--model {a.model}: no such file")
    if a.init is not None and not os.path.isfile(a.init):
        p.error(f"--init {a.init}: no such file")
    if a.text is not None and not os.path.isfile(a.text):
        p.error(f"--text {a.text}: no such file")
    a.projections = tuple(x for x in a.projections.split(",") if x)
    bad = [x for x in a.projections if x not in PROJECTIONS]
    if bad or not a.projections:
        p.error(f"--projections: choose from {','.join(PROJECTIONS)}")
    return a


def nll(logits, tokens):
    import torch.nn.functional as F
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def evaluate(model, data, attention_factory, kv_ratio_of, batch=16, untrained=False):
    """Perplexity of the teacher (full) and of the adapted model with the method's attention
    (hard decisions) on held-out sequences, their greedy agreement, and the KV ratio
    (kv_ratio_of(the attention objects used)). untrained: also the method on the model without
    adapters."""
    import math

    import torch
    tot = {"full": 0.0, "trained": 0.0, "untrained": 0.0}
    agree = {"trained": 0, "untrained": 0}
    n = 0
    atts = []
    with torch.no_grad():
        for s in range(0, len(data), batch):
            x = data[s:s + batch]
            logits = {"full": model(x, use_lora=False)}
            atts.append(attention_factory())
            logits["trained"] = model(x, attention=atts[-1])
            if untrained:
                logits["untrained"] = model(x, attention=attention_factory(), use_lora=False)
            k = x[:, 1:].numel()
            for name, lg in logits.items():
                tot[name] += float(nll(lg, x)) * k
                if name != "full":
                    agree[name] += int((logits["full"][:, :-1].argmax(-1) ==
                                        lg[:, :-1].argmax(-1)).sum())
            n += k
    out = {
        "full_perplexity": math.exp(tot["full"] / n),
        "perplexity": math.exp(tot["trained"] / n),
        "greedy_agreement": agree["trained"] / n,
        "kv_ratio": kv_ratio_of(atts),
    }
    if untrained:
        out["untrained_perplexity"] = math.exp(tot["untrained"] / n)
        out["untrained_greedy_agreement"] = agree["untrained"] / n
    return out


def load_model(a):
    """Threads and seed as asked, the model file loaded: (config, tensors, model)."""
    import torch

    from kvasir_train.model import Llama, load_gguf
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    config, tensors = load_gguf(a.model)
    return config, tensors, Llama(config, tensors)


def distill_kl(teacher_logp, logits):
    """KL(teacher || student) per position, averaged: the distillation loss of every method."""
    import torch
    logp = torch.log_softmax(logits, dim=-1)
    return (teacher_logp.exp() * (teacher_logp - logp)).sum(-1).mean()


def decay_lr(opt, step, total):
    """Each group's rate ("base") constant, then down to a tenth over the last quarter."""
    tail = max(0.0, (step - 0.75 * total) / (0.25 * total))
    for group in opt.param_groups:
        group["lr"] = group["base"] * (1.0 - 0.9 * tail)


def distill(a, model, opt, data, student, progress=lambda: ""):
    """a.steps steps of KL distillation from the full-cache model (the teacher: no adapters) to
    student(x), the logits of the method being trained, with decay_lr's schedule; logs the mean
    KL every a.log_every steps (plus progress())."""
    import torch
    gen = torch.Generator().manual_seed(a.seed + 7)
    hist = []
    t0 = time.time()
    for step in range(a.steps):
        x = data[torch.randint(0, len(data), (a.batch,), generator=gen)]
        with torch.no_grad():
            teacher = torch.log_softmax(model(x, use_lora=False), dim=-1)
        kl = distill_kl(teacher, student(x))
        decay_lr(opt, step, a.steps)
        opt.zero_grad()
        kl.backward()
        opt.step()
        hist.append(kl.item())
        if (step + 1) % a.log_every == 0 or step + 1 == a.steps:
            print(f"retrofit: step {step + 1}/{a.steps} kl {sum(hist) / len(hist):.5f}"
                  f"{progress()} ({time.time() - t0:.0f} s)", file=sys.stderr)
            hist = []


def load_data(a, model):
    """Generated training and held-out sequences, plus --text cut into --seq-len pieces."""
    import torch

    from kvasir_train.model import sample
    bos = 1
    t0 = time.time()
    data = sample(model, a.train_seqs, a.seq_len, bos, seed=a.seed + 1)
    held = sample(model, a.eval_seqs, a.seq_len, bos, seed=a.seed + 1_000_003)
    print(f"retrofit: generated {a.train_seqs} + {a.eval_seqs} sequences of {a.seq_len} tokens "
          f"in {time.time() - t0:.0f} s", file=sys.stderr)
    if a.text is not None:
        from kvasir_train.tokenizer import SpmTokenizer
        with open(a.text, "rb") as f:
            text = f.read()[a.text_from_byte:].decode("utf-8", "ignore")
        ids = SpmTokenizer.from_gguf(a.model).encode_lines(text, bos=False)
        n = len(ids) // a.seq_len
        pieces = torch.tensor(ids[:n * a.seq_len], dtype=torch.long).view(n, a.seq_len)
        data = torch.cat((data, pieces))
        print(f"retrofit: {a.text} from byte {a.text_from_byte}: {len(ids)} tokens, "
              f"{n} sequences", file=sys.stderr)
    return data, held


def setup_lora(a, config, tensors, model):
    """Gives the model its LoRA adapters (from --init if given) and returns their Adam."""
    import torch

    from kvasir_train.model import LoRA
    model.lora = LoRA(config, tensors, a.rank, a.alpha, a.projections, seed=a.seed)
    if a.init is not None:
        from safetensors.torch import load_file
        init = load_file(a.init)
        for name, t in model.lora.state_tensors().items():
            if name not in init or init[name].shape != t.shape:
                sys.exit(f"retrofit: --init {a.init}: no {name} of shape {tuple(t.shape)}")
        model.lora.load_tensors(init)
        print(f"retrofit: starting from {a.init}", file=sys.stderr)
    return torch.optim.Adam([{"params": list(model.lora.parameters()), "lr": a.lr, "base": a.lr}])


def lora_artifact(a, config, model, check_tokens, check_logits, meta, training, result):
    """The lora-1 artifact's tensors and metadata (docs/retrofit.md): the adapters, the check
    sequence and its logits, and `meta` (method, kv_policy, ratio) plus what every one holds."""
    import torch
    out = model.lora.state_tensors()
    out["check.tokens"] = check_tokens.to(torch.int32).contiguous()
    out["check.logits"] = check_logits.contiguous()
    meta = {"kvasir.format": "lora-1", **meta,
            "kvasir.lora_rank": str(a.rank),
            "kvasir.lora_alpha": f"{a.alpha:g}",
            "kvasir.layout": "gguf",
            "kvasir.base_model": os.path.basename(a.model),
            "kvasir.n_layer": str(config.n_layer),
            "kvasir.n_embd": str(config.n_embd),
            "kvasir.training": json.dumps({
                **training, "batch": a.batch, "seq_len": a.seq_len, "train_seqs": a.train_seqs,
                "lr": a.lr, "seed": a.seed, "projections": ",".join(a.projections),
                "text": os.path.basename(a.text) if a.text else None,
                "text_from_byte": a.text_from_byte, "device": "cpu",
                "torch_threads": torch.get_num_threads()}),
            "kvasir.held_out": json.dumps({k: round(v, 4) for k, v in result.items()})}
    if a.init is not None:
        # The run this one started from (its own training record, and so on back).
        from safetensors import safe_open
        with safe_open(a.init, "pt") as f:
            before = f.metadata() or {}
        meta["kvasir.init"] = json.dumps({
            "file": os.path.basename(a.init), "training": before.get("kvasir.training"),
            "init": before.get("kvasir.init")})
    return out, meta


def write_artifact(a, tensors, meta, t_start):
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    save_file(tensors, a.out, metadata=meta)
    print(f"retrofit: wrote {a.out} ({os.path.getsize(a.out)} bytes) in "
          f"{time.time() - t_start:.0f} s", file=sys.stderr)


def main(argv=None):
    a = parse_args(argv)
    if a.method == "lococo":
        return main_lococo(a)
    if a.method == "pod":
        return main_pod(a)
    import torch

    from kvasir_train.dmc import DmcAttention, compression_loss, kv_ratio

    t_start = time.time()
    config, tensors, model = load_model(a)
    print(f"retrofit: {a.model}: {config.n_layer} layers, {config.n_head} heads, "
          f"{config.n_head_kv} KV heads, head_dim {config.head_dim}", file=sys.stderr)

    data, held = load_data(a, model)

    opt = setup_lora(a, config, tensors, model)
    gen = torch.Generator().manual_seed(a.seed + 7)
    total = a.zero_out_steps + a.retrofit_steps + a.finetune_steps
    d = config.head_dim
    hist = []
    t0 = time.time()
    for step in range(total):
        if step < a.zero_out_steps:
            stage, target = "zero-out", 1.0
            att = DmcAttention(config, hard=False, merge=False,
                               zero_out=min(1.0, (step + 1) / max(1, a.zero_out_steps // 2)),
                               generator=gen)
        else:
            s2 = step - a.zero_out_steps
            ramp = min(1.0, (s2 + 1) / max(1, a.retrofit_steps))
            stage = "retrofit" if s2 < a.retrofit_steps else "finetune"
            target = 1.0 + (a.ratio - 1.0) * ramp
            att = DmcAttention(config, hard=False, generator=gen)
        idx = torch.randint(0, len(data), (a.batch,), generator=gen)
        x = data[idx]
        with torch.no_grad():
            teacher = torch.log_softmax(model(x, use_lora=False), dim=-1)
        kl = distill_kl(teacher, model(x, attention=att))
        loss = kl
        if stage == "zero-out":
            # Fade the decision and importance neurons towards 0 (alpha ~ sigmoid(-5)).
            pen = torch.stack([(l + 5.0).pow(2).mean() for l in att.logits]).mean()
            loss = loss + 0.1 * pen
        else:
            merge_target = target * (1.0 + a.margin) if target > 1 else 1.0
            loss = loss + a.cr_weight * compression_loss(att.alphas, merge_target)
        decay_lr(opt, step, total)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append((kl.item(), kv_ratio([x.detach() for x in att.alphas])))
        if (step + 1) % a.log_every == 0 or step + 1 == total:
            k = len(hist)
            mkl = sum(h[0] for h in hist) / k
            mr = sum(h[1] for h in hist) / k
            hist = []
            print(f"retrofit: step {step + 1}/{total} {stage} target {target:.2f}x "
                  f"kl {mkl:.4f} soft kv ratio {mr:.3f} ({time.time() - t0:.0f} s)",
                  file=sys.stderr)

    def hard():
        return DmcAttention(config, hard=True)
    result = evaluate(model, held, hard,
                      lambda atts: kv_ratio([x for att in atts for x in att.alphas]))
    print("retrofit: held-out " + json.dumps({k: round(v, 4) for k, v in result.items()}),
          file=sys.stderr)

    # A check for the engine: one held-out sequence and the adapted model's logits over it,
    # with hard decisions, as the engine's dmc:mode=learned must reproduce them.
    with torch.no_grad():
        check_tokens = held[:1]
        check_logits = model(check_tokens, attention=hard())[0]
    out, meta = lora_artifact(
        a, config, model, check_tokens[0], check_logits,
        {"kvasir.method": "dmc", "kvasir.kv_policy": "dmc:mode=learned",
         "kvasir.ratio": f"{a.ratio:g}"},
        {"steps": total, "zero_out_steps": a.zero_out_steps, "retrofit_steps": a.retrofit_steps,
         "finetune_steps": a.finetune_steps, "tokens_seen": total * a.batch * a.seq_len,
         "cr_weight": a.cr_weight, "margin": a.margin, "seconds": round(time.time() - t_start)},
        result)
    write_artifact(a, out, meta, t_start)


def main_lococo(a):
    """Trains LoCoCo's per-layer convolution and lambda with the model frozen."""
    import math

    import torch

    from kvasir_train.lococo import LococoCompressor, lococo_forward

    t_start = time.time()
    config, _, model = load_model(a)
    spec = f"lococo:slots={a.slots},chunk={a.chunk}"
    print(f"retrofit: {a.model}: {config.n_layer} layers, head_dim {config.head_dim}; {spec}, "
          f"kernel {a.kernel}", file=sys.stderr)
    data, held = load_data(a, model)
    comp = LococoCompressor(config.n_layer, config.head_dim, a.slots, a.kernel, a.lambda_init,
                            seed=a.seed)
    # The convolution learns much faster than the blend, as in the released code (LR scales
    # 1000 and 5): a lambda that moves as fast only learns to switch the convolution off.
    conv = list(comp.weight) + list(comp.bias)
    opt = torch.optim.Adam([{"params": conv, "lr": a.lr, "base": a.lr},
                            {"params": list(comp.lam), "lr": a.lambda_lr, "base": a.lambda_lr}])
    distill(a, model, opt, data,
            lambda x: lococo_forward(model, comp, x, a.slots, a.chunk)[0],
            lambda: " lambda [" + ", ".join(f"{v.item():.3f}" for v in comp.lam) + "]")

    # Held-out: the full cache, LoCoCo without weights (lambda = 0) and with them.
    tot = {"full": 0.0, "free": 0.0, "trained": 0.0}
    agree = {"free": 0, "trained": 0}
    n = 0
    held_slots = []
    with torch.no_grad():
        for s in range(0, len(held), 16):
            x = held[s:s + 16]
            logits = {"full": model(x, use_lora=False)}
            logits["free"], held_slots = lococo_forward(model, None, x, a.slots, a.chunk)
            logits["trained"] = lococo_forward(model, comp, x, a.slots, a.chunk)[0]
            k = x[:, 1:].numel()
            for name, lg in logits.items():
                tot[name] += float(nll(lg, x)) * k
            for name in agree:
                agree[name] += int((logits["full"][:, :-1].argmax(-1) ==
                                    logits[name][:, :-1].argmax(-1)).sum())
            n += k
    # The ratio of a window of seq_len tokens: the slots held after the last chunk.
    result = {"full_perplexity": math.exp(tot["full"] / n),
              "free_perplexity": math.exp(tot["free"] / n),
              "perplexity": math.exp(tot["trained"] / n),
              "free_greedy_agreement": agree["free"] / n,
              "greedy_agreement": agree["trained"] / n,
              "kv_ratio": held_slots[-1] / a.seq_len}
    print("retrofit: held-out " + json.dumps({k: round(v, 4) for k, v in result.items()}),
          file=sys.stderr)

    with torch.no_grad():
        check_tokens = held[:1]
        check_logits = lococo_forward(model, comp, check_tokens, a.slots, a.chunk)[0][0]
    out = comp.state_tensors()
    out["check.tokens"] = check_tokens[0].to(torch.int32).contiguous()
    out["check.logits"] = check_logits.contiguous()
    meta = {
        "kvasir.format": "lococo-1",
        "kvasir.method": "lococo",
        "kvasir.kv_policy": spec,
        "kvasir.base_model": os.path.basename(a.model),
        "kvasir.n_layer": str(config.n_layer),
        "kvasir.training": json.dumps({
            "steps": a.steps, "batch": a.batch, "seq_len": a.seq_len,
            "train_seqs": a.train_seqs, "tokens_seen": a.steps * a.batch * a.seq_len,
            "lr": a.lr, "lambda_lr": a.lambda_lr, "kernel": a.kernel,
            "lambda_init": a.lambda_init, "seed": a.seed,
            "text": os.path.basename(a.text) if a.text else None,
            "text_from_byte": a.text_from_byte, "seconds": round(time.time() - t_start),
            "device": "cpu", "torch_threads": torch.get_num_threads()}),
        "kvasir.held_out": json.dumps({k: round(v, 4) for k, v in result.items()}),
    }
    write_artifact(a, out, meta, t_start)


def main_pod(a):
    """Trains LoRA adapters so that the model works with PoD's attention (--spec): distant keys
    from the anchor layer of each (layer, KV head)'s group, distilled from the full model."""
    import torch

    from kvasir_train.pod import PodAttention

    t_start = time.time()
    config, tensors, model = load_model(a)
    try:
        probe = PodAttention.from_spec(config, a.spec)
    except (ValueError, OSError, KeyError) as e:
        sys.exit(f"retrofit: --spec {a.spec}: {e}")
    print(f"retrofit: {a.model}: {config.n_layer} layers, {config.n_head_kv} KV heads; {a.spec}: "
          f"kv_ratio {probe.kv_ratio(512):.4f} at 512 tokens", file=sys.stderr)
    data, held = load_data(a, model)
    opt = setup_lora(a, config, tensors, model)

    def pod():
        # A fresh attention per forward (it keeps the anchors' keys of one pass), from the parsed
        # spec.
        return PodAttention(config, probe.sink, probe.window, probe.anchors)
    distill(a, model, opt, data, lambda x: model(x, attention=pod()))
    result = evaluate(model, held, pod, lambda atts: atts[0].kv_ratio(a.seq_len), untrained=True)
    print("retrofit: held-out " + json.dumps({k: round(v, 4) for k, v in result.items()}),
          file=sys.stderr)
    with torch.no_grad():
        check_tokens = held[:1]
        check_logits = model(check_tokens, attention=pod())[0]
    out, meta = lora_artifact(
        a, config, model, check_tokens[0], check_logits,
        {"kvasir.method": "pod", "kvasir.kv_policy": a.spec,
         "kvasir.ratio": f"{1 / probe.kv_ratio(512):.3g}"},
        {"steps": a.steps, "tokens_seen": a.steps * a.batch * a.seq_len,
         "seconds": round(time.time() - t_start)},
        result)
    write_artifact(a, out, meta, t_start)


if __name__ == "__main__":
    main()
