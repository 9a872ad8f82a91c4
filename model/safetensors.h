// safetensors reader over a memory map, and Hugging Face checkpoints made of one file or of
// shards listed in model.safetensors.index.json.
//
// The JSON header is validated in full before any tensor is exposed: known dtype, shape product
// times element size equal to the byte range, ranges inside the buffer and not overlapping. A
// file whose header lies gives InvalidArgument naming the file and the tensor.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/mmap_file.h"

namespace kvasir::model {

// Element types of safetensors ("F32", "BF16", ...). Kvasir computes with F32, F16 and BF16; the
// others are parsed and validated but refused when a model asks for them.
enum class SafeDType {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
  kF8E4M3,
  kF8E5M2
};
int64_t SafeDTypeSize(SafeDType t);
std::string_view SafeDTypeName(SafeDType t);

struct SafeTensorInfo {
  std::string name;
  SafeDType dtype = SafeDType::kF32;
  std::vector<int64_t> shape;  // outermost first (PyTorch order)
  const uint8_t* data = nullptr;
  uint64_t size_bytes = 0;
};

class SafetensorsFile {
 public:
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);
  // Parses bytes the caller keeps alive (fuzzing, tests).
  static absl::StatusOr<SafetensorsFile> Parse(std::span<const uint8_t> bytes,
                                               std::string_view name = "<memory>");
  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;

  const std::string& name() const { return name_; }
  const std::vector<SafeTensorInfo>& tensors() const { return tensors_; }
  const SafeTensorInfo* Find(std::string_view tensor) const;
  // The optional "__metadata__" string map.
  const std::vector<std::pair<std::string, std::string>>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  MappedFile map_;
  std::string name_;
  std::vector<SafeTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;
  std::vector<std::pair<std::string, std::string>> metadata_;
};

// All the safetensors of a checkpoint directory: model.safetensors, or the shards named by
// model.safetensors.index.json (every shard is opened and every tensor of the weight map must be
// found in the shard it names), or else every *.safetensors file in the folder.
class SafetensorsCheckpoint {
 public:
  static absl::StatusOr<SafetensorsCheckpoint> Open(const std::string& dir);
  SafetensorsCheckpoint(SafetensorsCheckpoint&&) noexcept = default;
  SafetensorsCheckpoint& operator=(SafetensorsCheckpoint&&) noexcept = default;

  const SafeTensorInfo* Find(std::string_view tensor) const;
  std::vector<std::string> TensorNames() const;
  size_t num_files() const { return files_.size(); }

 private:
  SafetensorsCheckpoint() = default;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  absl::flat_hash_map<std::string, const SafeTensorInfo*> index_;
};

}  // namespace kvasir::model
