#!/usr/bin/env python3
"""Writes a Llama GGUF of any shape with random weights, for memory and speed measurements of
shapes whose real weights are not here (tensor parallelism of a Llama-2-7B shape, `kvasir plan`
against a measured resident set). Standard library only.

    scripts/make-random-llama-gguf.py --config tests/testing/fixtures/llama2-7b/config.json \
        --tokenizer-from ../shared/models/stories260K.gguf --type q4_0 --out /tmp/llama2-7b-random.gguf

The tokenizer (every tokenizer.* key) is copied from --tokenizer-from, whose vocabulary must not
be larger than the config's. The matrices are quantized blocks with a fixed small scale and
random 4- or 8-bit values (a 1 MiB random pattern, repeated); the norms are ones. The output is
not a language model: its text is noise, its shapes, sizes and speed are those of the real one.
"""
import argparse
import json
import os
import random
import struct
import sys

GGUF_MAGIC = b"GGUF"
ALIGNMENT = 32
# GGUF metadata value types.
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, \
    T_UINT64, T_INT64, T_FLOAT64 = range(13)
SCALAR = {T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h", T_UINT32: "<I",
          T_INT32: "<i", T_FLOAT32: "<f", T_BOOL: "<?", T_UINT64: "<Q", T_INT64: "<q",
          T_FLOAT64: "<d"}
# ggml tensor types: (id, elements per block, bytes per block).
TYPES = {"f32": (0, 1, 4), "f16": (1, 1, 2), "q4_0": (2, 32, 18), "q4_1": (3, 32, 20),
         "q8_0": (8, 32, 34), "bf16": (30, 1, 2)}


def read_value(f, t):
    if t in SCALAR:
        fmt = SCALAR[t]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if t == T_STRING:
        (n,) = struct.unpack("<Q", f.read(8))
        return f.read(n)
    if t == T_ARRAY:
        (et, n) = struct.unpack("<IQ", f.read(12))
        return (et, [read_value(f, et) for _ in range(n)])
    raise ValueError(f"unknown GGUF value type {t}")


def write_value(out, t, v):
    if t in SCALAR:
        out.append(struct.pack(SCALAR[t], v))
    elif t == T_STRING:
        b = v if isinstance(v, bytes) else v.encode()
        out.append(struct.pack("<Q", len(b)) + b)
    elif t == T_ARRAY:
        et, items = v
        out.append(struct.pack("<IQ", et, len(items)))
        for item in items:
            write_value(out, et, item)
    else:
        raise ValueError(f"unknown GGUF value type {t}")


def tokenizer_keys(path):
    """(key, type, value) of every tokenizer.* key of a GGUF file, and its vocabulary size."""
    keys, vocab = [], 0
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            sys.exit(f"{path}: not a GGUF file")
        (version,) = struct.unpack("<I", f.read(4))
        if version not in (2, 3):
            sys.exit(f"{path}: GGUF version {version} (2 or 3 expected)")
        _, n_kv = struct.unpack("<QQ", f.read(16))
        for _ in range(n_kv):
            (n,) = struct.unpack("<Q", f.read(8))
            key = f.read(n).decode()
            (t,) = struct.unpack("<I", f.read(4))
            v = read_value(f, t)
            if key.startswith("tokenizer."):
                keys.append((key, t, v))
                if key == "tokenizer.ggml.tokens":
                    vocab = len(v[1])
    return keys, vocab


