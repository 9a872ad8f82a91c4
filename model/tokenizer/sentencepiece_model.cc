// libsentencepiece behind SentencePieceModel. This file must include no Abseil header: the
// SentencePiece header defines absl::string_view itself (see DESIGN.md).
#include "model/tokenizer/sentencepiece_model.h"

#include <sentencepiece_processor.h>

#include <utility>

namespace kvasir::model::internal {

struct SentencePieceModel::Impl {
  sentencepiece::SentencePieceProcessor processor;
};

SentencePieceModel::SentencePieceModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SentencePieceModel::~SentencePieceModel() = default;

std::unique_ptr<SentencePieceModel> SentencePieceModel::Load(const std::string& path,
                                                             std::string* error) {
  auto impl = std::make_unique<Impl>();
  const auto status = impl->processor.Load(path);
  if (!status.ok()) {
    *error = "cannot load SentencePiece model " + path + ": " + status.ToString();
    return nullptr;
  }
  if (impl->processor.GetPieceSize() <= 0) {
    *error = "SentencePiece model " + path + " has no pieces";
    return nullptr;
  }
  return std::unique_ptr<SentencePieceModel>(new SentencePieceModel(std::move(impl)));
}

int SentencePieceModel::size() const { return impl_->processor.GetPieceSize(); }
std::string SentencePieceModel::piece(int id) const { return impl_->processor.IdToPiece(id); }
float SentencePieceModel::score(int id) const { return impl_->processor.GetScore(id); }

SentencePieceModel::PieceType SentencePieceModel::type(int id) const {
  const auto& p = impl_->processor;
  if (p.IsUnknown(id)) return PieceType::kUnknown;
  if (p.IsControl(id)) return PieceType::kControl;
  if (p.IsUnused(id)) return PieceType::kUnused;
  if (p.IsByte(id)) return PieceType::kByte;
  return PieceType::kNormal;
}

int SentencePieceModel::bos_id() const { return impl_->processor.bos_id(); }
int SentencePieceModel::eos_id() const { return impl_->processor.eos_id(); }
int SentencePieceModel::unk_id() const { return impl_->processor.unk_id(); }

bool SentencePieceModel::Encode(const std::string& text, std::vector<int>* ids,
                                std::string* error) const {
  const auto status = impl_->processor.Encode(text, ids);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

}  // namespace kvasir::model::internal
