// AVX-512 versions of the row operations (RmsNorm, Rope, Softmax, SiluMul, Add) and of the
// attention page kernels (q.k scores and p.v accumulation over runs of contiguous slots), 16 floats
// per register with masked loads and stores for the last n % 16 elements (no scalar tails). Built
// natively (namespace avx512) and against SIMDe (avx512_emulated, kernel tests only); see
// avx512_intrinsics.h. The exp polynomial and the order of operations per lane are those of
// ops_avx2.cc. Uses no inline function of a shared header with external linkage (see
// matmul_avx2.cc; avx512_helpers.h's are file-local).
#include <cstdint>

#include "kernels/cpu/avx512_helpers.h"
#include "kernels/cpu/avx512_intrinsics.h"
#include "kernels/cpu/internal.h"

namespace kvasir::kernels::cpu::KVASIR_AVX512_NS {
namespace {

inline float Sqrt(float v) { return _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(v))); }

// exp(x) for 16 lanes, relative error ~2e-7: x = n ln2 + r with |r| <= ln2 / 2, 2^n built in the
// exponent bits, e^r from Cephes' expf polynomial; x is clamped to [-87, 88]. The same steps as
// Exp8 of ops_avx2.cc (n rounded to nearest even there by vroundps, here by vcvtps2dq), so the
// same results.
inline __m512 Exp16(__m512 x) {
  x = _mm512_min_ps(x, _mm512_set1_ps(88.0f));
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512i n = _mm512_cvtps_epi32(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)));
  const __m512 fx = _mm512_cvtepi32_ps(n);
  __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 r2 = _mm512_mul_ps(r, r);
  const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0f));
  const __m512 pow2n =
      _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23));
  return _mm512_mul_ps(e, pow2n);
}

}  // namespace

void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
  const int64_t vec_end = dim & ~int64_t{15};
  const __mmask16 tail = FirstLanes(dim - vec_end);
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * dim;
    float* oi = out + i * dim;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < vec_end; c += 16) {
      const __m512 v = _mm512_loadu_ps(xi + c);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    if (tail != 0) {
      const __m512 v = _mm512_maskz_loadu_ps(tail, xi + vec_end);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    const float inv = 1.0f / Sqrt(Hsum(acc) / static_cast<float>(dim) + eps);
    const __m512 vinv = _mm512_set1_ps(inv);
    for (int64_t c = 0; c < vec_end; c += 16) {
      _mm512_storeu_ps(oi + c, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(xi + c), vinv),
                                             _mm512_loadu_ps(weight + c)));
    }
    if (tail != 0) {
      const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, xi + vec_end), vinv);
      _mm512_mask_storeu_ps(oi + vec_end, tail,
                            _mm512_mul_ps(v, _mm512_maskz_loadu_ps(tail, weight + vec_end)));
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 sign = _mm512_set1_ps(-0.0f);
  auto silu_mul = [&](__m512 g, __m512 u) {
    const __m512 e = Exp16(_mm512_xor_ps(g, sign));
    return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
  };
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(out + i, silu_mul(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i)));
  }
  if (i < n) {
    const __mmask16 tail = FirstLanes(n - i);
    _mm512_mask_storeu_ps(
        out + i, tail,
        silu_mul(_mm512_maskz_loadu_ps(tail, gate + i), _mm512_maskz_loadu_ps(tail, up + i)));
  }
}

float ExpSubSum(float* x, int64_t n, float max) {
  const __m512 vmax = _mm512_set1_ps(max);
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 e = Exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmax));
    _mm512_storeu_ps(x + i, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (i < n) {
    const __mmask16 tail = FirstLanes(n - i);
    const __m512 e = Exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + i), vmax));
    _mm512_mask_storeu_ps(x + i, tail, e);
    acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(tail, e));
  }
  return Hsum(acc);
}

float MaxOf(const float* x, int64_t n) {
  __m512 vmax = _mm512_set1_ps(x[0]);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
  if (i < n) {
    const __mmask16 tail = FirstLanes(n - i);
    vmax = _mm512_mask_max_ps(vmax, tail, vmax, _mm512_maskz_loadu_ps(tail, x + i));
  }
  return Hmax(vmax);
}

void Softmax(float* x, int64_t n) {
  const __m512 vinv = _mm512_set1_ps(1.0f / ExpSubSum(x, n, MaxOf(x, n)));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), vinv));
  if (i < n) {
    const __mmask16 tail = FirstLanes(n - i);
    _mm512_mask_storeu_ps(x + i, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + i), vinv));
  }
}

