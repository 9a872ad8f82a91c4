// AVX2 + FMA + F16C tile kernels of MatMul and the activation quantizer (this file is compiled
// with -mavx2 -mfma -mf16c and runs only through the avx2 IsaKernels table, which isa.cc selects
// only on CPUs with those extensions). Quantized weights: u8 x s8 products with
// _mm256_maddubs_epi16, widened with _mm256_madd_epi16, scaled per block in f32. Each micro kernel
// computes MR weight rows x NR tokens, so an unpacked weight block serves NR tokens.
//
// Only intrinsics, functions local to this file and the `static` helpers of quant_blocks.h and
// internal.h are used here: an inline function of a shared header with external linkage, compiled
// here with AVX2, could be the copy the linker keeps for the baseline code too.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/internal.h"
#include "kernels/cpu/quant_blocks.h"

namespace kvasir::kernels::cpu::avx2 {
namespace {

constexpr int kChunk = 64;  // weight blocks whose scales are converted to f32 at once

inline int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

inline float HalfToFloat(uint16_t h) { return _cvtsh_ss(h); }

inline float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int HsumI32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// 32 nibbles of a Q4 block as bytes in element order: low nibbles first, then high nibbles.
inline __m256i UnpackNibbles(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

inline __m256i LoadI8(const int8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// Mask of the first `count` (0..8) float lanes.
inline __m256i TailMask(int count) {
  alignas(32) static const int32_t kMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                0,  0,  0,  0,  0,  0,  0,  0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask + 8 - count));
}

// ---- Q4_0 / Q4_1 ---------------------------------------------------------------------------
// Both are w = q * d + m with q in 0..15 (Q4_0: m = -8 d), so
//   sum_i w_i x_i = sum_blocks d dx sum_i q_i qx_i + m s,   s = dx sum_i qx_i.
// The m s terms are summed 8 blocks at a time from f32 arrays of m and s.

// Converts the f16 scales (and minimums) of nb blocks to f32: d[b], m[b].
template <bool kQ41>
void ConvertScalesQ4(const uint8_t* row, int64_t nb, float* d, float* m) {
  using Block = std::conditional_t<kQ41, BlockQ4_1, BlockQ4_0>;
  const auto* blocks = reinterpret_cast<const Block*>(row);
  int64_t b = 0;
  if constexpr (kQ41) {
    // (d, m) of a block are one 32-bit word: 4 blocks give 8 halves -> [d0 m0 .. d3 m3].
    const __m256i deinterleave = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (; b + 4 <= nb; b += 4) {
      uint32_t w[4];
      for (int k = 0; k < 4; ++k) std::memcpy(&w[k], &blocks[b + k], 4);
      const __m128i halves = _mm_setr_epi32(static_cast<int>(w[0]), static_cast<int>(w[1]),
                                            static_cast<int>(w[2]), static_cast<int>(w[3]));
      const __m256 dm = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(halves), deinterleave);
      _mm_storeu_ps(d + b, _mm256_castps256_ps128(dm));
      _mm_storeu_ps(m + b, _mm256_extractf128_ps(dm, 1));
    }
    for (; b < nb; ++b) {
      d[b] = HalfToFloat(blocks[b].d);
      m[b] = HalfToFloat(blocks[b].m);
    }
  } else {
    const __m256 minus8 = _mm256_set1_ps(-8.0f);
    for (; b + 8 <= nb; b += 8) {
      const __m128i halves = _mm_setr_epi16(
          static_cast<int16_t>(blocks[b].d), static_cast<int16_t>(blocks[b + 1].d),
          static_cast<int16_t>(blocks[b + 2].d), static_cast<int16_t>(blocks[b + 3].d),
          static_cast<int16_t>(blocks[b + 4].d), static_cast<int16_t>(blocks[b + 5].d),
          static_cast<int16_t>(blocks[b + 6].d), static_cast<int16_t>(blocks[b + 7].d));
      const __m256 dv = _mm256_cvtph_ps(halves);
      _mm256_storeu_ps(d + b, dv);
      _mm256_storeu_ps(m + b, _mm256_mul_ps(dv, minus8));
    }
    for (; b < nb; ++b) {
      d[b] = HalfToFloat(blocks[b].d);
      m[b] = -8.0f * d[b];
    }
  }
}

// sum_{k < cn} m[k] s[k] as 8 partial sums (masked at the end).
inline __m256 MinTerms(const float* m, const float* s, int cn) {
  __m256 acc = _mm256_setzero_ps();
  int k = 0;
  for (; k + 8 <= cn; k += 8) {
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(m + k), _mm256_loadu_ps(s + k), acc);
  }
  if (k < cn) {
    const __m256i mask = TailMask(cn - k);
    acc = _mm256_fmadd_ps(_mm256_maskload_ps(m + k, mask), _mm256_maskload_ps(s + k, mask), acc);
  }
  return acc;
}

