// Private: the vocabulary table every Kvasir tokenizer is built on, and VocabTokenizer, the base
// that owns it. The base does what all algorithms share: the special-token partition of the
// input, BOS/EOS, end-of-generation ids and token-to-piece decoding; subclasses only encode one
// raw text fragment (SentencePiece scores, BPE ranks, or libsentencepiece).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "model/tokenizer/tokenizer.h"

namespace kvasir::model::internal {

// Whether a text fragment gets a leading space (SentencePiece's dummy prefix) before encoding.
enum class SpacePrefix {
  kNever,
  kFirst,   // only a fragment at the very start of the input (Metaspace prepend_scheme "first")
  kAlways,  // every fragment; in llama.cpp's terms "first, or after a special token"
};

struct Vocab {
  std::vector<std::string> tokens;  // [n_vocab] token text as stored
  std::vector<float> scores;        // [n_vocab] SentencePiece scores (0 when absent)
  std::vector<TokenType> types;     // [n_vocab]
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t eot_id = -1;
  bool add_bos = false;
  bool add_eos = false;
  std::string chat_template;
};

// Checks sizes and ids; fills scores/types when empty. Empty token texts become "[EMPTY_<i>]"
// (as llama.cpp does) so that no special token can match the empty string.
absl::Status ValidateVocab(Vocab* vocab);

class VocabTokenizer : public Tokenizer {
 public:
  struct Options {
    TokenizerKind kind = TokenizerKind::kByteLevelBpe;
    SpacePrefix space_prefix = SpacePrefix::kNever;
    // Match user-defined tokens in the text before encoding. libsentencepiece matches them
    // itself, so its wrapper turns this off.
    bool partition_user_defined = true;
  };

  VocabTokenizer(Vocab vocab, Options options);

  std::vector<int32_t> Encode(std::string_view text, bool add_special,
                              bool parse_special) const override;
  std::string TokenToPiece(int32_t id, bool special) const override;

  TokenizerKind kind() const override { return options_.kind; }
  int32_t n_vocab() const override { return static_cast<int32_t>(vocab_.tokens.size()); }
  TokenType token_type(int32_t id) const override;
  std::string_view token_text(int32_t id) const override;
  int32_t TokenId(std::string_view text) const override;

  const Vocab& vocab() const { return vocab_; }

 protected:
  // Encodes one fragment of raw text (no special tokens in it, never empty) and appends the ids.
  // `text` already carries the SentencePiece space prefix when one applies (as ' ').
  virtual void EncodeFragment(std::string_view text, std::vector<int32_t>* out) const = 0;

  // Id of an exact token text, or -1.
  int32_t Find(std::string_view text) const;
  // Id of the <0xHH> token of byte `b`, or -1.
  int32_t ByteToken(uint8_t b) const { return byte_tokens_[b]; }

 private:
  struct Fragment {
    int32_t token;  // >= 0: a special token; -1: raw text [begin, begin + length)
    size_t begin;
    size_t length;
  };
  std::vector<Fragment> Partition(std::string_view text, bool parse_special) const;

  Vocab vocab_;
  Options options_;
  absl::flat_hash_map<std::string, int32_t> token_to_id_;
  std::vector<int32_t> special_tokens_;  // control, user-defined, unknown; longest text first
  int32_t byte_tokens_[256];
};

}  // namespace kvasir::model::internal
