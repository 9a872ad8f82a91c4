// Block layouts of the quantized weight types (ggml's, byte for byte) and of the 8-bit activation
// buffers that MatMul quantizes x into (Kvasir's own, never stored). Private to kernels/cpu.
// The dequantization formulas are in docs/kernels.md.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/base/dtype.h"

namespace kvasir::kernels::cpu {

inline constexpr int kQK = 32;    // elements per Q4_0 / Q4_1 / Q8_0 block
inline constexpr int kQKK = 256;  // elements per Q4_K / Q6_K super-block

struct BlockQ4_0 {
  uint16_t d;           // f16 scale
  uint8_t qs[kQK / 2];  // byte j: element j (low nibble), element j + 16 (high nibble)
};
struct BlockQ4_1 {
  uint16_t d;  // f16 scale
  uint16_t m;  // f16 minimum
  uint8_t qs[kQK / 2];
};
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};
struct BlockQ4K {
  uint16_t d;            // f16 super-block scale of the 6-bit sub-block scales
  uint16_t dmin;         // f16 super-block scale of the 6-bit sub-block minimums
  uint8_t scales[12];    // 8 scales and 8 minimums, 6 bits each (see Q4KScaleMin)
  uint8_t qs[kQKK / 2];  // 4 chunks of 32 bytes; chunk c holds elements 64c+l (low), 64c+32+l
};
struct BlockQ6K {
  uint8_t ql[kQKK / 2];      // low 4 bits
  uint8_t qh[kQKK / 4];      // high 2 bits
  int8_t scales[kQKK / 16];  // one per 16 elements
  uint16_t d;                // f16 super-block scale (last)
};
static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4K) == 144);
static_assert(sizeof(BlockQ6K) == 210);

// The helpers below are `static`: every translation unit gets its own copy, compiled with its own
// flags, so the ISA-specific files (*_avx2.cc, *_avx512.cc) may call them without the linker
// keeping an AVX-compiled copy for the baseline code.

// Scale and minimum j (< 8) of a Q4_K super-block (ggml's get_scale_min_k4).
static inline void Q4KScaleMin(int j, const uint8_t* s, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// The kRows8 layout (kernels/types.h) of Q4_0, Q4_1 and Q8_0: a group of 8 rows holds, for each
// block b in turn, the 8 rows' block b as
//   [f16 d of rows 0..7] ([f16 m of rows 0..7], Q4_1) [quant bytes, 4 at a time: bytes 4c..4c+3
//   of rows 0..7 for c = 0, 1, ...]
// i.e. 8 x the block's bytes, so the group fills exactly the bytes of its 8 rows. One 32-byte load
// then gives every row's next 4 quant bytes, one row per 32-bit lane, and the 8 scales convert
// with one instruction: the decode kernels keep one row per lane and need no horizontal sums.
struct Rows8Format {
  int halves = 0;       // f16 values per block before its quants: 1 (d) or 2 (d, m)
  int quant_bytes = 0;  // quant bytes per block: 16 (Q4) or 32 (Q8_0)
  int block_bytes = 0;  // bytes of one block of one row
};
// The format of `type`: {0, 0, 0} for types without a kRows8 form.
static constexpr Rows8Format Rows8FormatFor(DType type) {
  switch (type) {
    case DType::kQ4_0:
      return {1, 16, static_cast<int>(sizeof(BlockQ4_0))};
    case DType::kQ4_1:
      return {2, 16, static_cast<int>(sizeof(BlockQ4_1))};
    case DType::kQ8_0:
      return {1, 32, static_cast<int>(sizeof(BlockQ8_0))};
    default:
      return {};
  }
}

// Activations quantized for the integer dot products. Two formats, by weight type:
//  - kAct32 (Q4_0, Q4_1, Q8_0 weights): per block of 32, q = round_even(x * 127 / amax),
//    d = amax / 127 and s = d * sum(q) (the latter for the weight minimums).
//  - kAct256 (Q4_K, Q6_K weights): per block of 256, the same q and d, plus the sums of q over
//    each 16 elements (bsums) for the minimums / offsets of the K types.
// Each is held as separate arrays, one row per token, in scratch memory (QuantizedActs).
enum class ActFormat { kNone, kAct32, kAct256 };

struct QuantizedActs {
  ActFormat format = ActFormat::kNone;
  int64_t n = 0;             // tokens
  int64_t cols = 0;          // elements per token
  int64_t blocks = 0;        // blocks per token (cols / 32 or cols / 256)
  int8_t* qs = nullptr;      // [n, cols]
  float* d = nullptr;        // [n, blocks]
  float* s = nullptr;        // [n, blocks] (kAct32)
  int16_t* bsums = nullptr;  // [n, blocks * 16] (kAct256)
};

// Token t's rows of the arrays (static, like Q4KScaleMin above).
static inline const int8_t* ActQs(const QuantizedActs& a, int64_t t) { return a.qs + t * a.cols; }
static inline const float* ActD(const QuantizedActs& a, int64_t t) { return a.d + t * a.blocks; }
static inline const float* ActS(const QuantizedActs& a, int64_t t) { return a.s + t * a.blocks; }
static inline const int16_t* ActBsums(const QuantizedActs& a, int64_t t) {
  return a.bsums + t * a.blocks * 16;
}

ActFormat ActFormatFor(int dtype);

// Bytes of scratch that CarveActs needs for n tokens of `cols` elements.
size_t ActBytes(ActFormat format, int64_t n, int64_t cols);
// Lays the arrays out in `mem` (ActBytes bytes, any alignment).
QuantizedActs CarveActs(ActFormat format, int64_t n, int64_t cols, uint8_t* mem);

// The quantizers of token row t (x: cols floats) are QuantizeActRow of each level (internal.h);
// scalar::QuantizeActRow is the reference, and every level writes the same bytes.

}  // namespace kvasir::kernels::cpu
