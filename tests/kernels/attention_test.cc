// Attention over paged K/V against a dense naive attention computed here from the logical K/V
// rows (before they were scattered into pages): random non-contiguous page tables, page sizes 16,
// 5 and 1, K and V from different rows at different offsets, f32 and f16 pools, GQA groups,
// causal n_visible, lse and col_sums. Also MergeAttention of two halves against the whole.
// Tolerances: scores, exp and sums in f32 over <= 200 keys of |q.k| <= ~10 give outputs (convex
// combinations of values in [-1, 1]) within 2e-6 and lse within 2e-6 relative; we allow 1e-5.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "common/base/half.h"
#include "kernels/cpu/ops.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvasir::kernels::cpu {
namespace {

using testing::IsaTest;
using testing::RandomFloats;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// A page pool of `num_rows` rows with given lengths, pages assigned in a shuffled order, holding
// `dense[row][slot * head_dim + d]`.
struct PagedPool {
  std::vector<int32_t> indptr, indices, last_page_len;
  std::vector<float> f32;
  std::vector<uint16_t> f16;
  std::vector<std::vector<float>> dense;  // logical contents (f16-rounded for f16 pools)
  PagedKvView view;

  PagedPool(const std::vector<int32_t>& lengths, int32_t page_size, int32_t head_dim, DType dtype,
            uint32_t seed) {
    std::mt19937 rng(seed);
    const int32_t rows = static_cast<int32_t>(lengths.size());
    indptr.push_back(0);
    for (int32_t len : lengths) {
      const int32_t pages = (len + page_size - 1) / page_size;
      indptr.push_back(indptr.back() + pages);
      last_page_len.push_back(pages == 0 ? 0 : len - (pages - 1) * page_size);
    }
    // Two spare pages so that page ids are not simply 0..n-1.
    const int32_t total_pages = indptr.back() + 2;
    std::vector<int32_t> ids(total_pages);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    indices.assign(ids.begin(), ids.begin() + indptr.back());
    const size_t elems = static_cast<size_t>(total_pages) * page_size * head_dim;
    f32.assign(elems, std::numeric_limits<float>::quiet_NaN());  // unused slots poison results
    f16.assign(elems, 0x7E00);
    dense.resize(rows);
    for (int32_t r = 0; r < rows; ++r) {
      dense[r] = RandomFloats(static_cast<size_t>(lengths[r]) * head_dim, seed * 31 + r);
      for (int32_t s = 0; s < lengths[r]; ++s) {
        const int64_t page = indices[indptr[r] + s / page_size];
        for (int32_t d = 0; d < head_dim; ++d) {
          float& v = dense[r][static_cast<size_t>(s) * head_dim + d];
          const size_t at = static_cast<size_t>((page * page_size + s % page_size) * head_dim + d);
          if (dtype == DType::kF16) {
            f16[at] = Fp32ToFp16(v);
            v = Fp16ToFp32(f16[at]);
          } else {
            f32[at] = v;
          }
        }
      }
    }
    view.num_rows = rows;
    view.indptr = indptr.data();
    view.indices = indices.data();
    view.last_page_len = last_page_len.data();
    view.page_size = page_size;
    view.head_dim = head_dim;
    view.dtype = dtype;
    view.pool = dtype == DType::kF16 ? static_cast<const void*>(f16.data())
                                     : static_cast<const void*>(f32.data());
  }
};

struct Result {
  std::vector<float> out, lse, col_sums;
};

// Dense naive attention over the logical rows, in double.
Result DenseAttention(const AttentionArgs& a, const PagedPool& pool) {
  Result res;
  res.out.assign(static_cast<size_t>(a.n_q) * a.out_token_stride, 0.0f);
  res.lse.assign(static_cast<size_t>(a.n_q) * a.group, 0.0f);
  res.col_sums.assign(static_cast<size_t>(a.n_keys), 0.0f);
  const int hd = a.head_dim;
  for (int32_t i = 0; i < a.n_q; ++i) {
    const int32_t nv = a.n_visible ? std::clamp(a.n_visible[i], 0, a.n_keys) : a.n_keys;
    for (int32_t g = 0; g < a.group; ++g) {
      const float* q = a.q + i * a.q_token_stride + g * hd;
      float* out = res.out.data() + i * a.out_token_stride + g * hd;
      if (nv == 0) {
        res.lse[i * a.group + g] = kNegInf;
        continue;
      }
      std::vector<double> s(nv);
      for (int32_t j = 0; j < nv; ++j) {
        const float* k = pool.dense[a.k_row].data() + static_cast<size_t>(a.k_begin + j) * hd;
        double dot = 0.0;
        for (int d = 0; d < hd; ++d) dot += static_cast<double>(q[d]) * k[d];
        s[j] = dot * a.scale;
      }
      const double max = *std::max_element(s.begin(), s.end());
      double sum = 0.0;
      for (double v : s) sum += std::exp(v - max);
      for (int32_t j = 0; j < nv; ++j) {
        const double p = std::exp(s[j] - max) / sum;
        const float* v = pool.dense[a.v_row].data() + static_cast<size_t>(a.v_begin + j) * hd;
        for (int d = 0; d < hd; ++d) out[d] += static_cast<float>(p * v[d]);
        res.col_sums[j] += static_cast<float>(p);
      }
      res.lse[i * a.group + g] = static_cast<float>(max + std::log(sum));
    }
  }
  return res;
}

class AttentionTest : public IsaTest {
 protected:
  // Runs `fn` (Attention or AttentionRef) on `args` with fresh outputs; returns them.
  static Result Run(void (*fn)(const AttentionArgs&), AttentionArgs args) {
    Result res;
    res.out.assign(static_cast<size_t>(args.n_q) * args.out_token_stride, 0.0f);
    res.lse.assign(static_cast<size_t>(args.n_q) * args.group, 123.0f);
    res.col_sums.assign(static_cast<size_t>(args.n_keys), 0.0f);
    args.out = res.out.data();
    args.lse = res.lse.data();
    args.col_sums = res.col_sums.data();
    fn(args);
    return res;
  }