// Narrow shapes (1-3 tokens, decode): straight from the packed blocks, MR rows at a time, with
// the scales of up to kChunk blocks converted first. All row pointers are locals so that the
// accumulators stay in registers.
template <bool kQ41, int MR, int NR>
void MicroQ4(const uint8_t* const* wrow, const QuantizedActs& a, int64_t t0, float* y,
             int64_t y_stride, int64_t r0) {
  using Block = std::conditional_t<kQ41, BlockQ4_1, BlockQ4_0>;
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t nb = a.blocks;
  __m256 acc[MR][NR];
  const Block* blocks[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) blocks[r] = reinterpret_cast<const Block*>(wrow[r]);
  const int8_t* xq[NR];
  const float* xd[NR];
  const float* xs[NR];
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) {
    xq[t] = ActQs(a, t0 + t);
    xd[t] = ActD(a, t0 + t);
    xs[t] = ActS(a, t0 + t);
  }
  alignas(32) float dw[MR][kChunk];
  alignas(32) float mw[MR][kChunk];
  const int64_t ahead = MR * nb * static_cast<int64_t>(sizeof(Block));
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  for (int64_t c0 = 0; c0 < nb; c0 += kChunk) {
    const int cn = static_cast<int>(Min64(kChunk, nb - c0));
    // The next MR rows follow these in memory: fetch their chunk while this one is computed.
    for (int r = 0; r < MR; ++r) {
      const char* next = reinterpret_cast<const char*>(blocks[r] + c0) + ahead;
      for (int64_t off = 0; off < cn * static_cast<int64_t>(sizeof(Block)); off += 64) {
        _mm_prefetch(next + off, _MM_HINT_T0);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      ConvertScalesQ4<kQ41>(reinterpret_cast<const uint8_t*>(blocks[r] + c0), cn, dw[r], mw[r]);
#pragma GCC unroll 8
      for (int t = 0; t < NR; ++t) {
        acc[r][t] = _mm256_add_ps(acc[r][t], MinTerms(mw[r], xs[t] + c0, cn));
      }
    }
    for (int k = 0; k < cn; ++k) {
      const int64_t b = c0 + k;
      __m256i wq[MR];
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) wq[r] = UnpackNibbles(blocks[r][b].qs);
#pragma GCC unroll 8
      for (int t = 0; t < NR; ++t) {
        const __m256i xv = LoadI8(xq[t] + b * kQK);
        const __m256 bdx = _mm256_broadcast_ss(xd[t] + b);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
          const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wq[r], xv), ones);
          const __m256 dd = _mm256_mul_ps(_mm256_broadcast_ss(&dw[r][k]), bdx);
          acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), dd, acc[r][t]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) y[(t0 + t) * y_stride + r0 + r] = Hsum(acc[r][t]);
  }
}

