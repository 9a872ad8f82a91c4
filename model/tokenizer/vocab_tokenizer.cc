// VocabTokenizer: special-token partition (llama.cpp tokenizer_st_partition), BOS/EOS,
// end-of-generation ids and token-to-piece decoding shared by every tokenizer.
#include "model/tokenizer/vocab_tokenizer.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "model/tokenizer/unicode_util.h"

namespace kvasir::model::internal {
namespace {

constexpr std::string_view kWordMarker = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// Token texts that end generation when the vocabulary has them (llama.cpp's list, less the
// entries that only some chat formats treat as an end).
constexpr std::string_view kEogTexts[] = {"<|im_end|>",      "<|endoftext|>", "<|eot_id|>",
                                          "<|end_of_text|>", "<|eom_id|>",    "<end_of_turn>"};

std::string ReplaceWordMarkers(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    if (text.compare(pos, kWordMarker.size(), kWordMarker) == 0) {
      out.push_back(' ');
      pos += kWordMarker.size();
    } else {
      out.push_back(text[pos++]);
    }
  }
  return out;
}

}  // namespace

absl::Status ValidateVocab(Vocab* vocab) {
  const size_t n = vocab->tokens.size();
  if (n == 0) return absl::InvalidArgumentError("tokenizer vocabulary is empty");
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer vocabulary too large: ", n));
  }
  if (vocab->scores.empty()) vocab->scores.assign(n, 0.0f);
  if (vocab->types.empty()) vocab->types.assign(n, TokenType::kNormal);
  if (vocab->scores.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer has ", n, " tokens but ", vocab->scores.size(), " scores"));
  }
  if (vocab->types.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer has ", n, " tokens but ", vocab->types.size(), " token types"));
  }
  for (size_t i = 0; i < n; ++i) {
    if (vocab->tokens[i].empty()) vocab->tokens[i] = absl::StrCat("[EMPTY_", i, "]");
    const auto t = static_cast<int32_t>(vocab->types[i]);
    if (t < 0 || t > static_cast<int32_t>(TokenType::kByte))
      vocab->types[i] = TokenType::kUndefined;
  }
  for (int32_t* id : {&vocab->bos_id, &vocab->eos_id, &vocab->unk_id, &vocab->eot_id}) {
    if (*id < -1 || *id >= static_cast<int64_t>(n)) *id = -1;
  }
  if (vocab->add_bos && vocab->bos_id < 0) vocab->add_bos = false;
  if (vocab->add_eos && vocab->eos_id < 0) vocab->add_eos = false;
  return absl::OkStatus();
}

VocabTokenizer::VocabTokenizer(Vocab vocab, Options options)
    : vocab_(std::move(vocab)), options_(options) {
  const auto n = static_cast<int32_t>(vocab_.tokens.size());
  token_to_id_.reserve(n);
  for (int32_t i = 0; i < n; ++i) {
    // The first id of a duplicated text wins, as in a sequential insert.
    token_to_id_.emplace(vocab_.tokens[i], i);
  }
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const char text[] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
    byte_tokens_[b] = Find(std::string_view(text, sizeof(text)));
  }

  bos_id_ = vocab_.bos_id;
  eos_id_ = vocab_.eos_id;
  add_bos_ = vocab_.add_bos;
  add_eos_ = vocab_.add_eos;
  chat_template_ = vocab_.chat_template;

  // End of generation: eos, eot and the well-known end texts. Those are control tokens whatever
  // the file says (llama.cpp overrides their type the same way).
  auto add_eog = [this](int32_t id) {
    if (id < 0) return;
    if (std::find(eog_ids_.begin(), eog_ids_.end(), id) == eog_ids_.end()) eog_ids_.push_back(id);
  };
  add_eog(vocab_.eos_id);
  add_eog(vocab_.eot_id);
  for (std::string_view text : kEogTexts) {
    const int32_t id = Find(text);
    if (id >= 0) {
      add_eog(id);
      vocab_.types[id] = TokenType::kControl;
    }
  }
  std::sort(eog_ids_.begin(), eog_ids_.end());

  for (int32_t i = 0; i < n; ++i) {
    const TokenType t = vocab_.types[i];
    if (t == TokenType::kControl || t == TokenType::kUnknown ||
        (t == TokenType::kUserDefined && options_.partition_user_defined)) {
      special_tokens_.push_back(i);
    }
  }
  std::stable_sort(special_tokens_.begin(), special_tokens_.end(), [this](int32_t a, int32_t b) {
    return vocab_.tokens[a].size() > vocab_.tokens[b].size();
  });
}

