#include <cmath>
#include <cstring>

#include "common/base/half.h"
#include "common/hash.h"
#include "common/units.h"
#include "gtest/gtest.h"

namespace kvasir {
namespace {

TEST(UnitsTest, ParsesBinaryAndDecimalSizes) {
  EXPECT_EQ(*ParseByteSize("4GiB"), 4LL << 30);
  EXPECT_EQ(*ParseByteSize("512 MiB"), 512LL << 20);
  EXPECT_EQ(*ParseByteSize("1.5GB"), 1500000000LL);
  EXPECT_EQ(*ParseByteSize("1048576"), 1048576);
  EXPECT_EQ(*ParseByteSize("2k"), 2048);
  EXPECT_FALSE(ParseByteSize("").ok());
  EXPECT_FALSE(ParseByteSize("GiB").ok());
  EXPECT_FALSE(ParseByteSize("4 parsecs").ok());
  EXPECT_FALSE(ParseByteSize("1e30").ok());
}

TEST(HalfTest, Fp16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = Fp16ToFp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(Fp32ToFp16(f), h) << h;
  }
  EXPECT_EQ(Fp16ToFp32(0x3c00), 1.0f);
  EXPECT_EQ(Fp16ToFp32(0xc000), -2.0f);
  EXPECT_EQ(Fp32ToFp16(65504.0f), 0x7bff);
  EXPECT_EQ(Fp32ToFp16(1e6f), 0x7c00);  // overflow to infinity
}

TEST(HalfTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(Fp32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bf16ToFp32(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between two bf16 values: ties go to the even mantissa (1.0).
  EXPECT_EQ(Fp32ToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(Fp32ToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(Bf16ToFp32(Fp32ToBf16(std::nanf("")))));
}

TEST(HashTest, Xxh3IsStableAcrossRuns) {
  // Published XXH3-64 value of the empty input with seed 0.
  EXPECT_EQ(Xxh3("", 0), 0x2D06800538D394C2ULL);
  EXPECT_NE(Xxh3("a"), Xxh3("b"));
  EXPECT_NE(Xxh3("a", 1), Xxh3("a", 2));
}

}  // namespace
}  // namespace kvasir
