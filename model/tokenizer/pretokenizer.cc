// PCRE2-backed pre-tokenizers. Patterns are compiled once (JIT when available) and matched on
// each piece as its own subject, so lookaheads such as \s+(?!\S) stop at the piece's end exactly
// as llama.cpp's hand-written matchers do.
#include "model/tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/tokenizer/unicode_util.h"

namespace kvasir::model::internal {
namespace {

// White_Space is PCRE2's \s plus U+0085 (NEL), which PCRE2 leaves out.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\x{85}\p{L}\p{N}]+)"
    R"(|[\s\x{85}]+(?![^\s\x{85}])|[\s\x{85}]+)";
constexpr char kLlama3Pattern[] =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+)"
    R"(|\p{N}{1,3}| ?[^\s\x{85}\p{L}\p{N}]+[\r\n]*|[\s\x{85}]*[\r\n]+)"
    R"(|[\s\x{85}]+(?![^\s\x{85}])|[\s\x{85}]+)";
constexpr char kQwen2Pattern[] =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+)"
    R"(|\p{N}| ?[^\s\x{85}\p{L}\p{N}]+[\r\n]*|[\s\x{85}]*[\r\n]+)"
    R"(|[\s\x{85}]+(?![^\s\x{85}])|[\s\x{85}]+)";

}  // namespace

// One compiled regex. Immutable after construction; Split may run on many threads at once.
class RegexSplitter {
 public:
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Compile(const std::string& pattern) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR buffer[256];
      pcre2_get_error_message(error_code, buffer, sizeof(buffer));
      return absl::InvalidArgumentError(absl::StrCat("pre-tokenizer regex /", pattern,
                                                     "/ does not compile at offset ", error_offset,
                                                     ": ", reinterpret_cast<const char*>(buffer)));
    }
    // JIT is an optimization only: when it is unavailable pcre2_match interprets.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    return std::unique_ptr<RegexSplitter>(new RegexSplitter(code));
  }

  ~RegexSplitter() { pcre2_code_free(code_); }
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // Appends the pieces of `piece` to `out`: matches and the gaps between them.
  void Split(std::string_view piece, pcre2_match_data* md,
             std::vector<std::string_view>* out) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
    size_t start = 0;
    size_t gap_start = 0;
    while (start < piece.size()) {
      const int rc =
          pcre2_match(code_, subject, piece.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) break;  // no further match (or a matching error: the rest stays one piece)
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t m_begin = ov[0];
      const size_t m_end = ov[1];
      if (m_end <= m_begin) {
        // An empty match (possible in a tokenizer.json pattern): step over one character.
        if (m_begin >= piece.size()) break;
        start = m_begin + Utf8LenFromLead(static_cast<uint8_t>(piece[m_begin]));
        continue;
      }
      if (m_begin > gap_start) out->push_back(piece.substr(gap_start, m_begin - gap_start));
      out->push_back(piece.substr(m_begin, m_end - m_begin));
      start = gap_start = m_end;
    }
    if (gap_start < piece.size()) out->push_back(piece.substr(gap_start));
  }

  pcre2_match_data* NewMatchData() const {
    return pcre2_match_data_create_from_pattern(code_, nullptr);
  }

 private:
  explicit RegexSplitter(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

std::vector<std::string> PreTokenizerPatterns(PreTokenizerKind kind) {
  switch (kind) {
    case PreTokenizerKind::kDefault:
      return {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Pattern, R"(\p{N}+)", "[0-9][0-9][0-9]"};
    case PreTokenizerKind::kGpt2:
      return {kGpt2Pattern};
    case PreTokenizerKind::kStarcoder:
      return {R"(\p{N})", kGpt2Pattern};
    case PreTokenizerKind::kLlama3:
      return {kLlama3Pattern};
    case PreTokenizerKind::kQwen2:
      return {kQwen2Pattern};
    case PreTokenizerKind::kFalcon:
      return {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2Pattern, "[0-9][0-9][0-9]"};
    case PreTokenizerKind::kCustom:
      return {};
  }
  return {};
}

absl::StatusOr<PreTokenizer> PreTokenizer::Create(PreTokenizerKind kind) {
  auto result = FromPatterns(PreTokenizerPatterns(kind));
  if (result.ok()) result->kind_ = kind;
  return result;
}

absl::StatusOr<PreTokenizer> PreTokenizer::FromPatterns(const std::vector<std::string>& patterns) {
  PreTokenizer pre;
  pre.kind_ = PreTokenizerKind::kCustom;
  for (const std::string& pattern : patterns) {
    auto splitter = RegexSplitter::Compile(pattern);
    if (!splitter.ok()) return splitter.status();
    pre.splitters_.push_back(*std::move(splitter));
  }
  return pre;
}

std::vector<std::string_view> PreTokenizer::Split(std::string_view text) const {
  std::vector<std::string_view> pieces;
  if (text.empty()) return pieces;
  pieces.push_back(text);
  std::vector<std::string_view> next;
  for (const auto& splitter : splitters_) {
    pcre2_match_data* md = splitter->NewMatchData();
    if (md == nullptr) continue;  // out of memory: leave the pieces as they are
    next.clear();
    next.reserve(pieces.size() * 2);
    for (std::string_view piece : pieces) splitter->Split(piece, md, &next);
    pcre2_match_data_free(md);
    pieces.swap(next);
  }
  return pieces;
}

}  // namespace kvasir::model::internal
