// Tests of the weight types: hand-built blocks with known values for every layout (so a bit-order
// mistake shared by QuantizeRow and DequantizeRow cannot cancel out), round-trip error bounds per
// type, GetRows, the f16 conversions, and the activation quantizer of MatMul at every ISA level.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/base/dtype.h"
#include "common/base/half.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_blocks.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvasir::kernels::cpu {
namespace {

using testing::GaussianFloats;
using testing::IsaTest;
using testing::RandomFloats;

void PutU16(std::vector<uint8_t>& b, size_t at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v & 0xFF);
  b[at + 1] = static_cast<uint8_t>(v >> 8);
}

std::vector<float> Dequant(DType t, const std::vector<uint8_t>& bytes, int64_t count) {
  std::vector<float> out(static_cast<size_t>(count));
  DequantizeRow(t, bytes.data(), count, out.data());
  return out;
}

// f16 constants used below: 0.5 = 0x3800, -1 = 0xBC00, 0.25 = 0x3400, 2 = 0x4000, 1 = 0x3C00.

TEST(QuantLayoutTest, Q4_1KnownBlock) {
  std::vector<uint8_t> b(20);
  PutU16(b, 0, 0x3800);  // d = 0.5
  PutU16(b, 2, 0xBC00);  // m = -1
  for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const std::vector<float> y = Dequant(DType::kQ4_1, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 0.5f * j - 1.0f) << j;              // low nibble: element j
    EXPECT_EQ(y[j + 16], 0.5f * (15 - j) - 1.0f) << j;  // high nibble: element j + 16
  }
}

TEST(QuantLayoutTest, Q4_0KnownBlock) {
  std::vector<uint8_t> b(18);
  PutU16(b, 0, 0x3400);  // d = 0.25
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>((j + 1) % 16 | ((15 - j) << 4));
  const std::vector<float> y = Dequant(DType::kQ4_0, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 0.25f * ((j + 1) % 16 - 8)) << j;
    EXPECT_EQ(y[j + 16], 0.25f * ((15 - j) - 8)) << j;
  }
}

TEST(QuantLayoutTest, Q8_0KnownBlock) {
  std::vector<uint8_t> b(34);
  PutU16(b, 0, 0x4000);  // d = 2
  for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(3 * j - 50));
  const std::vector<float> y = Dequant(DType::kQ8_0, b, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], 2.0f * (3 * j - 50)) << j;
}

// Q4_K: d, dmin, then 12 bytes of 6-bit scales/mins: bytes 0-3 hold sc0-3 (low 6 bits) and the
// top 2 bits of sc4-7; bytes 4-7 hold m0-3 and the top 2 bits of m4-7; bytes 8-11 hold the low
// nibbles of sc4-7 (low half) and m4-7 (high half). Chunk c of 32 bytes: low nibbles are elements
// 64c..64c+31 (sub-block 2c), high nibbles 64c+32..64c+63 (sub-block 2c+1).
TEST(QuantLayoutTest, Q4_KKnownBlock) {
  const int sc[8] = {1, 2, 3, 4, 17, 33, 50, 63};
  const int mn[8] = {0, 5, 10, 20, 16, 31, 47, 62};
  std::vector<uint8_t> b(144, 0);
  PutU16(b, 0, 0x3C00);  // d = 1
  PutU16(b, 2, 0x3800);  // dmin = 0.5
  uint8_t* s = b.data() + 4;
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    s[j + 4] = static_cast<uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6));
    s[j + 8] = static_cast<uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
  auto q_of = [](int e) { return (e * 7 + 3) % 16; };
  uint8_t* qs = b.data() + 16;
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      qs[32 * c + l] = static_cast<uint8_t>(q_of(64 * c + l) | (q_of(64 * c + 32 + l) << 4));
    }
  }
  const std::vector<float> y = Dequant(DType::kQ4_K, b, 256);
  for (int e = 0; e < 256; ++e) {
    const int j = e / 32;
    EXPECT_EQ(y[e], 1.0f * sc[j] * q_of(e) - 0.5f * mn[j]) << e;
  }
}

