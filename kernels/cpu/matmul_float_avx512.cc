// AVX-512 kernels of MatMul for float weights (f32, f16, bf16 against f32 activations), the
// activation quantizer and the f16 conversions, split from matmul_avx512.cc (the quantized tiles).
// Built natively (namespace avx512) and against SIMDe (avx512_emulated, kernel tests only); see
// avx512_intrinsics.h. Only intrinsics and file-local helpers (avx512_helpers.h, the `static`
// ones of quant_blocks.h and internal.h) are used (see matmul_avx2.cc).
#include <cstdint>

#include "kernels/cpu/avx512_helpers.h"
#include "kernels/cpu/avx512_intrinsics.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/quant_blocks.h"

namespace kvasir::kernels::cpu::KVASIR_AVX512_NS {
namespace {

// ---- Float weights -----------------------------------------------------------------------------

template <DType T>
inline __m512 Load16(const uint8_t* row, int64_t c) {
  if constexpr (T == DType::kF32) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + c);
  } else if constexpr (T == DType::kF16) {
    return _mm512_cvtph_ps(Load256(row + 2 * c));
  } else {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(Load256(row + 2 * c)), 16));
  }
}

// The lanes of `mask` from column c on, zeros elsewhere (nothing outside them is read).
template <DType T>
inline __m512 Load16Masked(const uint8_t* row, int64_t c, __mmask16 mask) {
  if constexpr (T == DType::kF32) {
    return _mm512_maskz_loadu_ps(mask, reinterpret_cast<const float*>(row) + c);
  } else if constexpr (T == DType::kF16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, row + 2 * c));
  } else {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, row + 2 * c)), 16));
  }
}

// MR rows x NR tokens, 16 columns per step; the last cols % 16 by masked loads.
template <DType T, int MR, int NR>
void MicroFloat(const WeightView& w, const float* x, int64_t x_stride, int64_t r0, int64_t t0,
                float* y, int64_t y_stride) {
  const uint8_t* rows[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) rows[r] = WeightRow(w, r0 + r);
  const float* xt[NR];
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) xt[t] = x + (t0 + t) * x_stride;
  __m512 acc[MR][NR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < NR; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  const int64_t cols = w.cols, vec_end = cols & ~int64_t{15};
  for (int64_t c = 0; c < vec_end; c += 16) {
    __m512 wv[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) wv[r] = Load16<T>(rows[r], c);
#pragma GCC unroll 4
    for (int t = 0; t < NR; ++t) {
      const __m512 xv = _mm512_loadu_ps(xt[t] + c);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  if (vec_end < cols) {
    const __mmask16 tail = FirstLanes(cols - vec_end);
    __m512 wv[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) wv[r] = Load16Masked<T>(rows[r], vec_end, tail);
#pragma GCC unroll 4
    for (int t = 0; t < NR; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(tail, xt[t] + vec_end);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) y[(t0 + t) * y_stride + r0 + r] = Hsum(acc[r][t]);
  }
}

template <DType T>
void WalkFloat(const WeightView& w, const float* x, int64_t x_stride, int64_t r0, int64_t r1,
               int64_t t0, int64_t t1, float* y, int64_t y_stride) {
  int64_t t = t0;
  for (; t + 2 <= t1; t += 2) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) MicroFloat<T, 4, 2>(w, x, x_stride, r, t, y, y_stride);
    for (; r < r1; ++r) MicroFloat<T, 1, 2>(w, x, x_stride, r, t, y, y_stride);
  }
  for (; t < t1; ++t) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) MicroFloat<T, 4, 1>(w, x, x_stride, r, t, y, y_stride);
    for (; r < r1; ++r) MicroFloat<T, 1, 1>(w, x, x_stride, r, t, y, y_stride);
  }
}

}  // namespace

void FloatTile(const WeightView& w, const float* x, int64_t x_stride, int64_t r0, int64_t r1,
               int64_t t0, int64_t t1, float* y, int64_t y_stride) {
  switch (w.type) {
    case DType::kF32:
      return WalkFloat<DType::kF32>(w, x, x_stride, r0, r1, t0, t1, y, y_stride);
    case DType::kF16:
      return WalkFloat<DType::kF16>(w, x, x_stride, r0, r1, t0, t1, y, y_stride);
    case DType::kBF16:
      return WalkFloat<DType::kBF16>(w, x, x_stride, r0, r1, t0, t1, y, y_stride);
    default:
      return;
  }
}

// Same arithmetic as scalar::QuantizeActRow, so both give identical bytes: amax by max of |x|,
// q = x * (127 / amax) rounded half to even (the default MXCSR mode of vcvtps2dq), 16 values per
// register narrowed to bytes with vpmovsdb (|q| <= 127, so the saturation never applies).
void QuantizeActRow(const float* x, QuantizedActs& acts, int64_t t) {
  const bool k256 = acts.format == ActFormat::kAct256;
  const int bs = k256 ? kQKK : kQK;
  int8_t* qs = acts.qs + t * acts.cols;
  for (int64_t b = 0; b < acts.blocks; ++b) {
    const float* xb = x + b * bs;
    __m512 vmax = _mm512_setzero_ps();
    for (int j = 0; j < bs; j += 16)
      vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(xb + j)));
    const float amax = Hmax(vmax);
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const __m512 vid = _mm512_set1_ps(id);
    int8_t* q = qs + b * bs;
    __m512i total = _mm512_setzero_si512();
    int16_t* bsums = k256 ? acts.bsums + (t * acts.blocks + b) * 16 : nullptr;
    for (int j = 0; j < bs; j += 16) {
      const __m512i i16 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + j), vid));
      if (k256) {
        bsums[j / 16] = static_cast<int16_t>(HsumI32(i16));
      } else {
        total = _mm512_add_epi32(total, i16);
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + j), _mm512_cvtsepi32_epi8(i16));
    }
    acts.d[t * acts.blocks + b] = d;
    if (!k256) acts.s[t * acts.blocks + b] = d * static_cast<float>(HsumI32(total));
  }
}

// 8 values per step with F16C: a 512-bit vcvtps2ph would do 16, but the step is a store-bound
// copy either way (this writes K/V into f16 pools).
int64_t ConvertF32ToF16(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  }
  return i;
}

int64_t ConvertF16ToF32(const uint16_t* x, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_cvtph_ps(Load256(x + i)));
  if (i + 8 <= n) {
    _mm256_storeu_ps(out + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
    i += 8;
  }
  return i;
}

}  // namespace kvasir::kernels::cpu::KVASIR_AVX512_NS
