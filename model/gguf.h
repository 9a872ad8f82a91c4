// GGUF v2/v3 reader over a memory map (format: docs/model.md and ggml's docs/gguf.md).
//
// Parsing checks every count, length and offset against the file size before it reads, so a
// truncated, corrupt or hostile file yields InvalidArgument with a one-line reason, never a crash
// or an out-of-bounds read. Tensor data stays in the map; TensorInfo::data points into it.
//
//   KVASIR_ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::Open("model.gguf"));
//   int64_t layers = gguf.GetInt("llama.block_count").value_or(0);
//   const GgufTensorInfo* wq = gguf.FindTensor("blk.0.attn_q.weight");
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/base/dtype.h"
#include "common/mmap_file.h"

namespace kvasir::model {

enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// One metadata value. Scalars are decoded at parse time; strings and arrays borrow the file's
// bytes (the GgufFile must outlive every view taken from them).
class GgufValue {
 public:
  GgufValueType type() const { return type_; }
  // Integer types and bool, converted to int64 (a uint64 above INT64_MAX gives nullopt).
  std::optional<int64_t> AsInt() const;
  // Float and integer types.
  std::optional<double> AsFloat() const;
  std::optional<bool> AsBool() const;
  std::optional<std::string_view> AsString() const;

  // Arrays. array_type() is the element type; nested arrays are parsed but not decoded further.
  bool is_array() const { return type_ == GgufValueType::kArray; }
  GgufValueType array_type() const { return array_type_; }
  uint64_t array_size() const { return array_size_; }
  // Whole-array conversions; nullopt when the element type does not fit.
  std::optional<std::vector<std::string_view>> AsStringArray() const;
  std::optional<std::vector<int64_t>> AsIntArray() const;
  std::optional<std::vector<float>> AsFloatArray() const;

 private:
  friend class GgufParser;
  GgufValueType type_ = GgufValueType::kUint8;
  GgufValueType array_type_ = GgufValueType::kUint8;
  uint64_t array_size_ = 0;
  int64_t i_ = 0;                   // integer scalars and bool
  uint64_t u_ = 0;                  // kUint64 scalars
  double f_ = 0;                    // float scalars
  const uint8_t* bytes_ = nullptr;  // strings: the characters; arrays: the first element
  uint64_t nbytes_ = 0;             // strings: the length; arrays: bytes of all elements
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the contiguous (row) dimension
  uint32_t ggml_type = 0;   // raw type id; DTypeSupported(ggml_type) tells if Kvasir computes it
  uint64_t offset = 0;      // from the start of the data section
  const uint8_t* data = nullptr;
  uint64_t size_bytes = 0;

  DType dtype() const { return static_cast<DType>(ggml_type); }
  int64_t num_elements() const;
};

class GgufFile {
 public:
  // Maps and parses the file. NotFound for a missing file, InvalidArgument for a malformed one
  // (the message names the file and the first problem found).
  static absl::StatusOr<GgufFile> Open(const std::string& path);
  // Parses bytes the caller keeps alive (fuzzing, tests). `name` is used in error messages.
  static absl::StatusOr<GgufFile> Parse(std::span<const uint8_t> bytes,
                                        std::string_view name = "<memory>");

  GgufFile(GgufFile&&) noexcept = default;
  GgufFile& operator=(GgufFile&&) noexcept = default;

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  const std::string& name() const { return name_; }

  // Metadata in file order, and lookup by key (nullptr when absent).
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* Find(std::string_view key) const;
  std::optional<int64_t> GetInt(std::string_view key) const;
  std::optional<double> GetFloat(std::string_view key) const;
  std::optional<bool> GetBool(std::string_view key) const;
  std::optional<std::string_view> GetString(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;

 private:
  friend class GgufParser;
  GgufFile() = default;

  MappedFile map_;  // empty for Parse()
  std::string name_;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  absl::flat_hash_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;
};

// Block size and bytes per block of any ggml type id (not only the supported ones), so that
// offsets of every tensor can be checked. Returns false for an unknown or removed id.
bool GgmlTypeSize(uint32_t ggml_type, int64_t* block_size, int64_t* block_bytes);
// "q4_K", "iq2_xs", ...; "type<N>" for unknown ids.
std::string GgmlTypeName(uint32_t ggml_type);

}  // namespace kvasir::model
