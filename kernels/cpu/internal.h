// Private interface between the dispatching kernels (*.cc, compiled for the baseline ISA) and the
// AVX2 implementations (*_avx2.cc, compiled with -mavx2 -mfma -mf16c). Callers check UseAvx2()
// before calling anything in namespace avx2. Not for use outside kernels/cpu and its tests.
#pragma once

#include <cstdint>

#include "kernels/cpu/quant_blocks.h"
#include "kernels/types.h"

namespace kvasir::kernels::cpu {

// MatMul tiles: at most kRowTile weight rows by kTokenTile tokens.
inline constexpr int64_t kRowTile = 16;
inline constexpr int64_t kTokenTile = 64;

// Bytes of the per-thread workspace a QuantTileFn may use for a tile of rows of `cols` elements
// (unpacked weights and their f32 scales), 64-byte aligned by the caller.
inline int64_t QuantTileWorkBytes(int64_t cols) {
  return kRowTile * cols + 2 * kRowTile * (cols / 32 + 8) * 4 + 64;
}

// Integer dot products of quantized weight rows with quantized activations, for a tile of output
// rows [r0, r1) (r1 - r0 <= kRowTile) and tokens [t0, t1): y[t * y_stride + r]. `work` is the
// calling thread's workspace of QuantTileWorkBytes(w.cols) bytes.
using QuantTileFn = void (*)(const WeightView& w, const QuantizedActs& acts, int64_t r0, int64_t r1,
                             int64_t t0, int64_t t1, float* y, int64_t y_stride, uint8_t* work);
// f32/f16/bf16 weights against f32 activations x[t * x_stride + c].
using FloatTileFn = void (*)(const WeightView& w, const float* x, int64_t x_stride, int64_t r0,
                             int64_t r1, int64_t t0, int64_t t1, float* y, int64_t y_stride);

namespace scalar {
void QuantTile(const WeightView& w, const QuantizedActs& acts, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t y_stride, uint8_t* work);
void FloatTile(const WeightView& w, const float* x, int64_t x_stride, int64_t r0, int64_t r1,
               int64_t t0, int64_t t1, float* y, int64_t y_stride);
}  // namespace scalar

namespace avx2 {
void QuantTile(const WeightView& w, const QuantizedActs& acts, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t y_stride, uint8_t* work);
void FloatTile(const WeightView& w, const float* x, int64_t x_stride, int64_t r0, int64_t r1,
               int64_t t0, int64_t t1, float* y, int64_t y_stride);
void QuantizeActRow(const float* x, QuantizedActs& acts, int64_t t);

// Element-wise helpers; each returns how many leading elements it handled (the caller finishes
// the tail with scalar code), or handles everything where it returns void.
int64_t ConvertF32ToF16(const float* x, int64_t n, uint16_t* out);
int64_t ConvertF16ToF32(const uint16_t* x, int64_t n, float* out);
void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out);
void SiluMul(const float* gate, const float* up, int64_t n, float* out);
void Softmax(float* x, int64_t n);
void Add(float* y, const float* x, int64_t n);
// Rotates one token: cos_sin holds, for each of the n_rot / 2 pairs j, cos(theta_j) at [j] and
// sin(theta_j) at [n_rot / 2 + j].
void RopeToken(float* x, int n_heads, int head_dim, int n_rot, const float* cos_sin,
               RopeLayout layout);

// Attention page kernels. scores[g * score_stride + j] = scale * q_g . k_j for the `count` slots
// at k (contiguous, head_dim elements each, f32 or f16).
void QkSlots(const float* q, int64_t q_head_stride, int group, const void* k, DType k_type,
             int count, int head_dim, float scale, float* scores, int64_t score_stride);
// acc[g * head_dim + d] += sum_j p[g * p_stride + j] * v_j[d] over the `count` slots at v.
void PvSlots(const float* p, int64_t p_stride, int group, const void* v, DType v_type, int count,
             int head_dim, float* acc);
// max(x[0..n)), n >= 1.
float MaxOf(const float* x, int64_t n);
// x[i] = exp(x[i] - max) for i < n; returns the sum.
float ExpSubSum(float* x, int64_t n, float max);
}  // namespace avx2

}  // namespace kvasir::kernels::cpu
