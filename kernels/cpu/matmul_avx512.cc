// AVX-512 (F, BW, VL, DQ + VNNI) tile kernels of MatMul for quantized weights in row order (float
// weights, the activation quantizer and the f16 conversions: matmul_float_avx512.cc; repacked
// weights: matmul_rows8_avx512.cc). The same source builds natively (namespace avx512, kernels
// library) and against SIMDe (namespace avx512_emulated, kernel tests only); see
// avx512_intrinsics.h. Runs only through the avx512 IsaKernels table (isa.cc), which is never
// chosen on a CPU without these extensions.
//
// The tiling and the micro-kernel shapes are those of matmul_avx2.cc, on 512-bit registers:
//  - Q4_0 / Q4_1 / Q8_0: u8 x s8 products by vpdpbusd (_mm512_dpbusd_epi32: four products summed
//    into each i32 lane, exactly, without maddubs' i16 step). A register holds two blocks of 32
//    (lanes 0-7 sum block b, lanes 8-15 block b + 1, scaled by [d_b dx_b x8 | d_b+1 dx_b+1 x8]),
//    or, for the Q4 decode kernels, one 16-byte group of each of four blocks.
//  - Q4_K / Q6_K: maddubs (u8 x s8 into i16), then vpdpwssd (_mm512_dpwssd_epi32) multiplies by
//    the sub-block scales and accumulates into i32 in one instruction.
// Integer sums are exact, so results match MatMulQuantizedRef up to float summation order.
// A block count that is not a multiple of the register's goes through the same instructions with
// the leftover block in the low half of a register whose high half is zero.
//
// Only intrinsics, file-local functions (this file's, avx512_helpers.h's) and the `static` helpers
// of quant_blocks.h and internal.h are used (see matmul_avx2.cc).
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/avx512_helpers.h"
#include "kernels/cpu/avx512_intrinsics.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/quant_blocks.h"

namespace kvasir::kernels::cpu::KVASIR_AVX512_NS {
namespace {

constexpr int kChunk = 64;  // weight blocks whose scales are converted to f32 at once

inline int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

inline float HalfToFloat(uint16_t h) { return _cvtsh_ss(h); }

// v in the low half, zeros in the high half.
inline __m512i Zext(__m256i v) { return _mm512_inserti64x4(_mm512_setzero_si512(), v, 0); }

// [p[0] x8 | p[1] x8]: the scales of a register that holds two blocks of 32.
inline __m512 PairScale(const float* p) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m128 two = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(two));
}

// [p[0] x4 | p[1] x4 | p[2] x4 | p[3] x4]: the scales of a register with one 16-byte group of each
// of four blocks.
inline __m512 QuadScale(const float* p) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(p)));
}

// out[k] = a[k] * b[k] for k < n (out may be a).
inline void MulArrays(const float* a, const float* b, int64_t n, float* out) {
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    _mm512_storeu_ps(out + k, _mm512_mul_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k)));
  }
  if (k < n) {
    const __mmask16 tail = FirstLanes(n - k);
    _mm512_mask_storeu_ps(
        out + k, tail,
        _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, a + k), _mm512_maskz_loadu_ps(tail, b + k)));
  }
}

// sum_{k < n} m[k] s[k] as 16 partial sums.
inline __m512 MinTerms(const float* m, const float* s, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(m + k), _mm512_loadu_ps(s + k), acc);
  }
  if (k < n) {
    const __mmask16 tail = FirstLanes(n - k);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, m + k), _mm512_maskz_loadu_ps(tail, s + k),
                          acc);
  }
  return acc;
}

// ---- Q4_0 / Q4_1 ---------------------------------------------------------------------------
// Both are w = q * d + m with q in 0..15 (Q4_0: m = -8 d), so
//   sum_i w_i x_i = sum_blocks d dx sum_i q_i qx_i + m s,   s = dx sum_i qx_i.

