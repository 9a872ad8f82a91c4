// Tokenizer over libsentencepiece (Hugging Face tokenizer.model). Encoding of raw text is the
// library's; the special-token partition, BOS/EOS and decoding come from VocabTokenizer over a
// copy of the model's pieces.
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/log.h"
#include "model/tokenizer/algorithms.h"
#include "model/tokenizer/sentencepiece_model.h"

namespace kvasir::model::internal {
namespace {

class SentencePieceLibTokenizer final : public VocabTokenizer {
 public:
  SentencePieceLibTokenizer(std::unique_ptr<SentencePieceModel> model, Vocab vocab)
      // libsentencepiece adds the dummy prefix and matches user-defined pieces itself.
      : VocabTokenizer(std::move(vocab), {TokenizerKind::kSentencePiece, SpacePrefix::kNever,
                                          /*partition_user_defined=*/false}),
        model_(std::move(model)) {}

 protected:
  void EncodeFragment(std::string_view text, std::vector<int32_t>* out) const override {
    std::vector<int> ids;
    std::string error;
    if (!model_->Encode(std::string(text), &ids, &error)) {
      KVASIR_LOG_SUBSYS(WARN, kModel, "sentencepiece encode failed: %s", error);
      return;
    }
    out->insert(out->end(), ids.begin(), ids.end());
  }

 private:
  std::unique_ptr<SentencePieceModel> model_;
};

TokenType ToTokenType(SentencePieceModel::PieceType type) {
  switch (type) {
    case SentencePieceModel::PieceType::kNormal:
      return TokenType::kNormal;
    case SentencePieceModel::PieceType::kUnknown:
      return TokenType::kUnknown;
    case SentencePieceModel::PieceType::kControl:
      return TokenType::kControl;
    case SentencePieceModel::PieceType::kUnused:
      return TokenType::kUnused;
    case SentencePieceModel::PieceType::kByte:
      return TokenType::kByte;
  }
  return TokenType::kNormal;
}

}  // namespace

Vocab VocabFromSentencePiece(const SentencePieceModel& model) {
  Vocab vocab;
  const int n = model.size();
  vocab.tokens.reserve(n);
  vocab.scores.reserve(n);
  vocab.types.reserve(n);
  for (int i = 0; i < n; ++i) {
    vocab.tokens.push_back(model.piece(i));
    vocab.scores.push_back(model.score(i));
    vocab.types.push_back(ToTokenType(model.type(i)));
  }
  vocab.bos_id = model.bos_id();
  vocab.eos_id = model.eos_id();
  vocab.unk_id = model.unk_id();
  vocab.add_bos = true;
  return vocab;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeSentencePieceLibTokenizer(
    std::unique_ptr<SentencePieceModel> model, Vocab vocab) {
  if (model == nullptr) return absl::InvalidArgumentError("no SentencePiece model");
  if (absl::Status s = ValidateVocab(&vocab); !s.ok()) return s;
  return std::unique_ptr<Tokenizer>(
      new SentencePieceLibTokenizer(std::move(model), std::move(vocab)));
}

}  // namespace kvasir::model::internal
