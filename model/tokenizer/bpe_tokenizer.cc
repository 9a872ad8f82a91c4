// Rank-ordered BPE (llama.cpp llm_tokenizer_bpe, Hugging Face BPE): per pre-tokenized piece, a
// min-heap of adjacent pairs keyed by (merge rank, left index), stale entries skipped. Merges are
// indexed by the pair of token ids, so one lookup gives both the rank and the merged token.
#include <algorithm>
#include <cstdint>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/log.h"
#include "model/tokenizer/algorithms.h"
#include "model/tokenizer/unicode_util.h"

namespace kvasir::model::internal {
namespace {

constexpr std::string_view kWordMarker = "\xE2\x96\x81";

struct Merge {
  int32_t rank;
  int32_t result;  // token id of left + right, or -1 when that text is not a token
};

struct Symbol {
  int prev;
  int next;
  size_t begin;
  size_t n;    // bytes; 0 once merged into the symbol on its left
  int32_t id;  // token id of the symbol's text, or -1
};

struct Bigram {
  int32_t rank;
  int left;
  int right;
  size_t left_n;
  size_t right_n;
};

struct BigramOrder {
  // std::priority_queue pops the "largest": lowest rank, then the leftmost pair.
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

class BpeTokenizer final : public VocabTokenizer {
 public:
  BpeTokenizer(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
               BpeOptions options)
      : VocabTokenizer(
            std::move(vocab),
            {options.byte_level ? TokenizerKind::kByteLevelBpe : TokenizerKind::kSentencePiece,
             options.byte_level ? SpacePrefix::kNever : options.space_prefix, true}),
        options_(std::move(options)) {
    merges_.reserve(merges.size());
    size_t skipped = 0;
    std::string joined;
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const int32_t left = Find(merges[rank].first);
      const int32_t right = Find(merges[rank].second);
      if (left < 0 || right < 0) {
        ++skipped;
        continue;
      }
      joined.assign(merges[rank].first);
      joined.append(merges[rank].second);
      // The first rank of a repeated pair wins.
      merges_.emplace(PairKey(left, right), Merge{static_cast<int32_t>(rank), Find(joined)});
    }
    if (skipped > 0) {
      KVASIR_LOG_SUBSYS(DEBUG, kModel, "bpe: %zu merges name texts outside the vocabulary",
                        skipped);
    }
  }

 protected:
  void EncodeFragment(std::string_view raw, std::vector<int32_t>* out) const override {
    if (options_.byte_level) {
      EncodeByteLevel(raw, out);
    } else {
      EncodeWordMarked(raw, out);
    }
  }

 private:
  void EncodeByteLevel(std::string_view raw, std::vector<int32_t>* out) const {
    // Ill-formed UTF-8 becomes U+FFFD first, as llama.cpp's code point split does.
    std::string storage;
    std::string_view text = raw;
    if (!IsValidUtf8(text)) {
      storage = SanitizeUtf8(text);
      text = storage;
    }
    std::string prefixed;
    if (options_.add_prefix_space && text.front() != ' ') {
      prefixed.reserve(text.size() + 1);
      prefixed.push_back(' ');
      prefixed.append(text);
      text = prefixed;
    }
    std::string encoded;
    if (options_.pre_tokenizer.has_value()) {
      for (std::string_view piece : options_.pre_tokenizer->Split(text)) {
        encoded = ByteLevelEncode(piece);
        EncodeWord(encoded, out);
      }
    } else {
      encoded = ByteLevelEncode(text);
      EncodeWord(encoded, out);
    }
  }

  void EncodeWordMarked(std::string_view raw, std::vector<int32_t>* out) const {
    std::string text;
    text.reserve(raw.size() + 8);
    for (char c : raw) {
      if (c == ' ') {
        text.append(kWordMarker);
      } else {
        text.push_back(c);
      }
    }
    if (!options_.split_on_word_marker) {
      EncodeWord(text, out);
      return;
    }
    // Metaspace split: each piece starts at a word marker (the first may not).
    size_t start = 0;
    while (start < text.size()) {
      size_t next = text.find(kWordMarker, start + 1);
      if (next == std::string::npos) next = text.size();
      EncodeWord(std::string_view(text).substr(start, next - start), out);
      start = next;
    }
  }