// One token (decode), two rows per register: the 16 bytes of a block of row A and of row B share a
// 256-bit register, so one shift and two masks unpack both rows, and the token's activations are
// used as [x0..15 | x0..15] (low nibbles) and [x16..31 | x16..31] (high nibbles). Lanes 0-3 of an
// accumulator belong to row A, lanes 4-7 to row B. Per row and block this is about 7 vector
// operations instead of 10, which matters because decode runs these at the memory's pace.
template <bool kQ41, int MR>
void MicroQ4Pairs(const uint8_t* const* wrow, const QuantizedActs& a, int64_t t0, float* y,
                  int64_t y_stride, int64_t r0) {
  static_assert(MR % 2 == 0);
  constexpr int kPairs = MR / 2;
  using Block = std::conditional_t<kQ41, BlockQ4_1, BlockQ4_0>;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const int64_t nb = a.blocks;
  const Block* blocks[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) blocks[r] = reinterpret_cast<const Block*>(wrow[r]);
  const int8_t* xq = ActQs(a, t0);
  const float* xd = ActD(a, t0);
  const float* xs = ActS(a, t0);
  alignas(32) float dd[MR][kChunk];  // weight scale times activation scale, per block
  alignas(32) float mw[MR][kChunk];
  const int64_t ahead = 2 * MR * nb * static_cast<int64_t>(sizeof(Block));
  __m256 acc[kPairs];
  float min_terms[MR];
#pragma GCC unroll 8
  for (int p = 0; p < kPairs; ++p) acc[p] = _mm256_setzero_ps();
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) min_terms[r] = 0.0f;
  for (int64_t c0 = 0; c0 < nb; c0 += kChunk) {
    const int cn = static_cast<int>(Min64(kChunk, nb - c0));
    // Rows further on follow these in memory: fetch them while this chunk is computed.
    for (int r = 0; r < MR; ++r) {
      const char* next = reinterpret_cast<const char*>(blocks[r] + c0) + ahead;
      for (int64_t off = 0; off < cn * static_cast<int64_t>(sizeof(Block)); off += 64) {
        _mm_prefetch(next + off, _MM_HINT_T0);
      }
    }
    for (int r = 0; r < MR; ++r) {
      ConvertScalesQ4<kQ41>(reinterpret_cast<const uint8_t*>(blocks[r] + c0), cn, dd[r], mw[r]);
      min_terms[r] += Hsum(MinTerms(mw[r], xs + c0, cn));
      int k = 0;
      for (; k + 8 <= cn; k += 8) {
        _mm256_store_ps(dd[r] + k,
                        _mm256_mul_ps(_mm256_load_ps(dd[r] + k), _mm256_loadu_ps(xd + c0 + k)));
      }
      for (; k < cn; ++k) dd[r][k] *= xd[c0 + k];
    }
    for (int k = 0; k < cn; ++k) {
      const int64_t b = c0 + k;
      const __m256i xv = LoadI8(xq + b * kQK);
      const __m256i x_lo = _mm256_permute2x128_si256(xv, xv, 0x00);
      const __m256i x_hi = _mm256_permute2x128_si256(xv, xv, 0x11);
#pragma GCC unroll 8
      for (int p = 0; p < kPairs; ++p) {
        const __m256i raw =
            _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(blocks[2 * p + 1][b].qs),
                                reinterpret_cast<const __m128i*>(blocks[2 * p][b].qs));
        const __m256i lo = _mm256_and_si256(raw, low4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
        const __m256i sum16 =
            _mm256_add_epi16(_mm256_maddubs_epi16(lo, x_lo), _mm256_maddubs_epi16(hi, x_hi));
        const __m256 scale =
            _mm256_set_m128(_mm_broadcast_ss(&dd[2 * p + 1][k]), _mm_broadcast_ss(&dd[2 * p][k]));
        acc[p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(sum16, ones)), scale, acc[p]);
      }
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < kPairs; ++p) {
    __m128 lo = _mm256_castps256_ps128(acc[p]);
    __m128 hi = _mm256_extractf128_ps(acc[p], 1);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    hi = _mm_add_ps(hi, _mm_movehl_ps(hi, hi));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    hi = _mm_add_ss(hi, _mm_movehdup_ps(hi));
    y[t0 * y_stride + r0 + 2 * p] = _mm_cvtss_f32(lo) + min_terms[2 * p];
    y[t0 * y_stride + r0 + 2 * p + 1] = _mm_cvtss_f32(hi) + min_terms[2 * p + 1];
  }
}

