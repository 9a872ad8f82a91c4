// Helpers of the kernel tests: seeded random inputs, a parameterization over the ISA levels this
// CPU supports (each test runs once per level through SetIsa), and tolerance helpers.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"

namespace kvasir::kernels::cpu::testing {

inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

inline std::vector<float> GaussianFloats(size_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// Base of tests parameterized by ISA name: SetUp selects it, TearDown restores the level that
// was active before (KVASIR_CPU_ISA's choice, or the best one).
class IsaTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    previous_ = ActiveIsa();
    ASSERT_TRUE(SetIsa(GetParam())) << GetParam();
  }
  void TearDown() override { SetIsa(previous_); }

 private:
  std::string previous_;
};

inline std::string IsaParamName(const ::testing::TestParamInfo<std::string>& info) {
  return info.param;
}

#define KVASIR_INSTANTIATE_ISA_TEST(Suite)                                   \
  INSTANTIATE_TEST_SUITE_P(Isa, Suite, ::testing::ValuesIn(SupportedIsas()), \
                           ::kvasir::kernels::cpu::testing::IsaParamName)

}  // namespace kvasir::kernels::cpu::testing
