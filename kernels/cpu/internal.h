// Private interface between the dispatching kernels (*.cc, compiled for the baseline ISA) and the
// implementations of each instruction-set level: scalar (in the dispatching files), avx2
// (*_avx2.cc, compiled with -mavx2 -mfma -mf16c) and avx512 (*_avx512.cc, compiled with the
// AVX-512 flags; the kernel tests also link a copy built against SIMDe, avx512_emulated). The
// dispatching code reaches a level only through its IsaKernels table, read once per call with
// Kernels(); isa.cc picks the table. Not for use outside kernels/cpu and its tests.
#pragma once

#include <atomic>
#include <cstdint>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/quant_blocks.h"
#include "kernels/types.h"

namespace kvasir::kernels::cpu {

// Row r of a weight matrix. `static`, so that the ISA-specific files may call it (each
// translation unit gets its own copy; see quant_blocks.h).
static inline const uint8_t* WeightRow(const WeightView& w, int64_t r) {
  return static_cast<const uint8_t*>(w.data) + r * w.row_bytes;
}

// MatMul tiles: at most kRowTile weight rows by kTokenTile tokens.
inline constexpr int64_t kRowTile = 16;
inline constexpr int64_t kTokenTile = 64;

// Bytes of the per-thread workspace a QuantTileFn may use for a tile of rows of `cols` elements
// (unpacked weights and their f32 scales), 64-byte aligned by the caller.
inline int64_t QuantTileWorkBytes(int64_t cols) {
  return kRowTile * cols + 2 * kRowTile * (cols / 32 + 8) * 4 + 64;
}
// Bytes of a tile's rows of a kRows8 matrix put back in row order (at most 34 bytes per 32
// elements, Q8_0), for the levels without kRows8 kernels.
inline int64_t Rows8TileBytes(int64_t cols) { return kRowTile * (cols / 32) * 34 + 64; }

// Writes rows [r0, r1) (multiples of 8) of the kRows8 matrix w in row order to out
// ((r1 - r0) * w.row_bytes bytes): row r0 + i at out + i * w.row_bytes.
void DeinterleaveRows8(const WeightView& w, int64_t r0, int64_t r1, uint8_t* out);

// The functions every level implements, each level in its own namespace (scalar, avx2, avx512,
// avx512_emulated), declared there by KVASIR_CPU_ISA_FUNCTIONS():
//
// QuantTile: integer dot products of quantized weight rows with quantized activations, for a tile
//   of output rows [r0, r1) (r1 - r0 <= kRowTile) and tokens [t0, t1): y[t * y_stride + r].
//   `work` is the calling thread's workspace of QuantTileWorkBytes(w.cols) bytes.
// FloatTile: f32/f16/bf16 weights against f32 activations x[t * x_stride + c].
// QuantizeActRow: token row t of the activations (x: acts.cols floats) in the 8-bit format of
//   quant_blocks.h; every level writes the same bytes.
// ConvertF32ToF16, ConvertF16ToF32: return how many leading elements they converted (the caller
//   converts the rest with common/base/half.h).
// RmsNorm, SiluMul, Softmax, Add: as in ops.h, whole rows.
// RopeToken: rotates one token; cos_sin holds, for each of the n_rot / 2 pairs j,
//   cos(theta_j) at [j] and sin(theta_j) at [n_rot / 2 + j].
// QkSlots: attention page kernel, scores[g * score_stride + j] = scale * q_g . k_j for the
//   `count` slots at k (contiguous, head_dim elements each, f32 or f16).
// PvSlots: acc[g * head_dim + d] += sum_j p[g * p_stride + j] * v_j[d] over the `count` slots.
// MaxOf: max(x[0..n)), n >= 1.
// ExpSubSum: x[i] = exp(x[i] - max) for i < n; returns the sum.
#define KVASIR_CPU_ISA_FUNCTIONS()                                                              \
  void QuantTile(const WeightView& w, const QuantizedActs& acts, int64_t r0, int64_t r1,        \
                 int64_t t0, int64_t t1, float* y, int64_t y_stride, uint8_t* work);            \
  void FloatTile(const WeightView& w, const float* x, int64_t x_stride, int64_t r0, int64_t r1, \
                 int64_t t0, int64_t t1, float* y, int64_t y_stride);                           \
  void QuantizeActRow(const float* x, QuantizedActs& acts, int64_t t);                          \
  int64_t ConvertF32ToF16(const float* x, int64_t n, uint16_t* out);                            \
  int64_t ConvertF16ToF32(const uint16_t* x, int64_t n, float* out);                            \
  void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps,          \
               float* out);                                                                     \
  void SiluMul(const float* gate, const float* up, int64_t n, float* out);                      \
  void Softmax(float* x, int64_t n);                                                            \
  void Add(float* y, const float* x, int64_t n);                                                \
  void RopeToken(float* x, int n_heads, int head_dim, int n_rot, const float* cos_sin,          \
                 RopeLayout layout);                                                            \
  void QkSlots(const float* q, int64_t q_head_stride, int group, const void* k, DType k_type,   \
               int count, int head_dim, float scale, float* scores, int64_t score_stride);      \
  void PvSlots(const float* p, int64_t p_stride, int group, const void* v, DType v_type,        \
               int count, int head_dim, float* acc);                                            \
  float MaxOf(const float* x, int64_t n);                                                       \
  float ExpSubSum(float* x, int64_t n, float max);

