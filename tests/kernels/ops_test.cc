// Row and element-wise operations against their references at every ISA level, plus known values:
// RmsNorm, Rope (both layouts, partial rotation, large positions), Softmax, SiluMul, Add, and the
// memory bandwidth probe.
#include "kernels/cpu/ops.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <vector>

#include "common/base/thread_pool.h"
#include "kernels/cpu/membw.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvasir::kernels::cpu {
namespace {

using testing::GaussianFloats;
using testing::IsaTest;
using testing::RandomFloats;

class OpsTest : public IsaTest {};

// f32 sum of squares over `dim` terms vs the double reference: relative error <= dim * 2^-24,
// then one rounding per multiply: 1e-5 relative covers dim <= 100 with margin, and the exact
// bound is used for longer rows.
TEST_P(OpsTest, RmsNormMatchesRef) {
  for (int64_t dim : {1, 7, 8, 64, 172, 576, 577}) {
    const int64_t n = 3;
    const std::vector<float> x = GaussianFloats(n * dim, static_cast<uint32_t>(dim), 2.0f);
    const std::vector<float> w = RandomFloats(dim, 99, 0.5f, 1.5f);
    std::vector<float> out(n * dim), ref(n * dim);
    RmsNorm(x.data(), w.data(), n, dim, 1e-5f, out.data());
    RmsNormRef(x.data(), w.data(), n, dim, 1e-5f, ref.data());
    const double rel = std::max(1e-5, (dim + 4) * std::ldexp(1.0, -24));
    for (int64_t i = 0; i < n * dim; ++i) {
      ASSERT_NEAR(out[i], ref[i], rel * std::fabs(ref[i]) + 1e-7) << "dim " << dim << " i " << i;
    }
    // In place.
    std::vector<float> inplace = x;
    RmsNorm(inplace.data(), w.data(), n, dim, 1e-5f, inplace.data());
    EXPECT_EQ(inplace, out);
  }
}

TEST_P(OpsTest, RmsNormKnownValues) {
  const float x[4] = {1.0f, -1.0f, 1.0f, -1.0f};  // mean square 1
  const float w[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  float out[4];
  RmsNorm(x, w, 1, 4, 0.0f, out);
  EXPECT_FLOAT_EQ(out[0], 1.0f);
  EXPECT_FLOAT_EQ(out[1], -2.0f);
  EXPECT_FLOAT_EQ(out[3], -4.0f);
}

// Rope: angles in double in both, rounded to f32 in the fast path, which then rotates in f32:
// with |x| <= 1 each output is off by at most (|x0| + |x1|) * 3 * 2^-24 (cos/sin rounding, product,
// sum) plus the final rounding of the reference, under 5e-7.
TEST_P(OpsTest, RopeMatchesRef) {
  struct Case {
    int n_heads, head_dim, n_rot;
    float base;
  };
  for (RopeLayout layout : {RopeLayout::kAdjacentPairs, RopeLayout::kHalfSplit}) {
    for (Case c : {Case{9, 64, 64, 100000.0f}, Case{3, 64, 32, 10000.0f}, Case{8, 8, 8, 10000.0f},
                   Case{2, 12, 12, 500.0f}, Case{2, 12, 6, 10000.0f}, Case{4, 128, 128, 1e6f},
                   Case{1, 16, 0, 10000.0f}, Case{3, 48, 40, 10000.0f}}) {
      const int64_t n_tokens = 5, stride = c.n_heads * c.head_dim + 3;
      const std::vector<int32_t> pos = {0, 1, 17, 17, 8191};
      std::vector<float> x = RandomFloats(n_tokens * stride, c.head_dim);
      std::vector<float> ref = x;
      Rope(x.data(), n_tokens, stride, c.n_heads, c.head_dim, c.n_rot, pos.data(), c.base, layout);
      RopeRef(ref.data(), n_tokens, stride, c.n_heads, c.head_dim, c.n_rot, pos.data(), c.base,
              layout);
      for (size_t i = 0; i < x.size(); ++i) {
        ASSERT_NEAR(x[i], ref[i], 5e-7f) << "layout " << static_cast<int>(layout) << " dim "
                                         << c.head_dim << " rot " << c.n_rot << " i " << i;
      }
    }
  }
}

TEST_P(OpsTest, RopeKnownValues) {
  // One head of 4, n_rot = 4, base 100: pair 0 turns by pos rad, pair 1 by pos / 10 rad.
  const int32_t pos = 2;
  float adj[4] = {1.0f, 0.0f, 0.0f, 1.0f};  // pairs (x0, x1), (x2, x3)
  Rope(adj, 1, 4, 1, 4, 4, &pos, 100.0f, RopeLayout::kAdjacentPairs);
  EXPECT_NEAR(adj[0], std::cos(2.0), 1e-6);
  EXPECT_NEAR(adj[1], std::sin(2.0), 1e-6);
  EXPECT_NEAR(adj[2], -std::sin(0.2), 1e-6);
  EXPECT_NEAR(adj[3], std::cos(0.2), 1e-6);
  float split[4] = {1.0f, 0.0f, 0.0f, 1.0f};  // pairs (x0, x2), (x1, x3)
  Rope(split, 1, 4, 1, 4, 4, &pos, 100.0f, RopeLayout::kHalfSplit);
  EXPECT_NEAR(split[0], std::cos(2.0), 1e-6);
  EXPECT_NEAR(split[2], std::sin(2.0), 1e-6);
  EXPECT_NEAR(split[1], -std::sin(0.2), 1e-6);
  EXPECT_NEAR(split[3], std::cos(0.2), 1e-6);
  // Position 0 is the identity; elements past n_rot are untouched.
  float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const int32_t zero = 0, far = 1000;
  Rope(x, 1, 8, 1, 8, 8, &zero, 10000.0f, RopeLayout::kAdjacentPairs);
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(x[i], i + 1.0f);
  Rope(x, 1, 8, 1, 8, 4, &far, 10000.0f, RopeLayout::kHalfSplit);
  for (int i = 4; i < 8; ++i) EXPECT_EQ(x[i], i + 1.0f);
}

// Softmax: the vector exp has relative error ~2e-7 and the sum adds n * 2^-24, so 2e-6 relative
// per element; values spread over +-80 check the max subtraction (no overflow to inf or NaN).
TEST_P(OpsTest, SoftmaxMatchesRef) {
  for (int64_t n : {1, 5, 8, 9, 100, 4099}) {
    for (float spread : {1.0f, 80.0f}) {
      std::vector<float> x = RandomFloats(n, static_cast<uint32_t>(n), -spread, spread);
      std::vector<float> ref = x;
      Softmax(x.data(), n);
      SoftmaxRef(ref.data(), n);
      double total = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_TRUE(std::isfinite(x[i]));
        ASSERT_NEAR(x[i], ref[i], 2e-6 * ref[i] + (n + 8) * 1e-7 * ref[i] + 1e-37) << n << " " << i;
        total += x[i];
      }
      EXPECT_NEAR(total, 1.0, 1e-5);
    }
  }
}

TEST_P(OpsTest, SoftmaxKnownValues) {
  float x[3] = {0.0f, std::log(2.0f), std::log(5.0f)};  // weights 1 : 2 : 5
  Softmax(x, 3);
  EXPECT_NEAR(x[0], 1.0 / 8, 1e-7);
  EXPECT_NEAR(x[1], 2.0 / 8, 1e-7);
  EXPECT_NEAR(x[2], 5.0 / 8, 1e-7);
  float big[2] = {1000.0f, 1000.0f};  // exp(1000) overflows without the max subtraction
  Softmax(big, 2);
  EXPECT_FLOAT_EQ(big[0], 0.5f);
  EXPECT_FLOAT_EQ(big[1], 0.5f);
}

// SiluMul: one exp (relative 2e-7) and a division: 1e-6 relative, plus a tiny absolute term for
// the outputs that underflow (silu(-100) ~ -4e-42).
TEST_P(OpsTest, SiluMulMatchesRef) {
  for (int64_t n : {1, 7, 8, 1536, 1543}) {
    std::vector<float> g = RandomFloats(n, static_cast<uint32_t>(n), -12.0f, 12.0f);
    g[0] = -100.0f;
    if (n > 1) g[1] = 100.0f;
    const std::vector<float> up = RandomFloats(n, 7, -2.0f, 2.0f);
    std::vector<float> out(n), ref(n);
    SiluMul(g.data(), up.data(), n, out.data());
    SiluMulRef(g.data(), up.data(), n, ref.data());
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NEAR(out[i], ref[i], 1e-6 * std::fabs(ref[i]) + 1e-30) << n << " " << i;
    }
    SiluMul(g.data(), up.data(), n, g.data());  // aliased output
    EXPECT_EQ(g, out);
  }
  const float g1 = 1.0f, u1 = 2.0f;
  float o1;
  SiluMul(&g1, &u1, 1, &o1);
  EXPECT_NEAR(o1, 2.0 / (1.0 + std::exp(-1.0)), 1e-6);
}