int32_t VocabTokenizer::Find(std::string_view text) const {
  const auto it = token_to_id_.find(ToAbsl(text));
  return it == token_to_id_.end() ? -1 : it->second;
}

TokenType VocabTokenizer::token_type(int32_t id) const {
  if (id < 0 || id >= n_vocab()) return TokenType::kUndefined;
  return vocab_.types[id];
}

std::string_view VocabTokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= n_vocab()) return {};
  return vocab_.tokens[id];
}

int32_t VocabTokenizer::TokenId(std::string_view text) const { return Find(text); }

std::vector<VocabTokenizer::Fragment> VocabTokenizer::Partition(std::string_view text,
                                                                bool parse_special) const {
  std::vector<Fragment> fragments = {{-1, 0, text.size()}};
  std::vector<Fragment> next;
  for (int32_t id : special_tokens_) {
    const TokenType type = vocab_.types[id];
    if (!parse_special && type != TokenType::kUserDefined) continue;
    const std::string& special = vocab_.tokens[id];
    next.clear();
    bool changed = false;
    for (const Fragment& f : fragments) {
      if (f.token >= 0 || f.length < special.size()) {
        next.push_back(f);
        continue;
      }
      const std::string_view raw = text.substr(f.begin, f.length);
      size_t pos = 0;
      while (true) {
        const size_t match = raw.find(special, pos);
        if (match == std::string_view::npos) break;
        if (match > pos) next.push_back({-1, f.begin + pos, match - pos});
        next.push_back({id, f.begin + match, special.size()});
        pos = match + special.size();
        changed = true;
      }
      if (pos < raw.size()) next.push_back({-1, f.begin + pos, raw.size() - pos});
    }
    if (changed) fragments.swap(next);
  }
  return fragments;
}

std::vector<int32_t> VocabTokenizer::Encode(std::string_view text, bool add_special,
                                            bool parse_special) const {
  std::vector<int32_t> out;
  if (add_special && add_bos_) out.push_back(bos_id_);
  if (!text.empty()) {
    std::string buffer;
    for (const Fragment& f : Partition(text, parse_special)) {
      if (f.token >= 0) {
        out.push_back(f.token);
        continue;
      }
      const std::string_view raw = text.substr(f.begin, f.length);
      const bool prefix = options_.space_prefix == SpacePrefix::kAlways ||
                          (options_.space_prefix == SpacePrefix::kFirst && f.begin == 0);
      if (prefix) {
        buffer.clear();
        buffer.push_back(' ');
        buffer.append(raw);
        EncodeFragment(buffer, &out);
      } else {
        EncodeFragment(raw, &out);
      }
    }
  }
  if (add_special && add_eos_) out.push_back(eos_id_);
  return out;
}

std::string VocabTokenizer::TokenToPiece(int32_t id, bool special) const {
  if (id < 0 || id >= n_vocab()) return {};
  const std::string& text = vocab_.tokens[id];
  switch (vocab_.types[id]) {
    case TokenType::kControl:
    case TokenType::kUnknown:
      return special ? text : std::string();
    case TokenType::kUserDefined:
      return text;
    case TokenType::kByte: {
      const int b = ParseByteToken(text);
      if (b < 0) return {};
      return std::string(1, static_cast<char>(b));
    }
    case TokenType::kNormal:
      return options_.kind == TokenizerKind::kSentencePiece ? ReplaceWordMarkers(text)
                                                            : ByteLevelDecode(text);
    case TokenType::kUnused:
    case TokenType::kUndefined:
      return {};
  }
  return {};
}

}  // namespace kvasir::model::internal
