// Small helpers of the AVX-512 kernels (horizontal sums and maxima, lane masks, a 256-bit load),
// shared by the *_avx512.cc files. Everything is in an anonymous namespace, so each including
// translation unit gets its own copy compiled with its own flags (see the top of
// matmul_avx2.cc).
#pragma once

#include <cstdint>

#include "kernels/cpu/avx512_intrinsics.h"

namespace kvasir::kernels::cpu::KVASIR_AVX512_NS {
namespace {

inline float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The two 256-bit halves of v added.
inline __m256 Fold(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v),
                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

inline float Hsum(__m512 v) { return Hsum(Fold(v)); }

inline int HsumI32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

inline int HsumI32(__m512i v) {
  return HsumI32(_mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)));
}

inline float Hmax(__m512 v) {
  const __m256 h = _mm256_max_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Mask of the first `count` (0..16) lanes.
inline __mmask16 FirstLanes(int64_t count) { return static_cast<__mmask16>((1u << count) - 1u); }

inline __m256i Load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

}  // namespace
}  // namespace kvasir::kernels::cpu::KVASIR_AVX512_NS