// A tile of Q4 rows unpacked once for many tokens: q[r * cols + i] in 0..15, d and m per block.
struct UnpackedQ4 {
  const uint8_t* q;
  const float* d;
  const float* m;
  int64_t cols;
  int64_t blocks;
  int64_t scale_stride;
};

template <bool kQ41>
UnpackedQ4 UnpackTileQ4(const WeightView& w, int64_t r0, int64_t r1, uint8_t* work) {
  using Block = std::conditional_t<kQ41, BlockQ4_1, BlockQ4_0>;
  const int64_t nb = w.cols / kQK;
  const int64_t stride = nb + 8;
  auto* q = work;
  auto* d = reinterpret_cast<float*>(work + kRowTile * w.cols);
  float* m = d + kRowTile * stride;
  for (int64_t r = r0; r < r1; ++r) {
    const auto* blocks = reinterpret_cast<const Block*>(WeightRow(w, r));
    uint8_t* qr = q + (r - r0) * w.cols;
    for (int64_t b = 0; b < nb; ++b) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(qr + b * kQK), UnpackNibbles(blocks[b].qs));
    }
    ConvertScalesQ4<kQ41>(WeightRow(w, r), nb, d + (r - r0) * stride, m + (r - r0) * stride);
  }
  return UnpackedQ4{q, d, m, w.cols, nb, stride};
}

// Wide shapes (4+ tokens): MR unpacked rows x NR tokens, 5 vector ops per row, token and block.
template <int MR, int NR>
void MicroUnpackedQ4(const UnpackedQ4& u, int64_t rr, const QuantizedActs& a, int64_t t0, float* y,
                     int64_t y_stride, int64_t r0) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t nb = u.blocks;
  const uint8_t* q[MR];
  const float* d[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    q[r] = u.q + (rr + r) * u.cols;
    d[r] = u.d + (rr + r) * u.scale_stride;
  }
  const int8_t* xq[NR];
  const float* xd[NR];
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) {
    xq[t] = ActQs(a, t0 + t);
    xd[t] = ActD(a, t0 + t);
  }
  __m256 acc[MR][NR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const float* m = u.m + (rr + r) * u.scale_stride;
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) acc[r][t] = MinTerms(m, ActS(a, t0 + t), static_cast<int>(nb));
  }
  for (int64_t b = 0; b < nb; ++b) {
    __m256i wq[MR];
    __m256 bdw[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      wq[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(q[r] + b * kQK));
      bdw[r] = _mm256_broadcast_ss(d[r] + b);
    }
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) {
      const __m256i xv = LoadI8(xq[t] + b * kQK);
      const __m256 bdx = _mm256_broadcast_ss(xd[t] + b);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wq[r], xv), ones);
        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(bdw[r], bdx), acc[r][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) y[(t0 + t) * y_stride + r0 + r] = Hsum(acc[r][t]);
  }
}