// 32 nibbles of a Q4 block as bytes in element order: low nibbles first, then high nibbles.
inline __m256i UnpackNibbles(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// The f16 scales (and minimums) of nb blocks as f32: d[b], m[b].
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

// The 16 nibble bytes of four consecutive blocks, one block per 128-bit lane.
template <typename Block>
inline __m512i LoadFourQ4(const Block* blk) {
  const __m256i ab = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(blk[1].qs),
                                         reinterpret_cast<const __m128i*>(blk[0].qs));
  const __m256i cd = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(blk[3].qs),
                                         reinterpret_cast<const __m128i*>(blk[2].qs));
  return _mm512_inserti64x4(_mm512_castsi256_si512(ab), cd, 1);
}

// Narrow shapes (1-3 tokens, decode): MR rows x NR tokens straight from the packed blocks. A
// register holds four consecutive blocks of one row, 16 nibble bytes per 128-bit lane; one shift
// and two masks give elements 0-15 (low nibbles) and 16-31 (high nibbles) of all four, and each
// token's activations are regrouped to match once per four blocks for all MR rows (two lane
// shuffles). The scales of up to kChunk blocks are converted first and multiplied by the
// token's, so a (row, token, four blocks) step is 2 vpdpbusd, a conversion, a scale permute and
// an FMA. The rows that follow are prefetched, as in the AVX2 kernel: decode streams the weights
// from memory.
template <bool kQ41, int MR, int NR>
void MicroQ4(const uint8_t* const* wrow, const QuantizedActs& a, int64_t t0, float* y,
             int64_t y_stride, int64_t r0) {
  using Block = std::conditional_t<kQ41, BlockQ4_1, BlockQ4_0>;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i zero = _mm512_setzero_si512();
  const int64_t nb = a.blocks;
  const Block* blocks[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) blocks[r] = reinterpret_cast<const Block*>(wrow[r]);
  const int8_t* xq[NR];
  const float* xd[NR];
  const float* xs[NR];
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) {
    xq[t] = ActQs(a, t0 + t);
    xd[t] = ActD(a, t0 + t);
    xs[t] = ActS(a, t0 + t);
  }
  alignas(64) float dw[kChunk];
  alignas(64) float mw[kChunk];
  alignas(64) float dd[MR][NR][kChunk];  // weight scale times activation scale, per block
  // The next rows follow these in memory; one token runs faster, so it fetches further ahead.
  const int64_t ahead = (NR == 1 ? 2 : 1) * MR * nb * static_cast<int64_t>(sizeof(Block));
  __m512 acc[MR][NR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < NR; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  for (int64_t c0 = 0; c0 < nb; c0 += kChunk) {
    const int cn = static_cast<int>(Min64(kChunk, nb - c0));
    for (int r = 0; r < MR; ++r) {
      const char* next = reinterpret_cast<const char*>(blocks[r] + c0) + ahead;
      for (int64_t off = 0; off < cn * static_cast<int64_t>(sizeof(Block)); off += 64) {
        _mm_prefetch(next + off, _MM_HINT_T0);
      }
    }
    for (int r = 0; r < MR; ++r) {
      ConvertScalesQ4<kQ41>(reinterpret_cast<const uint8_t*>(blocks[r] + c0), cn, dw, mw);
#pragma GCC unroll 4
      for (int t = 0; t < NR; ++t) {
        MulArrays(dw, xd[t] + c0, cn, dd[r][t]);
        acc[r][t] = _mm512_add_ps(acc[r][t], MinTerms(mw, xs[t] + c0, cn));
      }
    }
    int k = 0;
    for (; k + 4 <= cn; k += 4) {
      const int64_t b = c0 + k;
      __m512i x_lo[NR], x_hi[NR];
#pragma GCC unroll 4
      for (int t = 0; t < NR; ++t) {
        // [b.lo b.hi b+1.lo b+1.hi] and [b+2.lo ... b+3.hi] (16 bytes each) regrouped as
        // [b.lo b+1.lo b+2.lo b+3.lo] and [b.hi b+1.hi b+2.hi b+3.hi].
        const __m512i x0 = _mm512_loadu_si512(xq[t] + b * kQK);
        const __m512i x1 = _mm512_loadu_si512(xq[t] + b * kQK + 64);
        x_lo[t] = _mm512_shuffle_i32x4(x0, x1, _MM_SHUFFLE(2, 0, 2, 0));
        x_hi[t] = _mm512_shuffle_i32x4(x0, x1, _MM_SHUFFLE(3, 1, 3, 1));
      }
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512i raw = LoadFourQ4(blocks[r] + b);
        const __m512i lo = _mm512_and_si512(raw, low4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
#pragma GCC unroll 4
        for (int t = 0; t < NR; ++t) {
          const __m512i p =
              _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, x_lo[t]), hi, x_hi[t]);
          acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), QuadScale(&dd[r][t][k]), acc[r][t]);
        }
      }
    }
    // The last 1-3 blocks of the row, one at a time.
    for (; k < cn; ++k) {
      const int64_t b = c0 + k;
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512i w = Zext(UnpackNibbles(blocks[r][b].qs));
#pragma GCC unroll 4
        for (int t = 0; t < NR; ++t) {
          const __m512i p = _mm512_dpbusd_epi32(zero, w, Zext(Load256(xq[t] + b * kQK)));
          acc[r][t] =
              _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(dd[r][t][k]), acc[r][t]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) y[(t0 + t) * y_stride + r0 + r] = Hsum(acc[r][t]);
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

// Wide shapes (4+ tokens): MR unpacked rows x NR tokens, two blocks per register: per (row, token,
// two blocks) a vpdpbusd, a conversion, the product of the two scale pairs and an FMA.
template <int MR, int NR>
void MicroUnpackedQ4(const UnpackedQ4& u, int64_t rr, const QuantizedActs& a, int64_t t0, float* y,
                     int64_t y_stride, int64_t r0) {
  const __m512i zero = _mm512_setzero_si512();
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
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) {
    xq[t] = ActQs(a, t0 + t);
    xd[t] = ActD(a, t0 + t);
  }
  __m512 acc[MR][NR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const float* m = u.m + (rr + r) * u.scale_stride;
#pragma GCC unroll 4
    for (int t = 0; t < NR; ++t) acc[r][t] = MinTerms(m, ActS(a, t0 + t), nb);
  }
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    __m512i wq[MR];
    __m512 dw[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      wq[r] = _mm512_loadu_si512(q[r] + b * kQK);
      dw[r] = PairScale(d[r] + b);
    }
#pragma GCC unroll 4
    for (int t = 0; t < NR; ++t) {
      const __m512i xv = _mm512_loadu_si512(xq[t] + b * kQK);
      const __m512 dx = PairScale(xd[t] + b);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512i p = _mm512_dpbusd_epi32(zero, wq[r], xv);
        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw[r], dx), acc[r][t]);
      }
    }
  }
  if (b < nb) {  // an odd block count: the last block alone
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512i wq = Zext(Load256(q[r] + b * kQK));
#pragma GCC unroll 4
      for (int t = 0; t < NR; ++t) {
        const __m512i p = _mm512_dpbusd_epi32(zero, wq, Zext(Load256(xq[t] + b * kQK)));
        acc[r][t] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(d[r][b] * xd[t][b]), acc[r][t]);
      }
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) y[(t0 + t) * y_stride + r0 + r] = Hsum(acc[r][t]);
  }
}