  static void ExpectClose(const Result& got, const Result& want, const char* what) {
    SCOPED_TRACE(what);
    ASSERT_EQ(got.out.size(), want.out.size());
    for (size_t i = 0; i < got.out.size(); ++i) ASSERT_NEAR(got.out[i], want.out[i], 1e-5) << i;
    for (size_t i = 0; i < got.lse.size(); ++i) {
      if (want.lse[i] == kNegInf) {
        ASSERT_EQ(got.lse[i], kNegInf) << i;
      } else {
        ASSERT_NEAR(got.lse[i], want.lse[i], 1e-5 * (1.0 + std::fabs(want.lse[i]))) << i;
      }
    }
    for (size_t j = 0; j < got.col_sums.size(); ++j) {
      ASSERT_NEAR(got.col_sums[j], want.col_sums[j], 1e-5) << j;
    }
  }
};

TEST_P(AttentionTest, MatchesDenseAttention) {
  struct HeadCase {
    int32_t head_dim, group;
  };
  uint32_t seed = 1;
  for (int32_t page_size : {16, 5, 1}) {
    for (DType dtype : {DType::kF32, DType::kF16}) {
      // head_dim: whole 8- and 16-float registers (64, 128), less than one register (8, 12), and
      // registers plus a remainder (40); groups of 1 to 8 query heads.
      for (HeadCase hc :
           {HeadCase{64, 3}, HeadCase{8, 1}, HeadCase{12, 8}, HeadCase{40, 2}, HeadCase{128, 4}}) {
        for (int32_t n_keys : {1, 37, 200}) {
          SCOPED_TRACE(::testing::Message() << "page_size " << page_size << " f16 "
                                            << (dtype == DType::kF16) << " head_dim " << hc.head_dim
                                            << " group " << hc.group << " keys " << n_keys);
          // Row 0 holds keys from slot 3, row 2 values from slot 7; row 1 is another head.
          const PagedPool pool({n_keys + 3 + page_size, 50, n_keys + 7}, page_size, hc.head_dim,
                               dtype, seed++);
          const int32_t n_q = 4;
          const int64_t q_stride = static_cast<int64_t>(hc.group) * hc.head_dim + 2;
          const std::vector<float> q = RandomFloats(n_q * q_stride, seed++, -2.0f, 2.0f);
          // Causal chunk of 4 queries at the end, plus one query that sees nothing.
          const std::vector<int32_t> visible = {n_keys - 3, 0, n_keys - 1, n_keys + 5};
          for (bool causal : {false, true}) {
            AttentionArgs a;
            a.q = q.data();
            a.q_token_stride = q_stride;
            a.n_q = n_q;
            a.group = hc.group;
            a.head_dim = hc.head_dim;
            a.scale = 1.0f / std::sqrt(static_cast<float>(hc.head_dim));
            a.k = pool.view;
            a.k_row = 0;
            a.k_begin = 3;
            a.v = pool.view;
            a.v_row = 2;
            a.v_begin = 7;
            a.n_keys = n_keys;
            a.n_visible = causal ? visible.data() : nullptr;
            a.out_token_stride = q_stride + 1;
            const Result want = DenseAttention(a, pool);
            ExpectClose(Run(Attention, a), want, "Attention");
            ExpectClose(Run(AttentionRef, a), want, "AttentionRef");
          }
        }
      }
    }
  }
}

TEST_P(AttentionTest, NoKeysGivesZeroAndNegInfLse) {
  const PagedPool pool({0, 4}, 16, 8, DType::kF32, 3);
  const std::vector<float> q = RandomFloats(16, 1);
  AttentionArgs a;
  a.q = q.data();
  a.q_token_stride = 16;
  a.n_q = 1;
  a.group = 2;
  a.head_dim = 8;
  a.k = a.v = pool.view;
  a.n_keys = 0;
  a.out_token_stride = 16;
  for (auto fn : {Attention, AttentionRef}) {
    std::vector<float> out(16, 5.0f), lse(2, 5.0f);
    a.out = out.data();
    a.lse = lse.data();
    fn(a);
    for (float v : out) EXPECT_EQ(v, 0.0f);
    EXPECT_EQ(lse[0], kNegInf);
    EXPECT_EQ(lse[1], kNegInf);
  }
}

// col_sums accumulates (+=) across calls, as H2O sums attention over steps.
TEST_P(AttentionTest, ColSumsAccumulate) {
  const PagedPool pool({20}, 16, 8, DType::kF32, 4);
  const std::vector<float> q = RandomFloats(8, 2);
  std::vector<float> out(8), col(20, 1.0f);
  AttentionArgs a;
  a.q = q.data();
  a.q_token_stride = 8;
  a.n_q = 1;
  a.head_dim = 8;
  a.scale = 0.5f;
  a.k = a.v = pool.view;
  a.n_keys = 20;
  a.out = out.data();
  a.out_token_stride = 8;
  a.col_sums = col.data();
  Attention(a);
  Attention(a);
  double total = 0.0;
  for (float c : col) {
    EXPECT_GT(c, 1.0f);
    total += c;
  }
  EXPECT_NEAR(total, 20.0 + 2.0, 1e-5);  // each call adds probabilities summing to 1
}

// Attention over keys [0, n) equals the merge of [0, m) and [m, n), including an empty part.
TEST_P(AttentionTest, MergeOfTwoSpansEqualsWhole) {
  const int32_t hd = 64, group = 3, n_keys = 90;
  const PagedPool pool({n_keys}, 16, hd, DType::kF32, 5);
  const std::vector<float> q = RandomFloats(2 * group * hd, 6, -2.0f, 2.0f);
  AttentionArgs a;
  a.q = q.data();
  a.q_token_stride = group * hd;
  a.n_q = 2;
  a.group = group;
  a.head_dim = hd;
  a.scale = 0.125f;
  a.k = a.v = pool.view;
  a.out_token_stride = group * hd;
  a.n_keys = n_keys;
  const Result whole = Run(Attention, a);
  for (int32_t split : {0, 33, n_keys}) {
    AttentionArgs first = a, second = a;
    first.n_keys = split;
    second.k_begin = second.v_begin = split;
    second.n_keys = n_keys - split;
    Result ra = Run(Attention, first);
    const Result rb = Run(Attention, second);
    MergeAttention(ra.out.data(), ra.lse.data(), rb.out.data(), rb.lse.data(), 2 * group, hd);
    for (size_t i = 0; i < whole.out.size(); ++i) {
      ASSERT_NEAR(ra.out[i], whole.out[i], 1e-5) << "split " << split << " at " << i;
    }
    for (size_t i = 0; i < whole.lse.size(); ++i) {
      ASSERT_NEAR(ra.lse[i], whole.lse[i], 1e-5) << "split " << split;
    }
  }
}

KVASIR_INSTANTIATE_ISA_TEST(AttentionTest);

TEST(MergeAttentionTest, KnownValues) {
  // Equal lse: plain average; lse_a updated to log(2 e^l).
  float a[2] = {1.0f, 2.0f}, la = 0.5f;
  const float b[2] = {3.0f, 6.0f}, lb = 0.5f;
  MergeAttention(a, &la, b, &lb, 1, 2);
  EXPECT_FLOAT_EQ(a[0], 2.0f);
  EXPECT_FLOAT_EQ(a[1], 4.0f);
  EXPECT_NEAR(la, 0.5f + std::log(2.0f), 1e-6);
  // Both empty stays empty.
  float c[1] = {0.0f}, lc = kNegInf;
  const float d[1] = {0.0f}, ld = kNegInf;
  MergeAttention(c, &lc, d, &ld, 1, 1);
  EXPECT_EQ(lc, kNegInf);
  EXPECT_EQ(c[0], 0.0f);
}

}  // namespace
}  // namespace kvasir::kernels::cpu
