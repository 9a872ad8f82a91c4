// Attention over paged K/V (the CSR view of kernels/types.h): the reference, and the fast path
// that walks runs of contiguous slots (a page, or the rest of one) with ISA-specific page kernels.
// Per query token: scores of the whole GQA group against every visible key, a max-subtracted
// softmax, then the weighted sum of the values. Scores live in a per-thread buffer that grows to
// the longest context seen and is then reused.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/base/check.h"
#include "common/base/half.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"

namespace kvasir::kernels::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t ElemBytes(DType t) { return t == DType::kF16 ? 2 : 4; }

float LoadKv(DType dtype, const uint8_t* slot, int32_t d) {
  if (dtype == DType::kF16) {
    uint16_t h;
    std::memcpy(&h, slot + 2 * d, 2);
    return Fp16ToFp32(h);
  }
  float f;
  std::memcpy(&f, slot + 4 * d, 4);
  return f;
}

void CheckArgs(const AttentionArgs& a) {
  KVASIR_CHECK(a.group >= 1 && a.head_dim >= 1 && a.n_q >= 0 && a.n_keys >= 0);
  KVASIR_CHECK(a.k.head_dim == a.head_dim && a.v.head_dim == a.head_dim);
  KVASIR_CHECK(a.k.dtype == DType::kF32 || a.k.dtype == DType::kF16);
  KVASIR_CHECK(a.v.dtype == DType::kF32 || a.v.dtype == DType::kF16);
  KVASIR_CHECK(a.n_keys == 0 ||
               (a.k_row >= 0 && a.k_row < a.k.num_rows && a.v_row >= 0 && a.v_row < a.v.num_rows));
  KVASIR_CHECK(a.n_keys == 0 || (a.k_begin >= 0 && a.k_begin + a.n_keys <= a.k.length(a.k_row)));
  KVASIR_CHECK(a.n_keys == 0 || (a.v_begin >= 0 && a.v_begin + a.n_keys <= a.v.length(a.v_row)));
}

int32_t Visible(const AttentionArgs& a, int32_t i) {
  if (a.n_visible == nullptr) return a.n_keys;
  return std::clamp(a.n_visible[i], 0, a.n_keys);
}

// Calls fn(j, count, slot_pointer) for runs of contiguous slots covering keys [0, n) of `row`
// starting at slot `begin`.
template <typename Fn>
void ForEachRun(const PagedKvView& kv, int32_t row, int32_t begin, int32_t n, Fn&& fn) {
  const auto* pool = static_cast<const uint8_t*>(kv.pool);
  for (int32_t j = 0; j < n;) {
    const int32_t slot = begin + j;
    const int32_t in_page = slot % kv.page_size;
    const int32_t count = std::min(kv.page_size - in_page, n - j);
    fn(j, count, pool + kv.slot_offset_bytes(row, slot));
    j += count;
  }
}

}  // namespace

// The scalar page kernels and softmax steps (internal.h).
namespace scalar {

void QkSlots(const float* q, int64_t q_head_stride, int group, const void* k, DType k_type,
             int count, int head_dim, float scale, float* scores, int64_t score_stride) {
  const int64_t slot_bytes = head_dim * ElemBytes(k_type);
  const auto* slots = static_cast<const uint8_t*>(k);
  for (int g = 0; g < group; ++g) {
    const float* qg = q + g * q_head_stride;
    for (int j = 0; j < count; ++j) {
      float dot = 0.0f;
      for (int d = 0; d < head_dim; ++d) dot += qg[d] * LoadKv(k_type, slots + j * slot_bytes, d);
      scores[g * score_stride + j] = dot * scale;
    }
  }
}

void PvSlots(const float* p, int64_t p_stride, int group, const void* v, DType v_type, int count,
             int head_dim, float* acc) {
  const int64_t slot_bytes = head_dim * ElemBytes(v_type);
  const auto* slots = static_cast<const uint8_t*>(v);
  for (int g = 0; g < group; ++g) {
    for (int j = 0; j < count; ++j) {
      const float pj = p[g * p_stride + j];
      for (int d = 0; d < head_dim; ++d) {
        acc[g * head_dim + d] += pj * LoadKv(v_type, slots + j * slot_bytes, d);
      }
    }
  }
}

float MaxOf(const float* x, int64_t n) {
  float max = x[0];
  for (int64_t i = 1; i < n; ++i) max = std::max(max, x[i]);
  return max;
}

float ExpSubSum(float* x, int64_t n, float max) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  return sum;
}

}  // namespace scalar