// Q6_K: ql[128], qh[64], scales[16] (int8), d (f16, last). Element e: half h = e / 128,
// r = e % 128, k = r / 32, l = r % 32; low 4 bits in ql[64h + l + 32 (k % 2)] (low nibble for
// k < 2, high nibble for k >= 2), high 2 bits at bit 2k of qh[32h + l]; scale scales[e / 16].
TEST(QuantLayoutTest, Q6_KKnownBlock) {
  std::vector<uint8_t> b(210, 0);
  auto q_of = [](int e) { return (e * 37 + 11) % 64; };
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, r = e % 128, k = r / 32, l = r % 32;
    uint8_t& lo = b[64 * h + l + 32 * (k % 2)];
    lo |= static_cast<uint8_t>(k < 2 ? (q_of(e) & 15) : (q_of(e) & 15) << 4);
    b[128 + 32 * h + l] |= static_cast<uint8_t>((q_of(e) >> 4) << (2 * k));
  }
  for (int s = 0; s < 16; ++s) b[192 + s] = static_cast<uint8_t>(static_cast<int8_t>(s * 9 - 70));
  PutU16(b, 208, 0x3800);  // d = 0.5
  const std::vector<float> y = Dequant(DType::kQ6_K, b, 256);
  for (int e = 0; e < 256; ++e) {
    EXPECT_EQ(y[e], 0.5f * ((e / 16) * 9 - 70) * (q_of(e) - 32)) << e;
  }
}

TEST(QuantLayoutTest, FloatTypesKnownValues) {
  const uint16_t f16[4] = {0x3C00, 0xC000, 0x3555, 0x0001};  // 1, -2, ~1/3, smallest subnormal
  float out[4];
  DequantizeRow(DType::kF16, f16, 4, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_NEAR(out[2], 1.0f / 3.0f, 1e-4f);
  EXPECT_EQ(out[3], std::ldexp(1.0f, -24));
  const uint16_t bf16[3] = {0x3F80, 0xC040, 0x4049};  // 1, -3, ~3.14
  DequantizeRow(DType::kBF16, bf16, 3, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -3.0f);
  EXPECT_NEAR(out[2], 3.140625f, 1e-6f);
  // And the other way.
  const float x[3] = {1.0f, -3.0f, 0.5f};
  uint16_t h[3];
  QuantizeRow(DType::kBF16, x, 3, h);
  EXPECT_EQ(h[0], 0x3F80);
  EXPECT_EQ(h[1], 0xC040);
  QuantizeRow(DType::kF16, x, 3, h);
  EXPECT_EQ(h[0], 0x3C00);
  EXPECT_EQ(h[2], 0x3800);
}

// The reference quantizers pick the codes that the layouts above decode: Q4_1 of a block whose
// values lie exactly on the grid min + k d round-trips exactly.
TEST(QuantLayoutTest, Q4_1QuantizerHitsGrid) {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = -1.0f + 0.5f * ((j * 5) % 16);
  x[3] = -1.0f;  // make sure min and max are present
  x[4] = 6.5f;
  std::vector<uint8_t> b(20);
  QuantizeRow(DType::kQ4_1, x.data(), 32, b.data());
  EXPECT_EQ(b[0] | (b[1] << 8), 0x3800);    // d = 0.5
  EXPECT_EQ(b[2] | (b[3] << 8), 0xBC00);    // m = -1
  EXPECT_EQ(b[4 + 1] & 0xF, (5 % 16) * 1);  // element 1 -> q = 5, low nibble of byte 1
  EXPECT_EQ(Dequant(DType::kQ4_1, b, 32), x);
}

// Round-trip error bounds, per block, from each quantizer's rounding rule (plus the f16 rounding
// of the stored scales, relative 2^-11).
TEST(QuantRoundTripTest, ErrorWithinBoundPerType) {
  const int64_t n = 1024;
  for (uint32_t seed = 1; seed <= 3; ++seed) {
    std::vector<float> x = GaussianFloats(n, seed);
    x[5] = 4.0f;  // an outlier
    for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ4_0, DType::kQ4_1,
                    DType::kQ8_0, DType::kQ4_K, DType::kQ6_K}) {
      std::vector<uint8_t> bytes(static_cast<size_t>(DTypeRowBytes(t, n)));
      QuantizeRow(t, x.data(), n, bytes.data());
      const std::vector<float> y = Dequant(t, bytes, n);
      const int64_t bs = std::max<int64_t>(DTypeBlockSize(t), 1);
      for (int64_t b0 = 0; b0 < n; b0 += bs) {
        float amax = 0.0f, lo = 0.0f, hi = 0.0f;
        for (int64_t i = b0; i < b0 + bs; ++i) amax = std::max(amax, std::fabs(x[i]));
        // Q4_K sub-blocks: widest range over the 8 sub-blocks, with 0 included.
        float range_k = 0.0f;
        if (t == DType::kQ4_K) {
          for (int64_t s = b0; s < b0 + bs; s += 32) {
            lo = 0.0f;
            hi = x[s];
            for (int64_t i = s; i < s + 32; ++i) {
              lo = std::min(lo, x[i]);
              hi = std::max(hi, x[i]);
            }
            range_k = std::max(range_k, hi - lo);
          }
        }
        if (t == DType::kQ4_1) {
          lo = *std::min_element(x.begin() + b0, x.begin() + b0 + bs);
          hi = *std::max_element(x.begin() + b0, x.begin() + b0 + bs);
        }
        float bound = 0.0f;
        switch (t) {
          case DType::kF32:
            bound = 0.0f;
            break;
          case DType::kF16:
            bound = amax * std::ldexp(1.0f, -11);
            break;
          case DType::kBF16:
            bound = amax * std::ldexp(1.0f, -8);
            break;
          case DType::kQ8_0:  // d = amax / 127, error <= d / 2
            bound = amax / 127.0f * 0.5f + amax * 1e-3f;
            break;
          case DType::kQ4_0:  // the far end (+8 d) clamps to 7 d: error <= d = amax / 8
            bound = amax / 8.0f + amax * 1e-3f;
            break;
          case DType::kQ4_1:  // d = range / 15, error <= d / 2
            bound = (hi - lo) / 15.0f * 0.5f + (std::fabs(lo) + std::fabs(hi)) * 1e-3f;
            break;
          case DType::kQ4_K:  // step <= (range + dmin) / 15 + d, with dmin, d <= range / 63
            bound =
                0.5f * (range_k * (1.0f + 1.0f / 63) / 15.0f + range_k / 63.0f / 15.0f * 1.02f) +
                amax * 2e-3f;
            break;
          case DType::kQ6_K:  // step <= amax_sub / 32 + d; the far end clamps: error <= step
            bound = amax / 32.0f * (1.0f + 1.0f / 127) + amax * 2e-3f;
            break;
        }
        for (int64_t i = b0; i < b0 + bs; ++i) {
          ASSERT_LE(std::fabs(y[i] - x[i]), bound)
              << DTypeName(t) << " seed " << seed << " element " << i << " x " << x[i];
        }
      }
    }
  }
}

