// Private: regex pre-tokenizers of byte-level BPE (PCRE2, UTF + UCP). A pre-tokenizer is a list
// of regexes applied in turn, each one re-splitting the pieces of the previous one; both the
// matches and the unmatched gaps between them are kept as pieces (llama.cpp's
// unicode_regex_split, Hugging Face Split with behavior "Isolated").
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvasir::model::internal {

// The regex families Kvasir knows, named after llama.cpp's pre-tokenizer types.
enum class PreTokenizerKind {
  kDefault,    // llama.cpp LLAMA_VOCAB_PRE_TYPE_DEFAULT (4 regexes)
  kGpt2,       // the GPT-2 pattern alone
  kStarcoder,  // \p{N} split, then GPT-2 (smollm, starcoder, refact, command-r, ...)
  kLlama3,     // Llama-3 pattern (1-3 digit groups, case-insensitive contractions)
  kQwen2,      // Llama-3 pattern with single digits
  kFalcon,
  kCustom,  // regexes given by a tokenizer.json Split
};

class RegexSplitter;

class PreTokenizer {
 public:
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  static absl::StatusOr<PreTokenizer> Create(PreTokenizerKind kind);
  // Regexes in PCRE2 syntax (applied in order). Used for tokenizer.json Split patterns that do
  // not match a known family.
  static absl::StatusOr<PreTokenizer> FromPatterns(const std::vector<std::string>& patterns);

  // Splits valid UTF-8 `text` into pieces (views into `text`), in order, covering all of it.
  std::vector<std::string_view> Split(std::string_view text) const;

  PreTokenizerKind kind() const { return kind_; }

 private:
  PreTokenizer() = default;
  PreTokenizerKind kind_ = PreTokenizerKind::kGpt2;
  std::vector<std::unique_ptr<RegexSplitter>> splitters_;
};

// The regexes of a family, in PCRE2 syntax (\s widened to Unicode White_Space, which also
// holds U+0085). Exposed for tests and for recognizing tokenizer.json patterns.
std::vector<std::string> PreTokenizerPatterns(PreTokenizerKind kind);

}  // namespace kvasir::model::internal
