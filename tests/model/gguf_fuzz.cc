// Fuzz target for the GGUF reader: any bytes go to GgufFile::Parse; when they parse, every
// getter, every array conversion, every tensor's byte range and ConfigFromGguf are exercised, so
// a parse that accepts something it cannot read back shows up under ASan/UBSan.
#include <cstddef>
#include <cstdint>
#include <span>

#include "common/hash.h"
#include "model/gguf.h"
#include "model/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using kvasir::model::GgufFile;
  absl::StatusOr<GgufFile> file = GgufFile::Parse(std::span<const uint8_t>(data, size), "fuzz");
  if (!file.ok()) return 0;
  uint64_t sink = file->version() + file->alignment();
  for (const auto& [key, value] : file->metadata()) {
    sink += value.AsInt().value_or(0) + static_cast<uint64_t>(value.AsFloat().value_or(0) != 0);
    sink += value.AsBool().value_or(false) ? 1 : 0;
    sink += value.AsString().value_or("").size();
    if (auto strs = value.AsStringArray()) {
      for (std::string_view s : *strs) sink += kvasir::Xxh3(s);
    }
    if (auto ints = value.AsIntArray()) {
      for (int64_t i : *ints) sink += static_cast<uint64_t>(i);
    }
    if (auto floats = value.AsFloatArray()) sink += floats->size();
    sink += value.array_size() + static_cast<uint64_t>(value.array_type());
    const kvasir::model::GgufValue* found = file->Find(key);
    if (found != &value) __builtin_trap();  // keys are unique, so Find returns this value
    sink += file->GetInt(key).value_or(0) + file->GetString(key).value_or("").size();
  }
  for (const kvasir::model::GgufTensorInfo& t : file->tensors()) {
    if (file->FindTensor(t.name) != &t) __builtin_trap();
    sink += kvasir::Xxh3(t.data, t.size_bytes) + static_cast<uint64_t>(t.num_elements());
  }
  absl::StatusOr<kvasir::model::ModelConfig> config = kvasir::model::ConfigFromGguf(*file);
  if (config.ok()) sink += static_cast<uint64_t>(config->KvBytesPerToken(2));
  volatile uint64_t keep = sink;
  (void)keep;
  return 0;
}