// NR (1-3) tokens from t over rows [r0, r1): MR rows at a time, then single rows.
template <bool kQ41, int MR, int NR>
void NarrowQ4(const WeightView& w, const QuantizedActs& a, int64_t r0, int64_t r1, int64_t t,
              float* y, int64_t y_stride) {
  const uint8_t* rows[MR];
  int64_t r = r0;
  for (; r + MR <= r1; r += MR) {
    for (int i = 0; i < MR; ++i) rows[i] = WeightRow(w, r + i);
    MicroQ4<kQ41, MR, NR>(rows, a, t, y, y_stride, r);
  }
  for (; r < r1; ++r) {
    rows[0] = WeightRow(w, r);
    MicroQ4<kQ41, 1, NR>(rows, a, t, y, y_stride, r);
  }
}

template <bool kQ41>
void TileQ4(const WeightView& w, const QuantizedActs& a, int64_t r0, int64_t r1, int64_t t0,
            int64_t t1, float* y, int64_t y_stride, uint8_t* work) {
  int64_t t = t0;
  if (t1 - t0 >= 4) {
    const UnpackedQ4 u = UnpackTileQ4<kQ41>(w, r0, r1, work);
    for (; t + 4 <= t1; t += 4) {
      int64_t r = r0;
      for (; r + 2 <= r1; r += 2) MicroUnpackedQ4<2, 4>(u, r - r0, a, t, y, y_stride, r);
      for (; r < r1; ++r) MicroUnpackedQ4<1, 4>(u, r - r0, a, t, y, y_stride, r);
    }
  }
  while (t < t1) {
    const int64_t nt = Min64(t1 - t, 3);
    if (nt == 1) {
      NarrowQ4<kQ41, 8, 1>(w, a, r0, r1, t, y, y_stride);
    } else if (nt == 2) {
      NarrowQ4<kQ41, 4, 2>(w, a, r0, r1, t, y, y_stride);
    } else {
      NarrowQ4<kQ41, 4, 3>(w, a, r0, r1, t, y, y_stride);
    }
    t += nt;
  }
}