// Typical accuracy (RMS error relative to RMS of x) on Gaussian data, so a quantizer that is
// within its worst-case bound but poor on average is caught.
TEST(QuantRoundTripTest, RmsErrorTypical) {
  const int64_t n = 4096;
  const std::vector<float> x = GaussianFloats(n, 7);
  struct Case {
    DType t;
    double max_rel_rms;
  };
  // 4-bit: uniform-quantizer noise of step / sqrt(12) with step ~ 6 sigma / 15 gives ~0.12.
  for (Case c : {Case{DType::kQ4_0, 0.15}, Case{DType::kQ4_1, 0.12}, Case{DType::kQ4_K, 0.12},
                 Case{DType::kQ6_K, 0.035}, Case{DType::kQ8_0, 0.01}, Case{DType::kF16, 5e-4}}) {
    std::vector<uint8_t> bytes(static_cast<size_t>(DTypeRowBytes(c.t, n)));
    QuantizeRow(c.t, x.data(), n, bytes.data());
    const std::vector<float> y = Dequant(c.t, bytes, n);
    double se = 0.0, sx = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      se += (y[i] - x[i]) * (y[i] - x[i]);
      sx += x[i] * x[i];
    }
    EXPECT_LT(std::sqrt(se / sx), c.max_rel_rms) << DTypeName(c.t);
  }
}

TEST(QuantRoundTripTest, ZeroBlocksStayZero) {
  const std::vector<float> x(512, 0.0f);
  for (DType t : {DType::kQ4_0, DType::kQ4_1, DType::kQ8_0, DType::kQ4_K, DType::kQ6_K}) {
    std::vector<uint8_t> bytes(static_cast<size_t>(DTypeRowBytes(t, 512)));
    QuantizeRow(t, x.data(), 512, bytes.data());
    for (float v : Dequant(t, bytes, 512)) ASSERT_EQ(v, 0.0f) << DTypeName(t);
  }
}

class GetRowsTest : public IsaTest {};

TEST_P(GetRowsTest, MatchesDequantizeRow) {
  const int64_t rows = 10, cols = 512;
  for (DType t : {DType::kF32, DType::kF16, DType::kQ4_1, DType::kQ8_0, DType::kQ6_K}) {
    const std::vector<float> src = RandomFloats(rows * cols, 3);
    const int64_t row_bytes = DTypeRowBytes(t, cols);
    std::vector<uint8_t> data(static_cast<size_t>(rows * row_bytes));
    for (int64_t r = 0; r < rows; ++r) {
      QuantizeRow(t, src.data() + r * cols, cols, data.data() + r * row_bytes);
    }
    const WeightView w{t, data.data(), rows, cols, row_bytes};
    const int32_t ids[4] = {9, 0, 9, 4};
    std::vector<float> out(4 * cols), expect(cols);
    GetRows(w, ids, 4, out.data());
    for (int i = 0; i < 4; ++i) {
      DequantizeRow(t, data.data() + ids[i] * row_bytes, cols, expect.data());
      for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(out[i * cols + c], expect[c]) << DTypeName(t);
    }
  }
}
KVASIR_INSTANTIATE_ISA_TEST(GetRowsTest);

