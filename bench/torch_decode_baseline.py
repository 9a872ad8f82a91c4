#!/usr/bin/env python3
"""Decode speed of a Llama with random bf16 weights in PyTorch + transformers (static KV cache,
SDPA attention): the baseline that `kvasir bench engine --device cuda` is compared with on a GPU,
on the same shape (scripts/make-random-llama-gguf.py --type bf16 writes the model Kvasir reads).

    python3 bench/torch_decode_baseline.py --config tests/testing/fixtures/llama2-7b/config.json \
        --batches 1,16,64 --prompt 128 --tokens 128 --device cuda

Each batch size: `generate` (greedy, static cache) of 1 and of 1 + tokens new tokens after a
random prompt of --prompt tokens per sequence; decode tokens/s = batch * tokens / (the difference
of the two times), the median of --repeats runs after a warm-up. One JSON line per batch size.
Needs torch and transformers (not a dependency of Kvasir).
"""
import argparse
import json
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a Hugging Face config.json (Llama)")
    ap.add_argument("--batches", default="1,16,64", help="sequences per batch, comma separated")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens per sequence")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per sequence")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    a = ap.parse_args()
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        sys.exit(f"torch_decode_baseline: needs torch and transformers ({e})")
    batches = [int(b) for b in a.batches.split(",") if b]
    if not batches or min(batches) < 1 or a.prompt < 1 or a.tokens < 1:
        sys.exit("torch_decode_baseline: batches, --prompt and --tokens must be positive")
    dtype = getattr(torch, a.dtype)
    cfg = LlamaConfig.from_json_file(a.config)
    torch.manual_seed(0)
    with torch.device(a.device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    model.eval()

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    def generate(ids, new_tokens):
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False,
                           cache_implementation="static", pad_token_id=0)
        sync()
        return time.perf_counter() - start

    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device
    for b in batches:
        ids = torch.randint(3, cfg.vocab_size, (b, a.prompt), device=a.device)
        generate(ids, 2)  # warm-up: allocations, kernel selection
        samples = []
        for _ in range(a.repeats):
            first = generate(ids, 1)
            full = generate(ids, 1 + a.tokens)
            samples.append(b * a.tokens / max(full - first, 1e-9))
        print(json.dumps({"device": name, "dtype": a.dtype, "batch": b, "prompt": a.prompt,
                          "tokens": a.tokens, "decode_tps": round(statistics.median(samples), 1),
                          "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
