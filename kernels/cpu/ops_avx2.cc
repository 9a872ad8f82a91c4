// AVX2 + FMA + F16C versions of the row operations (RmsNorm, Rope, Softmax, SiluMul, Add) and of
// the attention page kernels (q.k scores and p.v accumulation over runs of contiguous slots).
// Compiled with -mavx2 -mfma -mf16c; called only through the avx2 IsaKernels table. Uses no
// inline function of a shared header (see matmul_avx2.cc).
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/internal.h"

namespace kvasir::kernels::cpu::avx2 {
namespace {

inline float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float Sqrt(float v) { return _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(v))); }

inline float Hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// exp(x) for 8 lanes, relative error ~2e-7: x = n ln2 + r with |r| <= ln2 / 2, 2^n built in the
// exponent bits, e^r from Cephes' expf polynomial. x is clamped to [-87, 88] (e^-87 ~ 1.6e-38).
inline __m256 Exp8(__m256 x) {
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 e = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));
  const __m256i n = _mm256_cvtps_epi32(fx);
  const __m256 pow2n =
      _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
  return _mm256_mul_ps(e, pow2n);
}

// exp of one value with the same polynomial, for tails.
inline float Exp1(float x) { return _mm256_cvtss_f32(Exp8(_mm256_set1_ps(x))); }

}  // namespace

void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
  const int64_t vec_end = dim & ~int64_t{7};
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * dim;
    float* oi = out + i * dim;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < vec_end; c += 8) {
      const __m256 v = _mm256_loadu_ps(xi + c);
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    float ss = Hsum(acc);
    for (int64_t c = vec_end; c < dim; ++c) ss += xi[c] * xi[c];
    const float inv = 1.0f / Sqrt(ss / static_cast<float>(dim) + eps);
    const __m256 vinv = _mm256_set1_ps(inv);
    for (int64_t c = 0; c < vec_end; c += 8) {
      _mm256_storeu_ps(oi + c, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xi + c), vinv),
                                             _mm256_loadu_ps(weight + c)));
    }
    for (int64_t c = vec_end; c < dim; ++c) oi[c] = xi[c] * inv * weight[c];
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = Exp8(_mm256_xor_ps(g, sign));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + Exp1(-gate[i])) * up[i];
}

float ExpSubSum(float* x, int64_t n, float max) {
  const __m256 vmax = _mm256_set1_ps(max);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = Hsum(acc);
  for (; i < n; ++i) {
    x[i] = Exp1(x[i] - max);
    sum += x[i];
  }
  return sum;
}

float MaxOf(const float* x, int64_t n) {
  int64_t i = 0;
  float max = x[0];
  if (n >= 8) {
    __m256 vmax = _mm256_loadu_ps(x);
    for (i = 8; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
    max = Hmax(vmax);
  }
  for (; i < n; ++i) max = x[i] > max ? x[i] : max;
  return max;
}

void Softmax(float* x, int64_t n) {
  const float inv = 1.0f / ExpSubSum(x, n, MaxOf(x, n));
  const __m256 vinv = _mm256_set1_ps(inv);
  int64_t i = 0;
  for (i = 0; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
  for (; i < n; ++i) x[i] *= inv;
}

void Add(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
  }
  for (; i < n; ++i) y[i] += x[i];
}

void RopeToken(float* x, int n_heads, int head_dim, int n_rot, const float* cos_sin,
               RopeLayout layout) {
  const int half = n_rot / 2;
  const float* cs = cos_sin;
  const float* sn = cos_sin + half;
  if (layout == RopeLayout::kHalfSplit) {
    const int vec_end = half & ~7;
    for (int h = 0; h < n_heads; ++h) {
      float* lo = x + static_cast<int64_t>(h) * head_dim;
      float* hi = lo + half;
      for (int j = 0; j < vec_end; j += 8) {
        const __m256 c = _mm256_loadu_ps(cs + j), s = _mm256_loadu_ps(sn + j);
        const __m256 x0 = _mm256_loadu_ps(lo + j), x1 = _mm256_loadu_ps(hi + j);
        _mm256_storeu_ps(lo + j, _mm256_fmsub_ps(x0, c, _mm256_mul_ps(x1, s)));
        _mm256_storeu_ps(hi + j, _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)));
      }
      for (int j = vec_end; j < half; ++j) {
        const float x0 = lo[j], x1 = hi[j];
        lo[j] = x0 * cs[j] - x1 * sn[j];
        hi[j] = x0 * sn[j] + x1 * cs[j];
      }
    }
    return;
  }
  // Adjacent pairs: 4 pairs per vector; cos and sin duplicated per pair, fmaddsub gives
  // (x0 c - x1 s, x1 c + x0 s).
  const int vec_pairs = half & ~3;
  alignas(32) float cc[2 * 512];
  alignas(32) float ss[2 * 512];
  const int dup = vec_pairs;  // n_rot <= 1024, checked by the caller
  for (int j = 0; j < dup; ++j) {
    cc[2 * j] = cc[2 * j + 1] = cs[j];
    ss[2 * j] = ss[2 * j + 1] = sn[j];
  }
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + static_cast<int64_t>(h) * head_dim;
    int j = 0;
    for (; j < dup; j += 4) {
      const __m256 xv = _mm256_loadu_ps(v + 2 * j);
      const __m256 swapped = _mm256_permute_ps(xv, 0xB1);
      _mm256_storeu_ps(v + 2 * j,
                       _mm256_fmaddsub_ps(xv, _mm256_load_ps(cc + 2 * j),
                                          _mm256_mul_ps(swapped, _mm256_load_ps(ss + 2 * j))));
    }
    for (; j < half; ++j) {
      const float x0 = v[2 * j], x1 = v[2 * j + 1];
      v[2 * j] = x0 * cs[j] - x1 * sn[j];
      v[2 * j + 1] = x0 * sn[j] + x1 * cs[j];
    }
  }
}