void Add(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i), _mm512_loadu_ps(x + i)));
  }
  if (i < n) {
    const __mmask16 tail = FirstLanes(n - i);
    _mm512_mask_storeu_ps(
        y + i, tail,
        _mm512_add_ps(_mm512_maskz_loadu_ps(tail, y + i), _mm512_maskz_loadu_ps(tail, x + i)));
  }
}

void RopeToken(float* x, int n_heads, int head_dim, int n_rot, const float* cos_sin,
               RopeLayout layout) {
  const int half = n_rot / 2;
  const float* cs = cos_sin;
  const float* sn = cos_sin + half;
  if (layout == RopeLayout::kHalfSplit) {
    const int vec_end = half & ~15;
    const __mmask16 tail = FirstLanes(half - vec_end);
    for (int h = 0; h < n_heads; ++h) {
      float* lo = x + static_cast<int64_t>(h) * head_dim;
      float* hi = lo + half;
      for (int j = 0; j < vec_end; j += 16) {
        const __m512 c = _mm512_loadu_ps(cs + j), s = _mm512_loadu_ps(sn + j);
        const __m512 x0 = _mm512_loadu_ps(lo + j), x1 = _mm512_loadu_ps(hi + j);
        _mm512_storeu_ps(lo + j, _mm512_fmsub_ps(x0, c, _mm512_mul_ps(x1, s)));
        _mm512_storeu_ps(hi + j, _mm512_fmadd_ps(x0, s, _mm512_mul_ps(x1, c)));
      }
      if (tail != 0) {
        const int j = vec_end;
        const __m512 c = _mm512_maskz_loadu_ps(tail, cs + j),
                     s = _mm512_maskz_loadu_ps(tail, sn + j);
        const __m512 x0 = _mm512_maskz_loadu_ps(tail, lo + j);
        const __m512 x1 = _mm512_maskz_loadu_ps(tail, hi + j);
        _mm512_mask_storeu_ps(lo + j, tail, _mm512_fmsub_ps(x0, c, _mm512_mul_ps(x1, s)));
        _mm512_mask_storeu_ps(hi + j, tail, _mm512_fmadd_ps(x0, s, _mm512_mul_ps(x1, c)));
      }
    }
    return;
  }
  // Adjacent pairs: 8 pairs per register, cos duplicated per pair and sin as (-s, s), so that
  // x * cc + swap(x) * ss = (x0 c - x1 s, x1 c + x0 s) (the AVX2 kernel's fmaddsub, same results).
  alignas(64) float cc[2 * 512];
  alignas(64) float ss[2 * 512];  // n_rot <= 1024, checked by the caller
  for (int j = 0; j < half; ++j) {
    cc[2 * j] = cc[2 * j + 1] = cs[j];
    ss[2 * j] = -sn[j];
    ss[2 * j + 1] = sn[j];
  }
  const int vec_end = 2 * (half & ~7);  // floats covered by whole registers
  const __mmask16 tail = FirstLanes(2 * half - vec_end);
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + static_cast<int64_t>(h) * head_dim;
    for (int i = 0; i < vec_end; i += 16) {
      const __m512 xv = _mm512_loadu_ps(v + i);
      const __m512 swapped = _mm512_shuffle_ps(xv, xv, 0xB1);
      _mm512_storeu_ps(v + i, _mm512_fmadd_ps(xv, _mm512_load_ps(cc + i),
                                              _mm512_mul_ps(swapped, _mm512_load_ps(ss + i))));
    }
    if (tail != 0) {
      const __m512 xv = _mm512_maskz_loadu_ps(tail, v + vec_end);
      const __m512 swapped = _mm512_shuffle_ps(xv, xv, 0xB1);
      _mm512_mask_storeu_ps(
          v + vec_end, tail,
          _mm512_fmadd_ps(xv, _mm512_maskz_loadu_ps(tail, cc + vec_end),
                          _mm512_mul_ps(swapped, _mm512_maskz_loadu_ps(tail, ss + vec_end))));
    }
  }
}

namespace {

template <bool kF16>
inline __m512 LoadSlot16(const void* base, int64_t i) {
  if constexpr (kF16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i)));
  } else {
    return _mm512_loadu_ps(static_cast<const float*>(base) + i);
  }
}

