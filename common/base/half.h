// IEEE binary16 and bfloat16 conversions, bit-exact with ggml's scalar versions (round to nearest
// even; bf16 keeps NaNs quiet). Hot loops use the F16C/AVX2 paths in kernels/cpu instead.
#pragma once

#include <cstdint>
#include <cstring>

namespace kvasir {

inline float Bits2Float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t Float2Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float Fp16ToFp32(uint16_t h) {
  // Branch-free conversion (Maratea's method, as in ggml and FP16 by Marat Dukhan).
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const uint32_t exp_offset = 0xE0u << 23;
  const float exp_scale = Bits2Float(0x7800000u);
  const float normalized = Bits2Float((two_w >> 4) + exp_offset) * exp_scale;
  const uint32_t magic_mask = 126u << 23;
  const float magic_bias = 0.5f;
  const float denormalized = Bits2Float((two_w >> 17) | magic_mask) - magic_bias;
  const uint32_t denormalized_cutoff = 1u << 27;
  const uint32_t result =
      sign | (two_w < denormalized_cutoff ? Float2Bits(denormalized) : Float2Bits(normalized));
  return Bits2Float(result);
}

inline uint16_t Fp32ToFp16(float f) {
  const float scale_to_inf = Bits2Float(0x77800000u);
  const float scale_to_zero = Bits2Float(0x08800000u);
  float base = (f < 0 ? -f : f) * scale_to_inf * scale_to_zero;
  const uint32_t w = Float2Bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = Bits2Float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = Float2Bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

inline float Bf16ToFp32(uint16_t h) { return Bits2Float(static_cast<uint32_t>(h) << 16); }

inline uint16_t Fp32ToBf16(float f) {
  const uint32_t u = Float2Bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it quiet
    return static_cast<uint16_t>((u >> 16) | 64);
  }
  return static_cast<uint16_t>((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

}  // namespace kvasir