// ---- Q8_0 ------------------------------------------------------------------------------------
// Signed x signed: vpdpbusd takes |w| as the unsigned operand and x with w's sign as the signed one
// (x negated where w < 0: a subtraction from zero masked by w's sign bits). Two blocks per
// register; the scales of up to kChunk blocks are converted first (and, for one token, multiplied
// by the token's).

void ConvertScalesQ8(const BlockQ8_0* blocks, int64_t nb, float* d) {
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const __m128i halves = _mm_setr_epi16(
        static_cast<int16_t>(blocks[b].d), static_cast<int16_t>(blocks[b + 1].d),
        static_cast<int16_t>(blocks[b + 2].d), static_cast<int16_t>(blocks[b + 3].d),
        static_cast<int16_t>(blocks[b + 4].d), static_cast<int16_t>(blocks[b + 5].d),
        static_cast<int16_t>(blocks[b + 6].d), static_cast<int16_t>(blocks[b + 7].d));
    _mm256_storeu_ps(d + b, _mm256_cvtph_ps(halves));
  }
  for (; b < nb; ++b) d[b] = HalfToFloat(blocks[b].d);
}

// The 32 values of two consecutive blocks.
inline __m512i LoadTwoQ8(const BlockQ8_0* blk) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(Load256(blk[0].qs)), Load256(blk[1].qs), 1);
}

template <int MR, int NR>
void MicroQ8_0(const uint8_t* const* wrow, const QuantizedActs& a, int64_t t0, float* y,
               int64_t y_stride, int64_t r0) {
  const __m512i zero = _mm512_setzero_si512();
  const int64_t nb = a.blocks;
  const BlockQ8_0* blocks[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) blocks[r] = reinterpret_cast<const BlockQ8_0*>(wrow[r]);
  const int8_t* xq[NR];
  const float* xd[NR];
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) {
    xq[t] = ActQs(a, t0 + t);
    xd[t] = ActD(a, t0 + t);
  }
  alignas(64) float dw[MR][kChunk];  // weight scales (times the token's when NR == 1)
  // The next MR rows follow these in memory: fetch them while these are computed.
  const int64_t ahead = MR * nb * static_cast<int64_t>(sizeof(BlockQ8_0));
  __m512 acc[MR][NR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < NR; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  for (int64_t c0 = 0; c0 < nb; c0 += kChunk) {
    const int cn = static_cast<int>(Min64(kChunk, nb - c0));
    for (int r = 0; r < MR; ++r) {
      ConvertScalesQ8(blocks[r] + c0, cn, dw[r]);
      if constexpr (NR == 1) MulArrays(dw[r], xd[0] + c0, cn, dw[r]);
    }
    int k = 0;
    for (; k + 2 <= cn; k += 2) {
      const int64_t b = c0 + k;
      __m512i wabs[MR];
      __mmask64 neg[MR];
      __m512 sw[MR];
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const char* next = reinterpret_cast<const char*>(blocks[r] + b) + ahead;
        _mm_prefetch(next, _MM_HINT_T0);
        _mm_prefetch(next + 64, _MM_HINT_T0);
        const __m512i w = LoadTwoQ8(blocks[r] + b);
        wabs[r] = _mm512_abs_epi8(w);
        neg[r] = _mm512_movepi8_mask(w);
        sw[r] = PairScale(&dw[r][k]);
      }
#pragma GCC unroll 4
      for (int t = 0; t < NR; ++t) {
        const __m512i xv = _mm512_loadu_si512(xq[t] + b * kQK);
        __m512 dx = _mm512_setzero_ps();
        if constexpr (NR > 1) dx = PairScale(xd[t] + b);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
          const __m512i xs = _mm512_mask_sub_epi8(xv, neg[r], zero, xv);
          const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wabs[r], xs));
          acc[r][t] = _mm512_fmadd_ps(p, NR == 1 ? sw[r] : _mm512_mul_ps(sw[r], dx), acc[r][t]);
        }
      }
    }
    if (k < cn) {  // an odd block count: the last block alone
      const int64_t b = c0 + k;
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512i w = Zext(Load256(blocks[r][b].qs));
        const __m512i wabs = _mm512_abs_epi8(w);
        const __mmask64 neg = _mm512_movepi8_mask(w);
#pragma GCC unroll 4
        for (int t = 0; t < NR; ++t) {
          const __m512i xv = Zext(Load256(xq[t] + b * kQK));
          const __m512i xs = _mm512_mask_sub_epi8(xv, neg, zero, xv);
          const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wabs, xs));
          const float scale = NR == 1 ? dw[r][k] : dw[r][k] * xd[t][b];
          acc[r][t] = _mm512_fmadd_ps(p, _mm512_set1_ps(scale), acc[r][t]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) y[(t0 + t) * y_stride + r0 + r] = Hsum(acc[r][t]);
  }
}

