"""SentencePiece-style ("llama" vocabulary in GGUF) tokenization, for training text.

The rule of llama.cpp's SPM tokenizer, which the engine's tokenizer follows: spaces become U+2581,
one is put in front of the text, the text is split into characters, and the adjacent pair whose
concatenation is a vocabulary token of the highest score is merged, again and again (ties: the
leftmost); what is left and not in the vocabulary is spelled as <0xXX> byte tokens.

For speed on long texts, `encode_lines` tokenizes line by line and joins the lines with the
newline's token: merges never cross a newline then (none of the vocabularies used here has a
token that holds one).
"""

from __future__ import annotations

import heapq

SPACE = "\u2581"


class SpmTokenizer:
    def __init__(self, tokens: list[str], scores: list[float], bos: int):
        self.tokens = tokens
        self.scores = scores
        self.bos = bos
        self.index = {t: i for i, t in enumerate(tokens)}
        self.byte_ids = [self.index.get(f"<0x{b:02X}>") for b in range(256)]

    @classmethod
    def from_gguf(cls, path: str) -> "SpmTokenizer":
        import gguf
        r = gguf.GGUFReader(path)
        if r.fields["tokenizer.ggml.model"].contents() != "llama":
            raise ValueError(f"{path}: not a SentencePiece (llama) vocabulary")
        f = r.fields["tokenizer.ggml.tokens"]
        tokens = [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
        scores = [float(x) for x in r.fields["tokenizer.ggml.scores"].contents()]
        bos = int(r.fields["tokenizer.ggml.bos_token_id"].contents())
        return cls(tokens, scores, bos)

    def _piece(self, text: str) -> list[int]:
        syms = list(text)
        if not syms:
            return []
        prev = list(range(-1, len(syms) - 1))
        nxt = list(range(1, len(syms) + 1))
        nxt[-1] = -1
        alive = [True] * len(syms)
        heap = []

        def push(i):
            j = nxt[i]
            if j < 0:
                return
            cand = syms[i] + syms[j]
            tid = self.index.get(cand)
            if tid is not None:
                heapq.heappush(heap, (-self.scores[tid], i, syms[i], syms[j]))

        for i in range(len(syms) - 1):
            push(i)
        while heap:
            _, i, left, right = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j < 0 or syms[i] != left or syms[j] != right:
                continue  # stale
            syms[i] = left + right
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prev[nxt[j]] = i
            if prev[i] >= 0:
                push(prev[i])
            push(i)
        out = []
        i = 0
        while i >= 0:
            tid = self.index.get(syms[i])
            if tid is not None:
                out.append(tid)
            else:
                for b in syms[i].encode("utf-8"):
                    out.append(self.byte_ids[b] if self.byte_ids[b] is not None else 0)
            i = nxt[i]
        return out

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = [self.bos] if bos else []
        return ids + self._piece(SPACE + text.replace(" ", SPACE))

    def encode_lines(self, text: str, bos: bool = True) -> list[int]:
        newline = self._piece("\n")
        ids = [self.bos] if bos else []
        for n, line in enumerate(text.split("\n")):
            if n > 0:
                ids += newline
            line = line.replace(" ", SPACE)
            ids += self._piece(SPACE + line if n == 0 else line)
        return ids
