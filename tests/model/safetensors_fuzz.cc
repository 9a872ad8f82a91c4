// Fuzz target for the safetensors reader: any bytes go to SafetensorsFile::Parse; when they
// parse, every tensor's byte range and the metadata are read back, so a header that lies and
// still gets through shows up under ASan/UBSan.
#include <cstddef>
#include <cstdint>
#include <span>

#include "common/hash.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using kvasir::model::SafetensorsFile;
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Parse(std::span<const uint8_t>(data, size), "fuzz");
  if (!file.ok()) return 0;
  uint64_t sink = 0;
  for (const kvasir::model::SafeTensorInfo& t : file->tensors()) {
    if (file->Find(t.name) != &t) __builtin_trap();
    uint64_t elements = 1;
    for (int64_t d : t.shape) elements *= static_cast<uint64_t>(d);
    if (elements * kvasir::model::SafeDTypeSize(t.dtype) != t.size_bytes) __builtin_trap();
    sink += kvasir::Xxh3(t.data, t.size_bytes);
  }
  for (const auto& [k, v] : file->metadata()) sink += k.size() + v.size();
  volatile uint64_t keep = sink;
  (void)keep;
  return 0;
}
