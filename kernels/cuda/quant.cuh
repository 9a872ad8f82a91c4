// Device decoders of the weight types that the CUDA backend reads: f32, f16, bf16 and the ggml
// blocks of 32 elements Q4_0 (18 bytes: f16 d, 16 bytes of nibbles), Q4_1 (20 bytes: f16 d, f16 m,
// 16 bytes of nibbles) and Q8_0 (34 bytes: f16 d, 32 int8). In a 4-bit block, byte j holds element
// j in its low nibble and element j + 16 in its high nibble. Values:
//   Q4_0: (q - 8) * d    Q4_1: q * d + m    Q8_0: q * d
// Private to kernels/cuda.
#pragma once

#include <cstdint>

#include "common/base/dtype.h"
#include "kernels/cuda/common.cuh"

namespace kvasir::kernels::cuda {

constexpr int kQBlock = 32;  // elements per Q4_0 / Q4_1 / Q8_0 block

template <DType T>
struct QBlockBytes;
template <>
struct QBlockBytes<DType::kQ4_0> {
  static constexpr int kValue = 18;
};
template <>
struct QBlockBytes<DType::kQ4_1> {
  static constexpr int kValue = 20;
};
template <>
struct QBlockBytes<DType::kQ8_0> {
  static constexpr int kValue = 34;
};

// Two bytes, little-endian, at any alignment.
__device__ __forceinline__ uint16_t LoadU16Unaligned(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

// Element c of a row of type `type`, exactly as the CPU's DequantizeRow computes it (the Q4_1
// product and sum are rounded separately, not fused).
__device__ __forceinline__ float DequantElement(DType type, const uint8_t* row, int64_t c) {
  switch (type) {
    case DType::kF32:
      return reinterpret_cast<const float*>(row)[c];
    case DType::kF16:
      return HalfBitsToFloat(LoadU16Unaligned(row + 2 * c));
    case DType::kBF16:
      return Bf16BitsToFloat(LoadU16Unaligned(row + 2 * c));
    case DType::kQ4_0: {
      const uint8_t* b = row + (c / kQBlock) * 18;
      const int j = static_cast<int>(c % kQBlock);
      const float d = HalfBitsToFloat(LoadU16Unaligned(b));
      const int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
      return __fmul_rn(static_cast<float>(q - 8), d);
    }
    case DType::kQ4_1: {
      const uint8_t* b = row + (c / kQBlock) * 20;
      const int j = static_cast<int>(c % kQBlock);
      const float d = HalfBitsToFloat(LoadU16Unaligned(b));
      const float m = HalfBitsToFloat(LoadU16Unaligned(b + 2));
      const int q = j < 16 ? (b[4 + j] & 0xF) : (b[4 + j - 16] >> 4);
      return __fadd_rn(__fmul_rn(static_cast<float>(q), d), m);
    }
    case DType::kQ8_0: {
      const uint8_t* b = row + (c / kQBlock) * 34;
      const int j = static_cast<int>(c % kQBlock);
      const float d = HalfBitsToFloat(LoadU16Unaligned(b));
      return __fmul_rn(static_cast<float>(static_cast<int8_t>(b[2 + j])), d);
    }
    default:
      return 0.0f;  // not reached: the host checks the type
  }
}

// The 32 values of one block into w. The block is 2-byte aligned (the host checks the weights'
// address and row size), so it is read in 16-bit words.
template <DType T>
__device__ __forceinline__ void DecodeBlock(const uint8_t* block, float* w) {
  const uint16_t* h = reinterpret_cast<const uint16_t*>(block);
  const float d = HalfBitsToFloat(__ldg(h));
  if constexpr (T == DType::kQ8_0) {
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      const uint16_t pair = __ldg(h + 1 + k);
      w[2 * k] = static_cast<float>(static_cast<int8_t>(pair & 0xFF)) * d;
      w[2 * k + 1] = static_cast<float>(static_cast<int8_t>(pair >> 8)) * d;
    }
  } else {
    // Q4_0: offset -8 * d, no minimum; Q4_1: offset m.
    const int first = T == DType::kQ4_1 ? 2 : 1;  // 16-bit word of the first nibble byte
    float offset = -8.0f * d;
    if constexpr (T == DType::kQ4_1) offset = HalfBitsToFloat(__ldg(h + 1));
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const uint16_t pair = __ldg(h + first + k);  // bytes 2k and 2k + 1
      w[2 * k] = static_cast<float>(pair & 0xF) * d + offset;
      w[2 * k + 16] = static_cast<float>((pair >> 4) & 0xF) * d + offset;
      w[2 * k + 1] = static_cast<float>((pair >> 8) & 0xF) * d + offset;
      w[2 * k + 17] = static_cast<float>(pair >> 12) * d + offset;
    }
  }
}

}  // namespace kvasir::kernels::cuda
