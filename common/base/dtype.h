// Element types of weights and tensors, with ggml's numbering so that a GGUF type id maps to a
// DType by value. Quantized types are stored in blocks: `BlockSize` elements in `BlockBytes`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kvasir {

enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ6_K = 14,
  kBF16 = 30,
};

// True for the types Kvasir reads and computes with (those above).
bool DTypeSupported(uint32_t ggml_type);
// Elements per block (1 for the float types).
int64_t DTypeBlockSize(DType t);
// Bytes per block.
int64_t DTypeBlockBytes(DType t);
// "q4_1", "f32", ...
std::string_view DTypeName(DType t);
// Bytes of a row of `n` elements; n must be a multiple of the block size.
inline int64_t DTypeRowBytes(DType t, int64_t n) {
  return n / DTypeBlockSize(t) * DTypeBlockBytes(t);
}

}  // namespace kvasir
