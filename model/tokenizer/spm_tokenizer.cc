// SentencePiece BPE by score over a GGUF "llama" vocabulary (llama.cpp llm_tokenizer_spm):
// a max-heap of adjacent pairs keyed by (score desc, left index asc), stale entries skipped,
// then resegmentation of symbols outside the vocabulary and <0xHH> byte fallback.
#include <algorithm>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "model/tokenizer/algorithms.h"
#include "model/tokenizer/unicode_util.h"

namespace kvasir::model::internal {
namespace {

constexpr std::string_view kWordMarker = "\xE2\x96\x81";

struct Symbol {
  int prev;
  int next;
  size_t begin;  // byte offset in the escaped text
  size_t n;      // bytes; 0 once merged into the symbol on its left
  int node;      // the merge-tree node this symbol currently is
};

// rev_merge: every symbol ever formed, with the two it was merged from (-1 for characters).
struct Node {
  size_t begin;
  size_t n;
  int left;
  int right;
};

struct Bigram {
  int left;
  int right;
  float score;
  size_t size;
};

struct BigramOrder {
  // std::priority_queue pops the "largest": highest score, then the leftmost pair.
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

class SpmTokenizer final : public VocabTokenizer {
 public:
  SpmTokenizer(Vocab vocab, bool add_space_prefix)
      : VocabTokenizer(std::move(vocab),
                       {TokenizerKind::kSentencePiece,
                        add_space_prefix ? SpacePrefix::kAlways : SpacePrefix::kNever, true}) {}

 protected:
  void EncodeFragment(std::string_view raw, std::vector<int32_t>* out) const override {
    std::string text;
    text.reserve(raw.size() + 8);
    for (char c : raw) {
      if (c == ' ') {
        text.append(kWordMarker);
      } else {
        text.push_back(c);
      }
    }
    if (text.empty()) return;

    std::vector<Symbol> symbols;
    std::vector<Node> nodes;
    symbols.reserve(text.size());
    nodes.reserve(text.size() * 2);
    for (size_t offs = 0; offs < text.size();) {
      const size_t len =
          std::min(Utf8LenFromLead(static_cast<uint8_t>(text[offs])), text.size() - offs);
      const int index = static_cast<int>(symbols.size());
      symbols.push_back({index - 1, offs + len == text.size() ? -1 : index + 1, offs, len, index});
      nodes.push_back({offs, len, -1, -1});
      offs += len;
    }

    std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue;
    auto try_add = [&](int left, int right) {
      if (left < 0 || right < 0) return;
      const std::string_view pair(text.data() + symbols[left].begin,
                                  symbols[left].n + symbols[right].n);
      const int32_t id = Find(pair);
      if (id < 0) return;
      queue.push({left, right, vocab().scores[id], pair.size()});
    };
    for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add(i - 1, i);

    while (!queue.empty()) {
      const Bigram bigram = queue.top();
      queue.pop();
      Symbol& left = symbols[bigram.left];
      Symbol& right = symbols[bigram.right];
      if (left.n == 0 || right.n == 0 || left.n + right.n != bigram.size) continue;  // stale
      nodes.push_back({left.begin, left.n + right.n, left.node, right.node});
      left.node = static_cast<int>(nodes.size()) - 1;
      left.n += right.n;
      right.n = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = bigram.left;
      try_add(left.prev, bigram.left);
      try_add(bigram.left, left.next);
    }

    for (int i = 0; i != -1; i = symbols[i].next) {
      Resegment(text, nodes, symbols[i].node, out);
    }
  }

 private:
  // Emits the token of a final symbol. A symbol that is not a usable token (only possible for
  // an unused-type piece, which SentencePiece never emits) is split back into the two symbols it
  // was merged from (SentencePiece's rev_merge), down to single characters, which fall back to
  // their bytes (<0xHH>, or the unknown token when the vocabulary lacks byte tokens).
  void Resegment(const std::string& text, const std::vector<Node>& nodes, int node,
                 std::vector<int32_t>* out) const {
    const Node& nd = nodes[node];
    const std::string_view piece(text.data() + nd.begin, nd.n);
    const int32_t id = Find(piece);
    if (id >= 0 && (vocab().types[id] != TokenType::kUnused || nd.left < 0)) {
      out->push_back(id);
      return;
    }
    if (nd.left >= 0) {
      Resegment(text, nodes, nd.left, out);
      Resegment(text, nodes, nd.right, out);
      return;
    }
    bool have_bytes = true;
    for (char c : piece) have_bytes = have_bytes && ByteToken(static_cast<uint8_t>(c)) >= 0;
    if (have_bytes) {
      for (char c : piece) out->push_back(ByteToken(static_cast<uint8_t>(c)));
    } else if (vocab().unk_id >= 0) {
      out->push_back(vocab().unk_id);  // one unknown per character, as SentencePiece
    }
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeSpmTokenizer(Vocab vocab, bool add_space_prefix) {
  if (absl::Status s = ValidateVocab(&vocab); !s.ok()) return s;
  return std::unique_ptr<Tokenizer>(new SpmTokenizer(std::move(vocab), add_space_prefix));
}

}  // namespace kvasir::model::internal
