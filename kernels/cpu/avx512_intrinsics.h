// The intrinsics and the namespace of the AVX-512 kernels (the *_avx512.cc files); included only
// by those files. They compile twice from the same source:
//  - natively, with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c,
//    into namespace avx512 of the kernels library;
//  - with KVASIR_KERNELS_SIMDE=1 and only -mavx2 -mfma -mf16c, against SIMDe (Debian's
//    libsimde-dev, header-only), which implements the _mm512_* intrinsics with AVX2 code, into
//    namespace avx512_emulated, linked only into the kernel tests (kernels/CMakeLists.txt). There
//    the tests run it against the scalar references on CPUs without AVX-512.
// SIMDe 0.7.4 lacks a few of the intrinsics the kernels use; for that build only they are defined
// below, in an anonymous namespace, from AVX2 / F16C halves with the same results (the masked ones
// read and write only the selected lanes, as the hardware does). Like everything else these files
// use, they are file-local: see the comment at the top of matmul_avx2.cc.
#pragma once

#if KVASIR_KERNELS_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define KVASIR_AVX512_NS avx512_emulated
#else
// GCC 12's _mm512_undefined_ps() and friends are self-initialized variables (GCC PR 105593): every
// intrinsic that uses one (_mm512_cvtepi32_ps, _mm512_extractf64x4_pd, ...) warns
// -W(maybe-)uninitialized where it is inlined, at a location in these headers. GCC 13 silences it
// in the headers themselves.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
#define KVASIR_AVX512_NS avx512
#endif

#if KVASIR_KERNELS_SIMDE
#include <cstdint>
#include <cstring>

namespace kvasir::kernels::cpu::avx512_emulated {
namespace {

inline __m256 SimdeLo(__m512 v) { return _mm512_castps512_ps256(v); }
inline __m256 SimdeHi(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}
inline __m256i SimdeLo(__m512i v) { return _mm512_castsi512_si256(v); }
inline __m256i SimdeHi(__m512i v) { return _mm512_extracti64x4_epi64(v, 1); }
inline __m512 SimdeJoin(__m256 lo, __m256 hi) {
  return _mm512_castpd_ps(
      _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}
inline __m512i SimdeJoin(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

#ifndef _mm512_cvtepi32_ps
inline __m512 _mm512_cvtepi32_ps(__m512i a) {
  return SimdeJoin(_mm256_cvtepi32_ps(SimdeLo(a)), _mm256_cvtepi32_ps(SimdeHi(a)));
}
#endif

// Rounds by MXCSR (to nearest even by default), as vcvtps2dq does.
#ifndef _mm512_cvtps_epi32
inline __m512i _mm512_cvtps_epi32(__m512 a) {
  return SimdeJoin(_mm256_cvtps_epi32(SimdeLo(a)), _mm256_cvtps_epi32(SimdeHi(a)));
}
#endif

#ifndef _mm512_cvtph_ps
inline __m512 _mm512_cvtph_ps(__m256i a) {
  return SimdeJoin(_mm256_cvtph_ps(_mm256_castsi256_si128(a)),
                   _mm256_cvtph_ps(_mm256_extracti128_si256(a, 1)));
}
#endif

#ifndef _mm512_cvtepu16_epi32
inline __m512i _mm512_cvtepu16_epi32(__m256i a) {
  return SimdeJoin(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(a)),
                   _mm256_cvtepu16_epi32(_mm256_extracti128_si256(a, 1)));
}
#endif

#ifndef _mm512_maskz_loadu_ps
inline __m512 _mm512_maskz_loadu_ps(__mmask16 k, const void* p) {
  alignas(64) float v[16] = {};
  for (int i = 0; i < 16; ++i) {
    if ((k >> i) & 1) std::memcpy(&v[i], static_cast<const float*>(p) + i, sizeof(float));
  }
  return _mm512_load_ps(v);
}
#endif

#ifndef _mm512_mask_storeu_ps
inline void _mm512_mask_storeu_ps(void* p, __mmask16 k, __m512 a) {
  alignas(64) float v[16];
  _mm512_store_ps(v, a);
  for (int i = 0; i < 16; ++i) {
    if ((k >> i) & 1) std::memcpy(static_cast<float*>(p) + i, &v[i], sizeof(float));
  }
}
#endif

#ifndef _mm256_maskz_loadu_epi16
inline __m256i _mm256_maskz_loadu_epi16(__mmask16 k, const void* p) {
  alignas(32) uint16_t v[16] = {};
  for (int i = 0; i < 16; ++i) {
    if ((k >> i) & 1) std::memcpy(&v[i], static_cast<const uint16_t*>(p) + i, sizeof(uint16_t));
  }
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(v));
}
#endif

}  // namespace
}  // namespace kvasir::kernels::cpu::avx512_emulated
#endif  // KVASIR_KERNELS_SIMDE