class HalfConvertTest : public IsaTest {};

TEST_P(HalfConvertTest, MatchesScalarConversions) {
  std::vector<float> x = RandomFloats(1000, 11, -70000.0f, 70000.0f);
  const std::vector<float> small = RandomFloats(200, 12, -1e-4f, 1e-4f);  // f16 subnormals
  x.insert(x.end(), small.begin(), small.end());
  for (float v : {0.0f, -0.0f, 65504.0f, 65520.0f, 1e10f, -1e10f, 5.9604645e-8f, 2.9802322e-8f,
                  INFINITY, -INFINITY}) {
    x.push_back(v);
  }
  x.push_back(0.5f);  // length 1211: a tail after the 8- and 16-wide loops
  std::vector<uint16_t> h(x.size());
  ConvertF32ToF16(x.data(), static_cast<int64_t>(x.size()), h.data());
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(h[i], Fp32ToFp16(x[i])) << x[i];
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  // All 65536 values, then counts with 8-, 16- and scalar tails from an odd start.
  for (int64_t count : {65536, 1211, 27, 5}) {
    const int64_t start = count == 65536 ? 0 : 31;
    std::vector<float> back(static_cast<size_t>(count));
    ConvertF16ToF32(all.data() + start, count, back.data());
    for (int64_t i = 0; i < count; ++i) {
      const float ref = Fp16ToFp32(all[static_cast<size_t>(start + i)]);
      if (std::isnan(ref)) {
        ASSERT_TRUE(std::isnan(back[i])) << start + i;
      } else {
        ASSERT_EQ(Float2Bits(back[i]), Float2Bits(ref)) << start + i;
      }
    }
  }
}
KVASIR_INSTANTIATE_ISA_TEST(HalfConvertTest);

// The active level's activation quantizer (MatMul's first step) writes exactly the bytes of the
// scalar one, in both formats: q, d, and s or the sums per 16 elements. Includes a zero block, an
// outlier, and values that land exactly halfway between integers (id = 1 where amax = 127), which
// both round to even.
class ActQuantTest : public IsaTest {};

TEST_P(ActQuantTest, MatchesScalarBytes) {
  const int64_t n = 3, cols = 1024;
  std::vector<float> x = GaussianFloats(static_cast<size_t>(n * cols), 5, 2.0f);
  std::fill(x.begin() + 256, x.begin() + 512, 0.0f);
  x[700] = 50.0f;
  const float halves[] = {127.0f, 2.5f, 3.5f, -0.5f, -1.5f, 0.5f, 126.5f, -126.5f};
  for (int64_t t = 0; t < n; ++t) {
    std::copy(std::begin(halves), std::end(halves), x.begin() + t * cols + 768);
  }
  for (ActFormat format : {ActFormat::kAct32, ActFormat::kAct256}) {
    SCOPED_TRACE(format == ActFormat::kAct32 ? "blocks of 32" : "blocks of 256");
    std::vector<uint8_t> mem_got(ActBytes(format, n, cols)), mem_want(ActBytes(format, n, cols));
    const QuantizedActs got = CarveActs(format, n, cols, mem_got.data());
    const QuantizedActs want = CarveActs(format, n, cols, mem_want.data());
    QuantizedActs got_rows = got, want_rows = want;
    for (int64_t t = 0; t < n; ++t) {
      Kernels().quantize_act_row(x.data() + t * cols, got_rows, t);
      scalar::QuantizeActRow(x.data() + t * cols, want_rows, t);
    }
    for (int64_t i = 0; i < n * cols; ++i) ASSERT_EQ(got.qs[i], want.qs[i]) << "q " << i;
    for (int64_t i = 0; i < n * got.blocks; ++i) {
      ASSERT_EQ(got.d[i], want.d[i]) << "d " << i;
      if (format == ActFormat::kAct32) {
        ASSERT_EQ(got.s[i], want.s[i]) << "s " << i;
      } else {
        for (int k = 0; k < 16; ++k) ASSERT_EQ(got.bsums[16 * i + k], want.bsums[16 * i + k]);
      }
    }
    EXPECT_EQ(want.qs[768], 127);
    EXPECT_EQ(want.qs[769], 2);  // 2.5 to even
    EXPECT_EQ(want.qs[770], 4);  // 3.5 to even
  }
}
KVASIR_INSTANTIATE_ISA_TEST(ActQuantTest);

}  // namespace
}  // namespace kvasir::kernels::cpu