template <bool kQ41>
void TileQ4(const WeightView& w, const QuantizedActs& a, int64_t r0, int64_t r1, int64_t t0,
            int64_t t1, float* y, int64_t y_stride, uint8_t* work) {
  const uint8_t* rows[8];
  int64_t t = t0;
  if (t1 - t0 >= 4) {
    const UnpackedQ4 u = UnpackTileQ4<kQ41>(w, r0, r1, work);
    for (; t + 4 <= t1; t += 4) {
      int64_t r = r0;
      for (; r + 2 <= r1; r += 2) MicroUnpackedQ4<2, 4>(u, r - r0, a, t, y, y_stride, r);
      for (; r < r1; ++r) MicroUnpackedQ4<1, 4>(u, r - r0, a, t, y, y_stride, r);
    }
  }
  for (; t < t1;) {
    const int64_t nt = t1 - t;
    int64_t r = r0;
    for (; r + 8 <= r1; r += 8) {
      for (int i = 0; i < 8; ++i) rows[i] = WeightRow(w, r + i);
      if (nt >= 2) {
        MicroQ4<kQ41, 4, 2>(rows, a, t, y, y_stride, r);
        MicroQ4<kQ41, 4, 2>(rows + 4, a, t, y, y_stride, r + 4);
      } else {
        MicroQ4Pairs<kQ41, 8>(rows, a, t, y, y_stride, r);
      }
    }
    for (; r < r1; ++r) {
      rows[0] = WeightRow(w, r);
      if (nt >= 2) {
        MicroQ4<kQ41, 1, 2>(rows, a, t, y, y_stride, r);
      } else {
        MicroQ4<kQ41, 1, 1>(rows, a, t, y, y_stride, r);
      }
    }
    t += nt >= 2 ? 2 : 1;
  }
}

// ---- Q8_0 ------------------------------------------------------------------------------------
// Signed x signed: maddubs takes |w| as the unsigned operand and x with w's sign as the signed one.
template <int MR, int NR>
void MicroQ8_0(const uint8_t* const* wrow, const QuantizedActs& a, int64_t t0, float* y,
               int64_t y_stride, int64_t r0) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MR][NR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  const BlockQ8_0* blocks[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) blocks[r] = reinterpret_cast<const BlockQ8_0*>(wrow[r]);
  const int8_t* xq[NR];
  const float* xd[NR];
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) {
    xq[t] = ActQs(a, t0 + t);
    xd[t] = ActD(a, t0 + t);
  }
  const int64_t nb = a.blocks;
  // The next MR rows follow these in memory: fetch them while these are computed.
  const int64_t ahead = MR * nb * static_cast<int64_t>(sizeof(BlockQ8_0));
  for (int64_t b = 0; b < nb; ++b) {
    __m256i wv[MR], wabs[MR];
    __m256 bdw[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(blocks[r] + b) + ahead, _MM_HINT_T0);
      wv[r] = LoadI8(blocks[r][b].qs);
      wabs[r] = _mm256_sign_epi8(wv[r], wv[r]);
      bdw[r] = _mm256_set1_ps(HalfToFloat(blocks[r][b].d));
    }
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) {
      const __m256i xv = LoadI8(xq[t] + b * kQK);
      const __m256 bdx = _mm256_broadcast_ss(xd[t] + b);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m256i p =
            _mm256_madd_epi16(_mm256_maddubs_epi16(wabs[r], _mm256_sign_epi8(xv, wv[r])), ones);
        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(bdw[r], bdx), acc[r][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) y[(t0 + t) * y_stride + r0 + r] = Hsum(acc[r][t]);
  }
}