// ---- Q4_K --------------------------------------------------------------------------------------
// Per super-block: d dx sum_j sc_j (q . qx)_j - dmin dx sum_j m_j (sum qx)_j. A register holds the
// 64 elements of one 32-byte chunk (sub-block 2c in the low half, 2c + 1 in the high half); maddubs
// gives i16 pair sums and vpdpwssd multiplies them by [sc_2c x16 | sc_2c+1 x16] into the i32 sums.

template <int MR, int NR>
void MicroQ4K(const uint8_t* const* wrow, const QuantizedActs& a, int64_t t0, float* y,
              int64_t y_stride, int64_t r0) {
  static_assert(MR == 1);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const auto* blocks = reinterpret_cast<const BlockQ4K*>(wrow[0]);
  const int8_t* xq[NR];
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) xq[t] = ActQs(a, t0 + t);
  __m512 acc[NR];
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < a.blocks; ++b) {
    const BlockQ4K& blk = blocks[b];
    const float d = HalfToFloat(blk.d), dmin = HalfToFloat(blk.dmin);
    int sc[8];
    alignas(32) int16_t m16[16];
    for (int j = 0; j < 8; ++j) {
      int m;
      Q4KScaleMin(j, blk.scales, &sc[j], &m);
      m16[2 * j] = m16[2 * j + 1] = static_cast<int16_t>(m);
    }
    const __m256i mins = _mm256_load_si256(reinterpret_cast<const __m256i*>(m16));
    __m512i isum[NR];
#pragma GCC unroll 4
    for (int t = 0; t < NR; ++t) isum[t] = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = Load256(blk.qs + 32 * c);
      const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(raw, low4)),
                                           _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4), 1);
      const __m512i scale = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_set1_epi16(static_cast<int16_t>(sc[2 * c]))),
          _mm256_set1_epi16(static_cast<int16_t>(sc[2 * c + 1])), 1);
#pragma GCC unroll 4
      for (int t = 0; t < NR; ++t) {
        const __m512i xv = _mm512_loadu_si512(xq[t] + b * kQKK + 64 * c);
        isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(w, xv), scale);
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < NR; ++t) {
      const float dx = ActD(a, t0 + t)[b];
      const __m256i bsums = Load256(ActBsums(a, t0 + t) + b * 16);
      const __m512 msum = _mm512_cvtepi32_ps(Zext(_mm256_madd_epi16(bsums, mins)));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_set1_ps(d * dx), acc[t]);
      acc[t] = _mm512_fnmadd_ps(msum, _mm512_set1_ps(dmin * dx), acc[t]);
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) y[(t0 + t) * y_stride + r0] = Hsum(acc[t]);
}