// The lanes of `mask` from element i on, zeros elsewhere (nothing outside them is read).
template <bool kF16>
inline __m512 LoadSlotMasked(const void* base, int64_t i, __mmask16 mask) {
  if constexpr (kF16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + i));
  } else {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(base) + i);
  }
}

// Sums of the lanes of a, b, c and d: [sum a, sum b, sum c, sum d].
inline __m128 Hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m256 ab = _mm256_hadd_ps(Fold(a), Fold(b));  // a01 a23 b01 b23 | a45 a67 b45 b67
  const __m256 cd = _mm256_hadd_ps(Fold(c), Fold(d));
  const __m256 abcd = _mm256_hadd_ps(ab, cd);  // a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// Scores of GH heads x 4 keys at a time: each key vector is loaded (and converted from f16) once
// for all GH heads, and the 4 GH accumulators are independent FMA chains. Any head_dim: whole
// registers, then one masked register.
template <bool kF16, int GH>
void QkHeads(const float* q, int64_t q_head_stride, const void* k, int count, int head_dim,
             float scale, float* scores, int64_t score_stride) {
  const int vec_end = head_dim & ~15;
  const __mmask16 tail = FirstLanes(head_dim - vec_end);
  const __m128 vscale = _mm_set1_ps(scale);
  int j = 0;
  for (; j + 4 <= count; j += 4) {
    const int64_t base = static_cast<int64_t>(j) * head_dim;
    __m512 a[GH][4];
#pragma GCC unroll 4
    for (int g = 0; g < GH; ++g) {
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) a[g][i] = _mm512_setzero_ps();
    }
    for (int d = 0; d < vec_end; d += 16) {
      __m512 kv[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) kv[i] = LoadSlot16<kF16>(k, base + i * head_dim + d);
#pragma GCC unroll 4
      for (int g = 0; g < GH; ++g) {
        const __m512 qv = _mm512_loadu_ps(q + g * q_head_stride + d);
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) a[g][i] = _mm512_fmadd_ps(qv, kv[i], a[g][i]);
      }
    }
    if (tail != 0) {
      __m512 kv[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i)
        kv[i] = LoadSlotMasked<kF16>(k, base + i * head_dim + vec_end, tail);
#pragma GCC unroll 4
      for (int g = 0; g < GH; ++g) {
        const __m512 qv = _mm512_maskz_loadu_ps(tail, q + g * q_head_stride + vec_end);
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) a[g][i] = _mm512_fmadd_ps(qv, kv[i], a[g][i]);
      }
    }
#pragma GCC unroll 4
    for (int g = 0; g < GH; ++g) {
      _mm_storeu_ps(scores + g * score_stride + j,
                    _mm_mul_ps(Hsum4(a[g][0], a[g][1], a[g][2], a[g][3]), vscale));
    }
  }
  for (; j < count; ++j) {
    const int64_t base = static_cast<int64_t>(j) * head_dim;
    for (int g = 0; g < GH; ++g) {
      const float* qg = q + g * q_head_stride;
      __m512 acc = _mm512_setzero_ps();
      for (int d = 0; d < vec_end; d += 16) {
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(qg + d), LoadSlot16<kF16>(k, base + d), acc);
      }
      if (tail != 0) {
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, qg + vec_end),
                              LoadSlotMasked<kF16>(k, base + vec_end, tail), acc);
      }
      scores[g * score_stride + j] = Hsum(acc) * scale;
    }
  }
}

template <bool kF16>
void QkSlotsImpl(const float* q, int64_t q_head_stride, int group, const void* k, int count,
                 int head_dim, float scale, float* scores, int64_t score_stride) {
  int g = 0;
  for (; g + 3 <= group; g += 3) {
    QkHeads<kF16, 3>(q + g * q_head_stride, q_head_stride, k, count, head_dim, scale,
                     scores + g * score_stride, score_stride);
  }
  if (group - g == 2) {
    QkHeads<kF16, 2>(q + g * q_head_stride, q_head_stride, k, count, head_dim, scale,
                     scores + g * score_stride, score_stride);
  } else if (group - g == 1) {
    QkHeads<kF16, 1>(q + g * q_head_stride, q_head_stride, k, count, head_dim, scale,
                     scores + g * score_stride, score_stride);
  }
}