namespace {

template <bool kF16>
inline __m256 LoadSlot8(const void* base, int64_t i) {
  if constexpr (kF16) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i)));
  } else {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  }
}

template <bool kF16>
inline float LoadSlot1(const void* base, int64_t i) {
  if constexpr (kF16) {
    return _cvtsh_ss(static_cast<const uint16_t*>(base)[i]);
  } else {
    return static_cast<const float*>(base)[i];
  }
}

// Sums of the lanes of a, b and c: [sum a, sum b, sum c, sum c].
inline __m128 Hsum3(__m256 a, __m256 b, __m256 c) {
  const __m256 ab = _mm256_hadd_ps(a, b);     // a01 a23 b01 b23 | a45 a67 b45 b67
  const __m256 cc = _mm256_hadd_ps(c, c);     // c01 c23 c01 c23 | c45 c67 c45 c67
  const __m256 abc = _mm256_hadd_ps(ab, cc);  // a0-3 b0-3 c0-3 c0-3 | a4-7 b4-7 c4-7 c4-7
  return _mm_add_ps(_mm256_castps256_ps128(abc), _mm256_extractf128_ps(abc, 1));
}

// Scores of GH heads x 3 keys at a time: each key vector is loaded (and converted from f16) once
// for all GH heads, and the 3 GH accumulators are independent FMA chains. head_dim % 8 == 0.
template <bool kF16, int GH>
void QkHeads(const float* q, int64_t q_head_stride, const void* k, int count, int head_dim,
             float scale, float* scores, int64_t score_stride) {
  const __m128 vscale = _mm_set1_ps(scale);
  int j = 0;
  for (; j + 3 <= count; j += 3) {
    const int64_t base = static_cast<int64_t>(j) * head_dim;
    __m256 a0[GH], a1[GH], a2[GH];
#pragma GCC unroll 4
    for (int g = 0; g < GH; ++g) a0[g] = a1[g] = a2[g] = _mm256_setzero_ps();
    for (int d = 0; d < head_dim; d += 8) {
      const __m256 k0 = LoadSlot8<kF16>(k, base + d);
      const __m256 k1 = LoadSlot8<kF16>(k, base + head_dim + d);
      const __m256 k2 = LoadSlot8<kF16>(k, base + 2 * head_dim + d);
#pragma GCC unroll 4
      for (int g = 0; g < GH; ++g) {
        const __m256 qv = _mm256_loadu_ps(q + g * q_head_stride + d);
        a0[g] = _mm256_fmadd_ps(qv, k0, a0[g]);
        a1[g] = _mm256_fmadd_ps(qv, k1, a1[g]);
        a2[g] = _mm256_fmadd_ps(qv, k2, a2[g]);
      }
    }
#pragma GCC unroll 4
    for (int g = 0; g < GH; ++g) {
      const __m128 three = _mm_mul_ps(Hsum3(a0[g], a1[g], a2[g]), vscale);
      float* out = scores + g * score_stride + j;
      _mm_storel_pi(reinterpret_cast<__m64*>(out), three);
      _mm_store_ss(out + 2, _mm_movehl_ps(three, three));
    }
  }
  for (; j < count; ++j) {
    const int64_t base = static_cast<int64_t>(j) * head_dim;
    for (int g = 0; g < GH; ++g) {
      __m256 acc = _mm256_setzero_ps();
      for (int d = 0; d < head_dim; d += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * q_head_stride + d),
                              LoadSlot8<kF16>(k, base + d), acc);
      }
      scores[g * score_stride + j] = Hsum(acc) * scale;
    }
  }
}

