// The kernels of MatMul for weights in the kRows8 layout (quant_blocks.h), Q4_0, Q4_1 and Q8_0,
// any number of tokens (four at a time), on 256-bit registers. Included, inside their namespaces,
// by matmul_rows8_avx2.cc (maddubs + madd) and matmul_rows8_avx512.cc (AVX-512 VNNI's 256-bit
// vpdpbusd), which differ only in the integer steps they pass as `Ops`:
//   Q4Sum                            the per-token accumulator of one block's Q4 products
//   Q4Step(sum, lo, x_lo, hi, x_hi)  adds the u8 x s8 products, 4 bytes per lane, of both halves
//   Q4Finish(sum)                    the block's integer sums, one i32 per lane (row)
//   Q8Step(sum, |w|, sign(x, w))     adds the u8 x s8 products, 4 bytes per lane, into i32 lanes
// Everything here is file-local to the including file (see the top of matmul_avx2.cc). Expects
// <immintrin.h> (or the SIMDe aliases), <cstdint>, <cstring>, internal.h and quant_blocks.h.
//
// One 32-bit lane per weight row: a 32-byte load holds 4 quant bytes of each of a group's 8 rows,
// multiplied by the same 4 activation bytes broadcast to every lane, so the integer sum of a block
// lands in the row's own lane with no horizontal adds; the block's 8 f16 scales convert with one
// vcvtph2ps, and the 8 results are stored at once. The weights arrive as one sequential stream
// per thread, with no separate scale-conversion pass. For Q4 the unpacking of a group's block (4
// loads, 4 shifts, 8 masks) serves up to four tokens, each of which then costs 8 broadcasts, the
// integer steps and the scaling: with maddubs about 4 vector operations per (row, token, block) at
// four tokens, 5.5 at one, against 5 (tiles unpacked for 4+ tokens) and 10 (one token) in the
// row-major kernels of matmul_avx2.cc. Each token's sums run the same instructions in the same
// order whatever the number of tokens, so results do not depend on the batch. Integer sums are
// exact (see each Ops), so results match MatMulQuantizedRef up to float summation order.
#pragma once

namespace {

// Bytes ahead of the block being computed that are prefetched: the stream crosses 4 KiB pages,
// where the hardware prefetchers stop.
constexpr int kPrefetchAhead = 1024;

// Four activation bytes broadcast to every 32-bit lane.
inline __m256i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Rows r0..r0+7 (one group, its first block at `group`) for tokens t0..t0+NT-1.
template <typename Ops, DType T, int NT>
void GroupRows8(const uint8_t* group, int64_t nb, const QuantizedActs& a, int64_t t0, float* y,
                int64_t y_stride, int64_t r0) {
  constexpr Rows8Format kFormat = Rows8FormatFor(T);
  constexpr int kHalves = kFormat.halves;
  constexpr int kBlock = 8 * kFormat.block_bytes;  // one block of the group's 8 rows
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const int8_t* xq[NT];
  const float* xd[NT];
  const float* xs[NT];
  __m256 acc[NT];
#pragma GCC unroll 4
  for (int t = 0; t < NT; ++t) {
    xq[t] = ActQs(a, t0 + t);
    xd[t] = ActD(a, t0 + t);
    xs[t] = ActS(a, t0 + t);
    acc[t] = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * kBlock;
#pragma GCC unroll 8
    for (int off = 0; off < kBlock; off += 64)
      _mm_prefetch(blk + kPrefetchAhead + off, _MM_HINT_T0);
    const uint8_t* qs = blk + 16 * kHalves;
    __m256i isum[NT];
    if constexpr (T == DType::kQ8_0) {
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) isum[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
        const __m256i aw = _mm256_sign_epi8(w, w);
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) {
          const __m256i sx = _mm256_sign_epi8(Broadcast4(xq[t] + kQK * b + 4 * c), w);
          isum[t] = Ops::Q8Step(isum[t], aw, sx);
        }
      }
    } else {
      typename Ops::Q4Sum s16[NT];
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) s16[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
        const __m256i lo = _mm256_and_si256(raw, low4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) {
          const int8_t* x = xq[t] + kQK * b + 4 * c;
          s16[t] = Ops::Q4Step(s16[t], lo, Broadcast4(x), hi, Broadcast4(x + kQK / 2));
        }
      }
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) isum[t] = Ops::Q4Finish(s16[t]);
    }
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      const __m256 v = _mm256_cvtepi32_ps(isum[t]);
      if constexpr (T == DType::kQ4_0) {
        // w = d (q - 8): d (dx sum q qx - 8 s), s = dx sum qx.
        const __m256 inner =
            _mm256_fmadd_ps(v, _mm256_broadcast_ss(xd[t] + b), _mm256_set1_ps(-8.0f * xs[t][b]));
        acc[t] = _mm256_fmadd_ps(d, inner, acc[t]);
      } else {
        acc[t] = _mm256_fmadd_ps(v, _mm256_mul_ps(d, _mm256_broadcast_ss(xd[t] + b)), acc[t]);
        if constexpr (T == DType::kQ4_1) {
          const __m256 m =
              _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 16)));
          acc[t] = _mm256_fmadd_ps(m, _mm256_broadcast_ss(xs[t] + b), acc[t]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < NT; ++t) _mm256_storeu_ps(y + (t0 + t) * y_stride + r0, acc[t]);
}

template <typename Ops, DType T>
void TileRows8(const WeightView& w, const QuantizedActs& a, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t y_stride) {
  const int64_t nb = w.cols / kQK;
  for (int64_t r = r0; r < r1; r += 8) {
    const uint8_t* group = WeightRow(w, r);
    int64_t t = t0;
    for (; t + 4 <= t1; t += 4) GroupRows8<Ops, T, 4>(group, nb, a, t, y, y_stride, r);
    if (t1 - t == 3) {
      GroupRows8<Ops, T, 3>(group, nb, a, t, y, y_stride, r);
    } else if (t1 - t == 2) {
      GroupRows8<Ops, T, 2>(group, nb, a, t, y, y_stride, r);
    } else if (t1 - t == 1) {
      GroupRows8<Ops, T, 1>(group, nb, a, t, y, y_stride, r);
    }
  }
}

// QuantTileRows8 (internal.h) with the integer steps of Ops.
template <typename Ops>
void QuantTileRows8With(const WeightView& w, const QuantizedActs& acts, int64_t r0, int64_t r1,
                        int64_t t0, int64_t t1, float* y, int64_t y_stride) {
  switch (w.type) {
    case DType::kQ4_0:
      return TileRows8<Ops, DType::kQ4_0>(w, acts, r0, r1, t0, t1, y, y_stride);
    case DType::kQ4_1:
      return TileRows8<Ops, DType::kQ4_1>(w, acts, r0, r1, t0, t1, y, y_stride);
    case DType::kQ8_0:
      return TileRows8<Ops, DType::kQ8_0>(w, acts, r0, r1, t0, t1, y, y_stride);
    default:
      return;
  }
}

}  // namespace