// ---- Q4_K --------------------------------------------------------------------------------------
// Per super-block: d dx sum_j sc_j (q . qx)_j - dmin dx sum_j m_j (sum qx)_j, the sub-block
// scales applied in the integer domain by _mm256_madd_epi16.
template <int MR, int NR>
void MicroQ4K(const uint8_t* const* wrow, const QuantizedActs& a, int64_t t0, float* y,
              int64_t y_stride, int64_t r0) {
  static_assert(MR == 1);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const auto* blocks = reinterpret_cast<const BlockQ4K*>(wrow[0]);
  const int8_t* xq[NR];
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) xq[t] = ActQs(a, t0 + t);
  __m256 acc[NR];
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.blocks; ++b) {
    const BlockQ4K& blk = blocks[b];
    const float d = HalfToFloat(blk.d), dmin = HalfToFloat(blk.dmin);
    // Scales and minimums of the 8 sub-blocks (ggml's get_scale_min_k4, all at once).
    int sc[8];
    alignas(32) int16_t m16[16];
    for (int j = 0; j < 8; ++j) {
      int m;
      Q4KScaleMin(j, blk.scales, &sc[j], &m);
      m16[2 * j] = m16[2 * j + 1] = static_cast<int16_t>(m);
    }
    const __m256i mins = _mm256_load_si256(reinterpret_cast<const __m256i*>(m16));
    __m256i isum[NR];
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) isum[t] = _mm256_setzero_si256();
    const int8_t* xb[NR];
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) xb[t] = xq[t] + b * kQKK;
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * c));
      const __m256i lo = _mm256_and_si256(raw, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
      const __m256i s_lo = _mm256_set1_epi16(static_cast<int16_t>(sc[2 * c]));
      const __m256i s_hi = _mm256_set1_epi16(static_cast<int16_t>(sc[2 * c + 1]));
#pragma GCC unroll 8
      for (int t = 0; t < NR; ++t) {
        const int8_t* x = xb[t] + 64 * c;
        const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, LoadI8(x)), s_lo);
        const __m256i p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, LoadI8(x + 32)), s_hi);
        isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(p_lo, p_hi));
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) {
      const float dx = ActD(a, t0 + t)[b];
      const __m256i bsums =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ActBsums(a, t0 + t) + b * 16));
      const __m256 msum = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mins));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(d * dx), acc[t]);
      acc[t] = _mm256_fnmadd_ps(msum, _mm256_set1_ps(dmin * dx), acc[t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) y[(t0 + t) * y_stride + r0] = Hsum(acc[t]);
}

// ---- Q6_K --------------------------------------------------------------------------------------
// q - 32 with q in 0..63: maddubs on q, then 32 sum_k sc_k (sum qx)_k subtracted once per block.
template <int MR, int NR>
void MicroQ6K(const uint8_t* const* wrow, const QuantizedActs& a, int64_t t0, float* y,
              int64_t y_stride, int64_t r0) {
  static_assert(MR == 1);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i low2 = _mm256_set1_epi8(0x03);
  const auto* blocks = reinterpret_cast<const BlockQ6K*>(wrow[0]);
  const int8_t* xq[NR];
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) xq[t] = ActQs(a, t0 + t);
  __m256 acc[NR];
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < a.blocks; ++b) {
    const BlockQ6K& blk = blocks[b];
    __m256i isum[NR];
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) isum[t] = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh + 32 * h));
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.ql + 64 * h));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.ql + 64 * h + 32));
      __m256i q[4];
      q[0] = _mm256_or_si256(_mm256_and_si256(l0, low4),
                             _mm256_slli_epi16(_mm256_and_si256(qh, low2), 4));
      q[1] =
          _mm256_or_si256(_mm256_and_si256(l1, low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), low2), 4));
      q[2] =
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), low2), 4));
      q[3] =
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), low2), 4));
      for (int k = 0; k < 4; ++k) {
        const int8_t* sc = blk.scales + 8 * h + 2 * k;
        const __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[1]), _mm_set1_epi16(sc[0]));
#pragma GCC unroll 8
        for (int t = 0; t < NR; ++t) {
          const int8_t* x = xq[t] + b * kQKK + 128 * h + 32 * k;
          isum[t] = _mm256_add_epi32(isum[t],
                                     _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], LoadI8(x)), scv));
        }
      }
    }
    const __m256i sc16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales)));
    const float d = HalfToFloat(blk.d);
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) {
      const __m256i bsums =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ActBsums(a, t0 + t) + b * 16));
      const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, sc16), 5);
      const float ddx = d * ActD(a, t0 + t)[b];
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum[t], offset)),
                               _mm256_set1_ps(ddx), acc[t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) y[(t0 + t) * y_stride + r0] = Hsum(acc[t]);
}

// ---- Tile walk ---------------------------------------------------------------------------------

using MicroFn = void (*)(const uint8_t* const* wrow, const QuantizedActs& a, int64_t t0, float* y,
                         int64_t y_stride, int64_t r0);