void AttentionRef(const AttentionArgs& a) {
  CheckArgs(a);
  std::vector<double> s(static_cast<size_t>(a.n_keys));
  for (int32_t i = 0; i < a.n_q; ++i) {
    const int32_t nv = Visible(a, i);
    for (int32_t g = 0; g < a.group; ++g) {
      const float* q = a.q + i * a.q_token_stride + static_cast<int64_t>(g) * a.head_dim;
      float* out = a.out + i * a.out_token_stride + static_cast<int64_t>(g) * a.head_dim;
      float* lse = a.lse != nullptr ? a.lse + static_cast<int64_t>(i) * a.group + g : nullptr;
      if (nv == 0) {
        std::fill(out, out + a.head_dim, 0.0f);
        if (lse != nullptr) *lse = kNegInf;
        continue;
      }
      double max = -std::numeric_limits<double>::infinity();
      for (int32_t j = 0; j < nv; ++j) {
        const auto* k =
            static_cast<const uint8_t*>(a.k.pool) + a.k.slot_offset_bytes(a.k_row, a.k_begin + j);
        double dot = 0.0;
        for (int32_t d = 0; d < a.head_dim; ++d)
          dot += static_cast<double>(q[d]) * LoadKv(a.k.dtype, k, d);
        s[j] = dot * a.scale;
        max = std::max(max, s[j]);
      }
      double sum = 0.0;
      for (int32_t j = 0; j < nv; ++j) sum += std::exp(s[j] - max);
      std::vector<double> o(static_cast<size_t>(a.head_dim), 0.0);
      for (int32_t j = 0; j < nv; ++j) {
        const double p = std::exp(s[j] - max) / sum;
        const auto* v =
            static_cast<const uint8_t*>(a.v.pool) + a.v.slot_offset_bytes(a.v_row, a.v_begin + j);
        for (int32_t d = 0; d < a.head_dim; ++d) o[d] += p * LoadKv(a.v.dtype, v, d);
        if (a.col_sums != nullptr) a.col_sums[j] += static_cast<float>(p);
      }
      for (int32_t d = 0; d < a.head_dim; ++d) out[d] = static_cast<float>(o[d]);
      if (lse != nullptr) *lse = static_cast<float>(max + std::log(sum));
    }
  }
}

void Attention(const AttentionArgs& a) {
  CheckArgs(a);
  const IsaKernels& isa = Kernels();
  const int group = a.group, hd = a.head_dim;
  // Per-thread scores [group][stride] and accumulators [group][head_dim].
  thread_local std::vector<float> buffer;
  const int64_t stride = (static_cast<int64_t>(a.n_keys) + 15) & ~int64_t{15};
  const size_t need = static_cast<size_t>(group * (stride + hd));
  if (buffer.size() < need) buffer.resize(need);
  float* scores = buffer.data();
  float* acc = scores + group * stride;
  float sums[64];
  float maxes[64];
  KVASIR_CHECK_MSG(group <= 64, "Attention: GQA group larger than 64");

  for (int32_t i = 0; i < a.n_q; ++i) {
    const int32_t nv = Visible(a, i);
    const float* q = a.q + i * a.q_token_stride;
    float* out = a.out + i * a.out_token_stride;
    float* lse = a.lse != nullptr ? a.lse + static_cast<int64_t>(i) * group : nullptr;
    if (nv == 0) {
      std::fill(out, out + static_cast<int64_t>(group) * hd, 0.0f);
      if (lse != nullptr) std::fill(lse, lse + group, kNegInf);
      continue;
    }
    // Scores.
    ForEachRun(a.k, a.k_row, a.k_begin, nv, [&](int32_t j, int32_t count, const uint8_t* k) {
      isa.qk_slots(q, hd, group, k, a.k.dtype, count, hd, a.scale, scores + j, stride);
    });
    // Softmax numerators, max-subtracted.
    for (int g = 0; g < group; ++g) {
      float* sg = scores + g * stride;
      maxes[g] = isa.max_of(sg, nv);
      sums[g] = isa.exp_sub_sum(sg, nv, maxes[g]);
    }
    // Weighted values.
    std::fill(acc, acc + static_cast<int64_t>(group) * hd, 0.0f);
    ForEachRun(a.v, a.v_row, a.v_begin, nv, [&](int32_t j, int32_t count, const uint8_t* v) {
      isa.pv_slots(scores + j, stride, group, v, a.v.dtype, count, hd, acc);
    });
    for (int g = 0; g < group; ++g) {
      const float inv = 1.0f / sums[g];
      for (int d = 0; d < hd; ++d) out[g * hd + d] = acc[g * hd + d] * inv;
      if (lse != nullptr) lse[g] = maxes[g] + std::log(sums[g]);
      if (a.col_sums != nullptr) {
        const float* sg = scores + g * stride;
        for (int32_t j = 0; j < nv; ++j) a.col_sums[j] += sg[j] * inv;
      }
    }
  }
}

}  // namespace kvasir::kernels::cpu