// ---- Q6_K --------------------------------------------------------------------------------------
// q - 32 with q in 0..63: maddubs on q, vpdpwssd by the scales (one per 16 elements), then
// 32 sum_k sc_k (sum qx)_k subtracted once per super-block. Per half of a super-block, the 64 bytes
// of ql and the 32 of qh give two registers of 64 six-bit values in element order.

// Word indices for vpermw: lane i (elements 2i, 2i + 1) of register k takes scale 4k + i / 8.
struct Q6ScaleIdx {
  int16_t v[4][32];
};
constexpr Q6ScaleIdx MakeQ6ScaleIdx() {
  Q6ScaleIdx s{};
  for (int k = 0; k < 4; ++k) {
    for (int i = 0; i < 32; ++i) s.v[k][i] = static_cast<int16_t>(4 * k + i / 8);
  }
  return s;
}
alignas(64) constexpr Q6ScaleIdx kQ6ScaleIdx = MakeQ6ScaleIdx();

template <int MR, int NR>
void MicroQ6K(const uint8_t* const* wrow, const QuantizedActs& a, int64_t t0, float* y,
              int64_t y_stride, int64_t r0) {
  static_assert(MR == 1);
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i low2 = _mm512_set1_epi8(0x03);
  const auto* blocks = reinterpret_cast<const BlockQ6K*>(wrow[0]);
  const int8_t* xq[NR];
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) xq[t] = ActQs(a, t0 + t);
  __m512 acc[NR];
#pragma GCC unroll 4
  for (int t = 0; t < NR; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < a.blocks; ++b) {
    const BlockQ6K& blk = blocks[b];
    const __m256i sc16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales)));
    const __m512i sc512 = _mm512_castsi256_si512(sc16);  // vpermw reads only words 0-15
    __m512i isum[NR];
#pragma GCC unroll 4
    for (int t = 0; t < NR; ++t) isum[t] = _mm512_setzero_si512();
    for (int h = 0; h < 2; ++h) {
      // ql: [l0 | l1] (64 bytes); qh: [qh | qh >> 2], so that one set of shifts serves both halves.
      const __m512i ql = _mm512_loadu_si512(blk.ql + 64 * h);
      const __m256i qh = Load256(blk.qh + 32 * h);
      const __m512i qh2 =
          _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
      // Elements 128h + [0, 64) (q[0] | q[1] of the AVX2 kernel) and 128h + [64, 128) (q[2] |
      // q[3]).
      const __m512i q01 = _mm512_or_si512(_mm512_and_si512(ql, low4),
                                          _mm512_slli_epi16(_mm512_and_si512(qh2, low2), 4));
      const __m512i q23 =
          _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
                          _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh2, 4), low2), 4));
      const __m512i s01 = _mm512_permutexvar_epi16(_mm512_load_si512(kQ6ScaleIdx.v[2 * h]), sc512);
      const __m512i s23 =
          _mm512_permutexvar_epi16(_mm512_load_si512(kQ6ScaleIdx.v[2 * h + 1]), sc512);
#pragma GCC unroll 4
      for (int t = 0; t < NR; ++t) {
        const int8_t* x = xq[t] + b * kQKK + 128 * h;
        isum[t] =
            _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(q01, _mm512_loadu_si512(x)), s01);
        isum[t] = _mm512_dpwssd_epi32(isum[t],
                                      _mm512_maddubs_epi16(q23, _mm512_loadu_si512(x + 64)), s23);
      }
    }
    const float d = HalfToFloat(blk.d);
#pragma GCC unroll 4
    for (int t = 0; t < NR; ++t) {
      const __m256i bsums = Load256(ActBsums(a, t0 + t) + b * 16);
      const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, sc16), 5);
      const float ddx = d * ActD(a, t0 + t)[b];
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(isum[t], Zext(offset))),
                               _mm512_set1_ps(ddx), acc[t]);
    }
  }
#pragma GCC unroll 4
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

}  // namespace kvasir::kernels::cpu::KVASIR_AVX512_NS
