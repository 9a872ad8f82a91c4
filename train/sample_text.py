#!/usr/bin/env python3
"""Writes text a model generates (sampled from BOS at temperature 1), for evaluating a retrofit
on the model's own distribution with `kvasir eval --text`. Use a seed that training did not use
(retrofit.py samples with seeds --seed + 1 and --seed + 1000003).

  python3 train/sample_text.py --model ../shared/models/stories260K.gguf --out /tmp/stories.txt
"""

from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(prog="sample_text.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a llama-architecture .gguf file")
    p.add_argument("--out", required=True, help="the text file to write")
    p.add_argument("--seqs", type=int, default=64, help="sequences to sample")
    p.add_argument("--length", type=int, default=576, help="tokens per sequence")
    p.add_argument("--seed", type=int, default=424242)
    a = p.parse_args(argv)
    if not os.path.isfile(a.model):
        p.error(f"--model {a.model}: no such file")

    from kvasir_train.model import Llama, load_gguf, sample
    from kvasir_train.tokenizer import SPACE, SpmTokenizer

    config, tensors = load_gguf(a.model)
    tok = SpmTokenizer.from_gguf(a.model)
    seqs = sample(Llama(config, tensors), a.seqs, a.length, tok.bos, seed=a.seed)
    byte = re.compile(r"<0x([0-9A-F]{2})>")
    stories = []
    for row in seqs.tolist():
        out = bytearray()
        for t in row[1:]:
            if t == tok.bos:
                continue
            if t == 2:  # end of a story: a paragraph break
                out += b"\n\n"
                continue
            m = byte.fullmatch(tok.tokens[t])
            out += bytes([int(m.group(1), 16)]) if m else tok.tokens[t].replace(SPACE, " ").encode()
        stories.append(out.decode("utf-8", "replace").strip())
    with open(a.out, "w") as f:
        f.write("\n\n".join(stories) + "\n")
    print(f"sample_text: wrote {a.out}: {a.seqs} sequences of {a.length} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