TEST_P(OpsTest, AddAddsEveryElement) {
  for (int64_t n : {1, 8, 13, 576}) {
    std::vector<float> y = RandomFloats(n, 1), x = RandomFloats(n, 2);
    std::vector<float> expect(n);
    for (int64_t i = 0; i < n; ++i) expect[i] = y[i] + x[i];
    Add(y.data(), x.data(), n);
    EXPECT_EQ(y, expect);
  }
}

KVASIR_INSTANTIATE_ISA_TEST(OpsTest);

TEST(MemoryBandwidthTest, ReportsPlausibleRate) {
  ThreadPool pool(2);
  const double gbps = MeasureMemoryReadGBps(pool);
  EXPECT_GT(gbps, 0.5);      // any machine that runs the suite reads faster than this
  EXPECT_LT(gbps, 10000.0);  // a 256 MiB buffer cannot be served from cache at this rate
  // A small buffer, any size (not a multiple of the slices), is read from the caches.
  const double small = MeasureMemoryReadGBps(pool, (size_t{1} << 20) + 100);
  EXPECT_GT(small, 0.5);
  EXPECT_LT(small, 100000.0);
}

// The last-level cache from a sysfs tree: the highest level among data and unified caches, sizes
// in K, M or bytes; instruction caches and unreadable entries are skipped.
TEST(MemoryBandwidthTest, FindsTheLastLevelCacheInSysfs) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / ("kvasir-llc-" + std::to_string(::getpid()));
  auto add = [&](const char* index, const char* level, const char* type, const char* size) {
    fs::create_directories(root / index);
    std::ofstream(root / index / "level") << level << "\n";
    std::ofstream(root / index / "type") << type << "\n";
    std::ofstream(root / index / "size") << size << "\n";
  };
  add("index0", "1", "Data", "32K");
  add("index1", "1", "Instruction", "32K");
  add("index2", "2", "Unified", "2048K");
  EXPECT_EQ(LastLevelCacheBytes(root.string()), 2048 * 1024);
  add("index3", "3", "Unified", "480M");
  add("index4", "4", "Instruction", "900M");
  add("index5", "5", "Unified", "lots");
  EXPECT_EQ(LastLevelCacheBytes(root.string()), int64_t{480} << 20);
  fs::remove_all(root);
  EXPECT_EQ(LastLevelCacheBytes(root.string()), 0);
  // This machine's, for the record (0 where sysfs has no cache information).
  std::printf("last-level cache here: %lld bytes\n", static_cast<long long>(LastLevelCacheBytes()));
}

}  // namespace
}  // namespace kvasir::kernels::cpu
