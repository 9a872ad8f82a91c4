// Private factories of the concrete tokenizers. The loaders (GGUF, tokenizer.json,
// tokenizer.model) fill a Vocab and pick one of these; the algorithms know nothing of files.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer/pretokenizer.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/vocab_tokenizer.h"

namespace kvasir::model::internal {

// SentencePiece BPE by token score (GGUF "llama" vocabularies), as llama.cpp's
// llm_tokenizer_spm: spaces become U+2581, the highest-scoring adjacent pair whose concatenation
// is a token merges first (ties: leftmost), and symbols left outside the vocabulary fall back
// to <0xHH> byte tokens.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeSpmTokenizer(Vocab vocab, bool add_space_prefix);

struct BpeOptions {
  // GPT-2 byte-level: every byte of a piece is written as one code point before merging, and
  // decoding maps them back. Otherwise SentencePiece-style: spaces become U+2581.
  bool byte_level = true;
  // Byte-level only: the pre-tokenizer; nullopt keeps each fragment whole.
  std::optional<PreTokenizer> pre_tokenizer;
  // Byte-level only: prepend ' ' to a fragment that does not start with one (HF ByteLevel
  // add_prefix_space).
  bool add_prefix_space = false;
  // A piece that is itself a token is emitted whole (llama3 and HF "ignore_merges").
  bool ignore_merges = false;
  // SentencePiece-style only: leading-space rule (Prepend normalizer / Metaspace prepend_scheme).
  SpacePrefix space_prefix = SpacePrefix::kNever;
  // SentencePiece-style only: split pieces before each U+2581 (Metaspace split = true).
  bool split_on_word_marker = false;
  // Symbols outside the vocabulary become <0xHH> byte tokens; else the unknown token (fused
  // when fuse_unk); byte-level vocabularies without either drop them as llama.cpp does.
  bool byte_fallback = false;
  bool fuse_unk = false;
};

// Rank-ordered BPE (GGUF "gpt2" vocabularies and Hugging Face tokenizer.json "BPE" models):
// repeatedly merges the adjacent pair with the lowest merge rank (ties: leftmost). `merges`
// are (left, right) token texts in rank order; pairs whose parts are not tokens are ignored.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeBpeTokenizer(
    Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
    BpeOptions options);

class SentencePieceModel;

// Tokenizer over libsentencepiece (a Hugging Face tokenizer.model file). `vocab` mirrors the
// model's pieces (VocabFromSentencePiece) with the caller's BOS/EOS settings applied.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeSentencePieceLibTokenizer(
    std::unique_ptr<SentencePieceModel> model, Vocab vocab);

// The pieces, scores and types of a loaded model, with its bos/eos/unk ids; add_bos true.
Vocab VocabFromSentencePiece(const SentencePieceModel& model);

}  // namespace kvasir::model::internal