template <bool kF16>
void QkSlotsImpl(const float* q, int64_t q_head_stride, int group, const void* k, int count,
                 int head_dim, float scale, float* scores, int64_t score_stride) {
  if ((head_dim & 7) == 0) {
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
    return;
  }
  // head_dim not a multiple of 8: vector part plus a scalar tail, one key and head at a time.
  const int vec_end = head_dim & ~7;
  for (int j = 0; j < count; ++j) {
    const int64_t base = static_cast<int64_t>(j) * head_dim;
    for (int g = 0; g < group; ++g) {
      const float* qg = q + g * q_head_stride;
      __m256 acc = _mm256_setzero_ps();
      for (int d = 0; d < vec_end; d += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(qg + d), LoadSlot8<kF16>(k, base + d), acc);
      }
      float dot = Hsum(acc);
      for (int d = vec_end; d < head_dim; ++d) dot += qg[d] * LoadSlot1<kF16>(k, base + d);
      scores[g * score_stride + j] = dot * scale;
    }
  }
}

// acc[g][d0 .. d0 + 8 VN) += sum_j p[g][j] v_j[d0 ..] for GH heads: each value vector is loaded
// (and converted) once for the GH heads; GH * VN accumulators stay in registers.
template <bool kF16, int GH, int VN>
void PvChunk(const float* p, int64_t p_stride, const void* v, int count, int head_dim, int d0,
             float* acc) {
  __m256 a[GH][VN];
#pragma GCC unroll 4
  for (int g = 0; g < GH; ++g) {
#pragma GCC unroll 4
    for (int i = 0; i < VN; ++i) a[g][i] = _mm256_loadu_ps(acc + g * head_dim + d0 + 8 * i);
  }
  for (int j = 0; j < count; ++j) {
    const int64_t base = static_cast<int64_t>(j) * head_dim + d0;
    __m256 vv[VN];
#pragma GCC unroll 4
    for (int i = 0; i < VN; ++i) vv[i] = LoadSlot8<kF16>(v, base + 8 * i);
#pragma GCC unroll 4
    for (int g = 0; g < GH; ++g) {
      const __m256 pj = _mm256_broadcast_ss(p + g * p_stride + j);
#pragma GCC unroll 4
      for (int i = 0; i < VN; ++i) a[g][i] = _mm256_fmadd_ps(pj, vv[i], a[g][i]);
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < GH; ++g) {
#pragma GCC unroll 4
    for (int i = 0; i < VN; ++i) _mm256_storeu_ps(acc + g * head_dim + d0 + 8 * i, a[g][i]);
  }
}

// GH heads over all of head_dim: chunks of 8 VN dimensions, then single vectors, then scalars.
template <bool kF16, int GH, int VN>
void PvHeads(const float* p, int64_t p_stride, const void* v, int count, int head_dim, float* acc) {
  const int vec_end = head_dim & ~7;
  int d0 = 0;
  for (; d0 + 8 * VN <= vec_end; d0 += 8 * VN) {
    PvChunk<kF16, GH, VN>(p, p_stride, v, count, head_dim, d0, acc);
  }
  for (; d0 < vec_end; d0 += 8) PvChunk<kF16, GH, 1>(p, p_stride, v, count, head_dim, d0, acc);
  for (int d = vec_end; d < head_dim; ++d) {
    for (int g = 0; g < GH; ++g) {
      float s = acc[g * head_dim + d];
      for (int j = 0; j < count; ++j) {
        s += p[g * p_stride + j] * LoadSlot1<kF16>(v, static_cast<int64_t>(j) * head_dim + d);
      }
      acc[g * head_dim + d] = s;
    }
  }
}

template <bool kF16>
void PvSlotsImpl(const float* p, int64_t p_stride, int group, const void* v, int count,
                 int head_dim, float* acc) {
  int g = 0;
  for (; g + 3 <= group; g += 3) {
    PvHeads<kF16, 3, 2>(p + g * p_stride, p_stride, v, count, head_dim, acc + g * head_dim);
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

}  // namespace kvasir::kernels::cpu::avx2