def block_pattern(type_name, rng):
    """1 MiB (about) of whole blocks: a small fixed scale, random quants."""
    _, per_block, block_bytes = TYPES[type_name]
    n_blocks = (1 << 20) // block_bytes
    scale = struct.pack("<e", 0.002)
    body = bytearray()
    for _ in range(n_blocks):
        if type_name == "q4_0":
            body += scale + rng.randbytes(16)
        elif type_name == "q4_1":
            body += scale + struct.pack("<e", -0.015) + rng.randbytes(16)
        elif type_name == "q8_0":
            body += scale + bytes(b % 64 for b in rng.randbytes(32))
        elif type_name == "bf16":  # small values: the top half of an f32
            body += struct.pack("<f", (rng.random() - 0.5) * 0.04)[2:]
        else:  # f16: small values
            body += struct.pack("<e", (rng.random() - 0.5) * 0.04)
    return bytes(body)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a Hugging Face config.json (Llama)")
    ap.add_argument("--tokenizer-from", required=True, help="a GGUF file whose tokenizer to copy")
    ap.add_argument("--type", default="q4_0", choices=["q4_0", "q4_1", "q8_0", "f16", "bf16"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    c = json.load(open(a.config))
    n_embd, n_ff = c["hidden_size"], c["intermediate_size"]
    n_layer, n_head = c["num_hidden_layers"], c["num_attention_heads"]
    n_head_kv = c.get("num_key_value_heads", n_head)
    n_vocab, head_dim = c["vocab_size"], n_embd // n_head
    tok, tok_vocab = tokenizer_keys(a.tokenizer_from)
    if tok_vocab > n_vocab:
        sys.exit(f"the tokenizer has {tok_vocab} tokens, more than the config's {n_vocab}")

    meta = [("general.architecture", T_STRING, "llama"),
            ("general.name", T_STRING, os.path.basename(os.path.dirname(os.path.abspath(a.config)))
             + " (random weights)"),
            ("general.alignment", T_UINT32, ALIGNMENT),
            ("llama.context_length", T_UINT32, c.get("max_position_embeddings", 4096)),
            ("llama.vocab_size", T_UINT32, n_vocab),
            ("llama.embedding_length", T_UINT32, n_embd),
            ("llama.block_count", T_UINT32, n_layer),
            ("llama.feed_forward_length", T_UINT32, n_ff),
            ("llama.attention.head_count", T_UINT32, n_head),
            ("llama.attention.head_count_kv", T_UINT32, n_head_kv),
            ("llama.rope.dimension_count", T_UINT32, head_dim),
            ("llama.attention.layer_norm_rms_epsilon", T_FLOAT32, c.get("rms_norm_eps", 1e-5)),
            ("llama.rope.freq_base", T_FLOAT32, float(c.get("rope_theta", 10000.0)))] + tok

    # (name, [ne0 = columns, ne1 = rows], type)
    tensors = [("token_embd.weight", [n_embd, n_vocab], a.type),
               ("output_norm.weight", [n_embd], "f32"),
               ("output.weight", [n_embd, n_vocab], a.type)]
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [(p + "attn_norm.weight", [n_embd], "f32"),
                    (p + "attn_q.weight", [n_embd, n_head * head_dim], a.type),
                    (p + "attn_k.weight", [n_embd, n_head_kv * head_dim], a.type),
                    (p + "attn_v.weight", [n_embd, n_head_kv * head_dim], a.type),
                    (p + "attn_output.weight", [n_head * head_dim, n_embd], a.type),
                    (p + "ffn_norm.weight", [n_embd], "f32"),
                    (p + "ffn_gate.weight", [n_embd, n_ff], a.type),
                    (p + "ffn_up.weight", [n_embd, n_ff], a.type),
                    (p + "ffn_down.weight", [n_ff, n_embd], a.type)]

    def nbytes(dims, t):
        _, per_block, block_bytes = TYPES[t]
        n = 1
        for d in dims:
            n *= d
        return n // per_block * block_bytes

    head = [GGUF_MAGIC, struct.pack("<IQQ", 3, len(tensors), len(meta))]
    for key, t, v in meta:
        kb = key.encode()
        head.append(struct.pack("<Q", len(kb)) + kb + struct.pack("<I", t))
        write_value(head, t, v)
    offset = 0
    for name, dims, t in tensors:
        nb = name.encode()
        head.append(struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(dims)))
        head.append(b"".join(struct.pack("<Q", d) for d in dims))
        head.append(struct.pack("<IQ", TYPES[t][0], offset))
        offset += (nbytes(dims, t) + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
    header = b"".join(head)
    rng = random.Random(a.seed)
    pattern = block_pattern(a.type, rng)
    ones = struct.pack("<f", 1.0) * max(n_embd, 1)
    total = offset
    with open(a.out, "wb") as out:
        out.write(header)
        out.write(b"\0" * ((-len(header)) % ALIGNMENT))
        written = 0
        for name, dims, t in tensors:
            n = nbytes(dims, t)
            if t == "f32":
                out.write(ones[:n])
            else:
                left = n
                while left > 0:
                    piece = pattern[:min(left, len(pattern))]
                    out.write(piece)
                    left -= len(piece)
            out.write(b"\0" * ((-n) % ALIGNMENT))
            written += n + (-n) % ALIGNMENT
            print(f"\r{a.out}: {100 * written // total}%", end="", file=sys.stderr, flush=True)
    print(f"\n{a.out}: {n_layer} layers, {n_head} heads ({n_head_kv} KV), hidden {n_embd}, "
          f"ffn {n_ff}, vocab {n_vocab}, {a.type}: {total / 2**30:.2f} GiB of tensors",
          file=sys.stderr)


if __name__ == "__main__":
    main()