namespace scalar {
KVASIR_CPU_ISA_FUNCTIONS()
}  // namespace scalar
namespace avx2 {
KVASIR_CPU_ISA_FUNCTIONS()
}  // namespace avx2
namespace avx512 {
KVASIR_CPU_ISA_FUNCTIONS()
}  // namespace avx512
// Defined only in the kernel tests (the *_avx512.cc files compiled against SIMDe).
namespace avx512_emulated {
KVASIR_CPU_ISA_FUNCTIONS()
}  // namespace avx512_emulated

// QuantTile of a kRows8 matrix (r0, r1 multiples of 8), any number of tokens, for Q4_0, Q4_1 and
// Q8_0: the avx2 level's (matmul_rows8_avx2.cc) and the AVX-512 VNNI one of the avx512 and
// avx512_emulated levels (matmul_rows8_avx512.cc), set in their tables by WithRows8 below. The
// scalar level reaches kRows8 matrices through DeinterleaveRows8 and its QuantTile.
#define KVASIR_CPU_ROWS8_FUNCTION()                                                           \
  void QuantTileRows8(const WeightView& w, const QuantizedActs& acts, int64_t r0, int64_t r1, \
                      int64_t t0, int64_t t1, float* y, int64_t y_stride);
namespace avx2 {
KVASIR_CPU_ROWS8_FUNCTION()
}  // namespace avx2
namespace avx512 {
KVASIR_CPU_ROWS8_FUNCTION()
}  // namespace avx512
namespace avx512_emulated {
KVASIR_CPU_ROWS8_FUNCTION()
}  // namespace avx512_emulated

using QuantTileFn = decltype(&scalar::QuantTile);
using FloatTileFn = decltype(&scalar::FloatTile);
using QuantTileRows8Fn = decltype(&avx2::QuantTileRows8);

// One level's functions. The dispatching kernels call nothing else of a level.
struct IsaKernels {
  Isa isa;
  const char* name;  // ActiveIsa(): "scalar", "avx2", "avx512" or "avx512_emulated"
  QuantTileFn quant_tile;
  FloatTileFn float_tile;
  decltype(&scalar::QuantizeActRow) quantize_act_row;
  decltype(&scalar::ConvertF32ToF16) convert_f32_to_f16;
  decltype(&scalar::ConvertF16ToF32) convert_f16_to_f32;
  decltype(&scalar::RmsNorm) rms_norm;
  decltype(&scalar::SiluMul) silu_mul;
  decltype(&scalar::Softmax) softmax;
  decltype(&scalar::Add) add;
  decltype(&scalar::RopeToken) rope_token;
  decltype(&scalar::QkSlots) qk_slots;
  decltype(&scalar::PvSlots) pv_slots;
  decltype(&scalar::MaxOf) max_of;
  decltype(&scalar::ExpSubSum) exp_sub_sum;
  // kRows8 kernels (null where the level has none) and the DTypes they take, bit (1 << type).
  QuantTileRows8Fn quant_tile_rows8 = nullptr;
  uint32_t rows8_types = 0;
};

// The table of namespace `ns` (one of the four above), every entry filled.
#define KVASIR_CPU_ISA_KERNELS(ns, level, label)                                                 \
  ::kvasir::kernels::cpu::IsaKernels {                                                           \
    .isa = (level), .name = (label), .quant_tile = &ns::QuantTile, .float_tile = &ns::FloatTile, \
    .quantize_act_row = &ns::QuantizeActRow, .convert_f32_to_f16 = &ns::ConvertF32ToF16,         \
    .convert_f16_to_f32 = &ns::ConvertF16ToF32, .rms_norm = &ns::RmsNorm,                        \
    .silu_mul = &ns::SiluMul, .softmax = &ns::Softmax, .add = &ns::Add,                          \
    .rope_token = &ns::RopeToken, .qk_slots = &ns::QkSlots, .pv_slots = &ns::PvSlots,            \
    .max_of = &ns::MaxOf, .exp_sub_sum = &ns::ExpSubSum                                          \
  }

// `k` with kRows8 kernels `fn` for Q4_0, Q4_1 and Q8_0.
constexpr IsaKernels WithRows8(IsaKernels k, QuantTileRows8Fn fn) {
  k.quant_tile_rows8 = fn;
  k.rows8_types = 1u << static_cast<int>(DType::kQ4_0) | 1u << static_cast<int>(DType::kQ4_1) |
                  1u << static_cast<int>(DType::kQ8_0);
  return k;
}

namespace internal {
// The active level's table, set at start-up and by SetIsa (isa.cc).
extern std::atomic<const IsaKernels*> g_kernels;

// Test hook of the kernel tests: registers their SIMDe build of the AVX-512 kernels (the table
// of avx512_emulated) as the level "avx512_emulated", which SupportedIsas() then lists and
// SetIsa() selects, so that every ISA-parameterized kernel test also runs it against the scalar
// references. Registers (and returns true) only on a CPU with AVX2, FMA and F16C (the flags of
// that build) but without the native AVX-512 level, which the tests cover directly there. Call it
// from a static initializer: the tests read SupportedIsas() when gtest starts.
bool RegisterEmulatedAvx512(const IsaKernels* kernels);
}  // namespace internal

// The active level's table; one relaxed atomic load. Kernels that call a level more than once
// per call read it once.
inline const IsaKernels& Kernels() { return *internal::g_kernels.load(std::memory_order_relaxed); }

}  // namespace kvasir::kernels::cpu