  // BPE over one piece (already byte-level encoded or word-marked).
  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const {
    if (word.empty()) return;
    if (options_.ignore_merges) {
      const int32_t id = Find(word);
      if (id >= 0) {
        out->push_back(id);
        return;
      }
    }
    std::vector<Symbol>& symbols = scratch_symbols();
    symbols.clear();
    for (size_t offs = 0; offs < word.size();) {
      const size_t len =
          std::min(Utf8LenFromLead(static_cast<uint8_t>(word[offs])), word.size() - offs);
      const int index = static_cast<int>(symbols.size());
      symbols.push_back({index - 1, offs + len == word.size() ? -1 : index + 1, offs, len,
                         Find(word.substr(offs, len))});
      offs += len;
    }

    std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue;
    auto try_add = [&](int left, int right) {
      if (left < 0 || right < 0) return;
      const Symbol& l = symbols[left];
      const Symbol& r = symbols[right];
      if (l.id < 0 || r.id < 0) return;
      const auto it = merges_.find(PairKey(l.id, r.id));
      if (it == merges_.end()) return;
      queue.push({it->second.rank, left, right, l.n, r.n});
    };
    for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add(i - 1, i);

    while (!queue.empty()) {
      const Bigram bigram = queue.top();
      queue.pop();
      Symbol& left = symbols[bigram.left];
      Symbol& right = symbols[bigram.right];
      if (left.n != bigram.left_n || right.n != bigram.right_n || left.next != bigram.right) {
        continue;  // stale: one side changed since the pair was queued
      }
      left.id = merges_.find(PairKey(left.id, right.id))->second.result;
      left.n += right.n;
      right.n = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = bigram.left;
      try_add(left.prev, bigram.left);
      try_add(bigram.left, left.next);
    }

    bool last_was_unk = false;
    for (int i = 0; i != -1; i = symbols[i].next) {
      const Symbol& s = symbols[i];
      if (s.id >= 0) {
        out->push_back(s.id);
        last_was_unk = false;
        continue;
      }
      EmitUnknown(word.substr(s.begin, s.n), &last_was_unk, out);
    }
  }

  // A symbol whose text is not a token.
  void EmitUnknown(std::string_view text, bool* last_was_unk, std::vector<int32_t>* out) const {
    if (options_.byte_fallback) {
      bool all = true;
      for (char c : text) all = all && ByteToken(static_cast<uint8_t>(c)) >= 0;
      if (all) {
        for (char c : text) out->push_back(ByteToken(static_cast<uint8_t>(c)));
        *last_was_unk = false;
        return;
      }
    }
    const int32_t unk = vocab().unk_id;
    if (unk >= 0 && (options_.byte_fallback || !options_.byte_level)) {
      if (!(options_.fuse_unk && *last_was_unk)) out->push_back(unk);
      *last_was_unk = true;
      return;
    }
    // llama.cpp: the tokens of its single bytes, where there are any.
    for (char c : text) {
      const int32_t id = Find(std::string_view(&c, 1));
      if (id >= 0) out->push_back(id);
    }
    *last_was_unk = false;
  }

  static std::vector<Symbol>& scratch_symbols() {
    thread_local std::vector<Symbol> symbols;
    return symbols;
  }

  BpeOptions options_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeBpeTokenizer(
    Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
    BpeOptions options) {
  if (absl::Status s = ValidateVocab(&vocab); !s.ok()) return s;
  return std::unique_ptr<Tokenizer>(new BpeTokenizer(std::move(vocab), merges, std::move(options)));
}

}  // namespace kvasir::model::internal