// Kernel shapes for one weight type: `wide` (MR_w x 4) for 4+ tokens, `narrow[nr]` (MR_n x nr)
// for 1..3 tokens, and the single-row versions for leftover rows.
struct MicroSet {
  int wide_mr;
  MicroFn wide;
  MicroFn wide_row1;
  int narrow_mr;
  MicroFn narrow[4];
  MicroFn narrow_row1[4];
};

template <typename K, int WideMR, int NarrowMR>
constexpr MicroSet MakeSet() {
  return MicroSet{
      WideMR,
      &K::template Run<WideMR, 4>,
      &K::template Run<1, 4>,
      NarrowMR,
      {nullptr, &K::template Run<NarrowMR, 1>, &K::template Run<NarrowMR, 2>,
       &K::template Run<NarrowMR, 3>},
      {nullptr, &K::template Run<1, 1>, &K::template Run<1, 2>, &K::template Run<1, 3>}};
}

struct Q8_0Kernels {
  template <int MR, int NR>
  static void Run(const uint8_t* const* w, const QuantizedActs& a, int64_t t0, float* y, int64_t ys,
                  int64_t r0) {
    MicroQ8_0<MR, NR>(w, a, t0, y, ys, r0);
  }
};
struct Q4KKernels {
  template <int MR, int NR>
  static void Run(const uint8_t* const* w, const QuantizedActs& a, int64_t t0, float* y, int64_t ys,
                  int64_t r0) {
    MicroQ4K<1, NR>(w, a, t0, y, ys, r0);
  }
};
struct Q6KKernels {
  template <int MR, int NR>
  static void Run(const uint8_t* const* w, const QuantizedActs& a, int64_t t0, float* y, int64_t ys,
                  int64_t r0) {
    MicroQ6K<1, NR>(w, a, t0, y, ys, r0);
  }
};

constexpr MicroSet kQ8_0Set = MakeSet<Q8_0Kernels, 2, 4>();
constexpr MicroSet kQ4KSet = MakeSet<Q4KKernels, 1, 1>();
constexpr MicroSet kQ6KSet = MakeSet<Q6KKernels, 1, 1>();

void WalkTile(const MicroSet& set, const WeightView& w, const QuantizedActs& acts, int64_t r0,
              int64_t r1, int64_t t0, int64_t t1, float* y, int64_t y_stride) {
  const uint8_t* rows[8];
  for (int64_t t = t0; t < t1;) {
    const int64_t nt = t1 - t;
    const bool wide = nt >= 4;
    const int nr = wide ? 4 : static_cast<int>(nt);
    const int mr = wide ? set.wide_mr : set.narrow_mr;
    int64_t r = r0;
    for (; r + mr <= r1; r += mr) {
      for (int i = 0; i < mr; ++i) rows[i] = WeightRow(w, r + i);
      (wide ? set.wide : set.narrow[nr])(rows, acts, t, y, y_stride, r);
    }
    for (; r < r1; ++r) {
      rows[0] = WeightRow(w, r);
      (wide ? set.wide_row1 : set.narrow_row1[nr])(rows, acts, t, y, y_stride, r);
    }
    t += nr;
  }
}

// ---- Float weights -----------------------------------------------------------------------------

template <DType T>
inline __m256 Load8(const uint8_t* row, int64_t c) {
  if constexpr (T == DType::kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + c);
  } else if constexpr (T == DType::kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c)));
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

template <DType T>
inline float Load1(const uint8_t* row, int64_t c) {
  if constexpr (T == DType::kF32) {
    float v;
    std::memcpy(&v, row + 4 * c, 4);
    return v;
  } else {
    uint16_t h;
    std::memcpy(&h, row + 2 * c, 2);
    if constexpr (T == DType::kF16) {
      return HalfToFloat(h);
    } else {
      const uint32_t u = static_cast<uint32_t>(h) << 16;
      float v;
      std::memcpy(&v, &u, 4);
      return v;
    }
  }
}

