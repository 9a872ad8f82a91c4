// Private: the one door to libsentencepiece. Its header declares its own absl::string_view,
// which clashes with Abseil's, so only sentencepiece_model.cc includes it, and this interface
// uses plain std types (no Abseil header may be included here either).
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace kvasir::model::internal {

class SentencePieceModel {
 public:
  enum class PieceType { kNormal, kUnknown, kControl, kUnused, kByte };

  // Loads a serialized ModelProto (tokenizer.model). On failure returns nullptr and sets *error.
  static std::unique_ptr<SentencePieceModel> Load(const std::string& path, std::string* error);

  ~SentencePieceModel();
  SentencePieceModel(const SentencePieceModel&) = delete;
  SentencePieceModel& operator=(const SentencePieceModel&) = delete;

  int size() const;
  std::string piece(int id) const;
  float score(int id) const;
  PieceType type(int id) const;
  int bos_id() const;  // -1 when the model has none
  int eos_id() const;
  int unk_id() const;

  // Ids of `text` (no BOS/EOS). Safe from any thread. On failure returns false and sets *error.
  bool Encode(const std::string& text, std::vector<int>* ids, std::string* error) const;

 private:
  struct Impl;
  explicit SentencePieceModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvasir::model::internal