// acc[g][d0 .. d0 + 16 VN) += sum_j p[g][j] v_j[d0 ..] for GH heads: each value vector is loaded
// (and converted) once for the GH heads; GH * VN accumulators stay in registers. With kMasked,
// one register (VN == 1) of the lanes in `mask` only.
template <bool kF16, int GH, int VN, bool kMasked = false>
void PvChunk(const float* p, int64_t p_stride, const void* v, int count, int head_dim, int d0,
             float* acc, __mmask16 mask = 0xFFFF) {
  static_assert(!kMasked || VN == 1);
  __m512 a[GH][VN];
#pragma GCC unroll 4
  for (int g = 0; g < GH; ++g) {
#pragma GCC unroll 4
    for (int i = 0; i < VN; ++i) {
      float* at = acc + g * head_dim + d0 + 16 * i;
      a[g][i] = kMasked ? _mm512_maskz_loadu_ps(mask, at) : _mm512_loadu_ps(at);
    }
  }
  for (int j = 0; j < count; ++j) {
    const int64_t base = static_cast<int64_t>(j) * head_dim + d0;
    __m512 vv[VN];
#pragma GCC unroll 4
    for (int i = 0; i < VN; ++i) {
      vv[i] = kMasked ? LoadSlotMasked<kF16>(v, base + 16 * i, mask)
                      : LoadSlot16<kF16>(v, base + 16 * i);
    }
#pragma GCC unroll 4
    for (int g = 0; g < GH; ++g) {
      const __m512 pj = _mm512_set1_ps(p[g * p_stride + j]);
#pragma GCC unroll 4
      for (int i = 0; i < VN; ++i) a[g][i] = _mm512_fmadd_ps(pj, vv[i], a[g][i]);
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < GH; ++g) {
#pragma GCC unroll 4
    for (int i = 0; i < VN; ++i) {
      float* at = acc + g * head_dim + d0 + 16 * i;
      if constexpr (kMasked) {
        _mm512_mask_storeu_ps(at, mask, a[g][i]);
      } else {
        _mm512_storeu_ps(at, a[g][i]);
      }
    }
  }
}

// GH heads over all of head_dim: chunks of 16 VN dimensions, then single registers, then one
// masked register.
template <bool kF16, int GH, int VN>
void PvHeads(const float* p, int64_t p_stride, const void* v, int count, int head_dim, float* acc) {
  const int vec_end = head_dim & ~15;
  int d0 = 0;
  for (; d0 + 16 * VN <= vec_end; d0 += 16 * VN) {
    PvChunk<kF16, GH, VN>(p, p_stride, v, count, head_dim, d0, acc);
  }
  for (; d0 < vec_end; d0 += 16) PvChunk<kF16, GH, 1>(p, p_stride, v, count, head_dim, d0, acc);
  if (vec_end < head_dim) {
    PvChunk<kF16, GH, 1, true>(p, p_stride, v, count, head_dim, vec_end, acc,
                               FirstLanes(head_dim - vec_end));
  }
}

template <bool kF16>
void PvSlotsImpl(const float* p, int64_t p_stride, int group, const void* v, int count,
                 int head_dim, float* acc) {
  int g = 0;
  for (; g + 3 <= group; g += 3) {
    PvHeads<kF16, 3, 4>(p + g * p_stride, p_stride, v, count, head_dim, acc + g * head_dim);
  }
  if (group - g == 2) {
    PvHeads<kF16, 2, 4>(p + g * p_stride, p_stride, v, count, head_dim, acc + g * head_dim);
  } else if (group - g == 1) {
    PvHeads<kF16, 1, 4>(p + g * p_stride, p_stride, v, count, head_dim, acc + g * head_dim);
  }
}

}  // namespace

void QkSlots(const float* q, int64_t q_head_stride, int group, const void* k, DType k_type,
             int count, int head_dim, float scale, float* scores, int64_t score_stride) {
  if (k_type == DType::kF16) {
    QkSlotsImpl<true>(q, q_head_stride, group, k, count, head_dim, scale, scores, score_stride);
  } else {
    QkSlotsImpl<false>(q, q_head_stride, group, k, count, head_dim, scale, scores, score_stride);
  }
}

void PvSlots(const float* p, int64_t p_stride, int group, const void* v, DType v_type, int count,
             int head_dim, float* acc) {
  if (v_type == DType::kF16) {
    PvSlotsImpl<true>(p, p_stride, group, v, count, head_dim, acc);
  } else {
    PvSlotsImpl<false>(p, p_stride, group, v, count, head_dim, acc);
  }
}

}  // namespace kvasir::kernels::cpu::KVASIR_AVX512_NS