template <DType T, int MR, int NR>
void MicroFloat(const WeightView& w, const float* x, int64_t x_stride, int64_t r0, int64_t t0,
                float* y, int64_t y_stride) {
  const uint8_t* rows[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) rows[r] = WeightRow(w, r0 + r);
  const float* xt[NR];
#pragma GCC unroll 8
  for (int t = 0; t < NR; ++t) xt[t] = x + (t0 + t) * x_stride;
  __m256 acc[MR][NR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  const int64_t cols = w.cols, vec_end = cols & ~int64_t{7};
  for (int64_t c = 0; c < vec_end; c += 8) {
    __m256 wv[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) wv[r] = Load8<T>(rows[r], c);
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) {
      const __m256 xv = _mm256_loadu_ps(xt[t] + c);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < NR; ++t) {
      float sum = Hsum(acc[r][t]);
      for (int64_t c = vec_end; c < cols; ++c) sum += Load1<T>(rows[r], c) * xt[t][c];
      y[(t0 + t) * y_stride + r0 + r] = sum;
    }
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

void QuantTile(const WeightView& w, const QuantizedActs& acts, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t y_stride, uint8_t* work) {
  switch (w.type) {
    case DType::kQ4_0:
      return TileQ4<false>(w, acts, r0, r1, t0, t1, y, y_stride, work);
    case DType::kQ4_1:
      return TileQ4<true>(w, acts, r0, r1, t0, t1, y, y_stride, work);
    case DType::kQ8_0:
      return WalkTile(kQ8_0Set, w, acts, r0, r1, t0, t1, y, y_stride);
    case DType::kQ4_K:
      return WalkTile(kQ4KSet, w, acts, r0, r1, t0, t1, y, y_stride);
    case DType::kQ6_K:
      return WalkTile(kQ6KSet, w, acts, r0, r1, t0, t1, y, y_stride);
    default:
      return;
  }
}

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
// q = x * (127 / amax) rounded half to even (the default MXCSR mode of cvtps_epi32).
void QuantizeActRow(const float* x, QuantizedActs& acts, int64_t t) {
  const bool k256 = acts.format == ActFormat::kAct256;
  const int bs = k256 ? kQKK : kQK;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int8_t* qs = acts.qs + t * acts.cols;
  for (int64_t b = 0; b < acts.blocks; ++b) {
    const float* xb = x + b * bs;
    __m256 vmax = _mm256_setzero_ps();
    for (int j = 0; j < bs; j += 8) {
      vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(xb + j), abs_mask));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    int8_t* q = qs + b * bs;
    __m256i total = _mm256_setzero_si256();
    int16_t* bsums = k256 ? acts.bsums + (t * acts.blocks + b) * 16 : nullptr;
    for (int j = 0; j < bs; j += 32) {
      const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j), vid));
      const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 8), vid));
      const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 16), vid));
      const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 24), vid));
      if (k256) {
        bsums[j / 16] = static_cast<int16_t>(HsumI32(_mm256_add_epi32(i0, i1)));
        bsums[j / 16 + 1] = static_cast<int16_t>(HsumI32(_mm256_add_epi32(i2, i3)));
      } else {
        total = _mm256_add_epi32(
            total, _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
      }
      // Pack to bytes; packs works per 128-bit lane, so restore element order with a permute.
      const __m256i w01 = _mm256_packs_epi32(i0, i1);
      const __m256i w23 = _mm256_packs_epi32(i2, i3);
      const __m256i bytes = _mm256_packs_epi16(w01, w23);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + j),
                          _mm256_permutevar8x32_epi32(bytes, perm));
    }
    acts.d[t * acts.blocks + b] = d;
    if (!k256) acts.s[t * acts.blocks + b] = d * static_cast<float>(HsumI32(total));
  }
}

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
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  }
  return i;
}

}  // namespace kvasir::kernels::cpu::avx2
