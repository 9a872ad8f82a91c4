#include "worker/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine.h"

namespace kvasir::worker {
namespace {

TEST(SamplerTest, GreedyTakesTheArgMaxLowestIdOnTies) {
  Sampler s(SamplingParams::Greedy());
  std::vector<float> logits = {0.1f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.Sample(logits, {}), 1);
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.7f);
  SamplingParams p;
  p.temperature = 1.5f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0;
  auto draw = [&](uint64_t seed) {
    p.seed = seed;
    Sampler s(p);
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.Sample(logits, {}));
    return out;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
}

TEST(SamplerTest, TopKOneIsGreedy) {
  std::vector<float> logits = {1, 5, 2, 4};
  SamplingParams p;
  p.temperature = 2;
  p.top_k = 1;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    p.seed = seed;
    Sampler s(p);
    EXPECT_EQ(s.Sample(logits, {}), 1);
  }
}

TEST(SamplerTest, FiltersKeepOnlyAllowedTokens) {
  // Probabilities (temperature 1): softmax of log(p).
  std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplingParams p;
  p.temperature = 1;
  p.top_k = 0;
  p.min_p = 0;
  p.top_p = 0.7f;  // 0.5 + 0.3 reaches 0.7: tokens 0 and 1
  std::map<int, int> counts;
  for (uint64_t seed = 0; seed < 400; ++seed) {
    p.seed = seed;
    Sampler s(p);
    counts[s.Sample(logits, {})]++;
  }
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[0], counts[1]);
  p.top_p = 1;
  p.min_p = 0.5f;  // keep p >= 0.25: tokens 0 and 1
  counts.clear();
  for (uint64_t seed = 0; seed < 400; ++seed) {
    p.seed = seed;
    Sampler s(p);
    counts[s.Sample(logits, {})]++;
  }
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_EQ(counts.count(2), 0u);
}

TEST(SamplerTest, DrawsFollowTheDistribution) {
  std::vector<float> logits = {std::log(0.6f), std::log(0.3f), std::log(0.1f)};
  SamplingParams p;
  p.temperature = 1;
  p.top_k = 0;
  p.top_p = 1;
  p.min_p = 0;
  p.seed = 42;
  Sampler s(p);
  std::vector<int> counts(3);
  const int n = 20000;
  for (int i = 0; i < n; ++i) counts[s.Sample(logits, {})]++;
  EXPECT_NEAR(counts[0] / double(n), 0.6, 0.02);
  EXPECT_NEAR(counts[1] / double(n), 0.3, 0.02);
  EXPECT_NEAR(counts[2] / double(n), 0.1, 0.02);
}

TEST(SamplerTest, RepetitionPenaltyDemotesSeenTokens) {
  std::vector<float> logits = {2.0f, 1.9f, -1.0f};
  SamplingParams p = SamplingParams::Greedy();
  p.repetition_penalty = 1.2f;
  Sampler s(p);
  std::vector<int32_t> history = {0};
  EXPECT_EQ(s.Sample(logits, history), 1);  // 2.0 / 1.2 < 1.9
  EXPECT_EQ(s.Sample(logits, {}), 0);
}

TEST(SamplerTest, ValidateRejectsOutOfRange) {
  SamplingParams p;
  EXPECT_TRUE(p.Validate().ok());
  p.temperature = -1;
  EXPECT_FALSE(p.Validate().ok());
  p = SamplingParams();
  p.top_p = 0;
  EXPECT_FALSE(p.Validate().ok());
  p = SamplingParams();
  p.min_p = 2;
  EXPECT_FALSE(p.Validate().ok());
  p = SamplingParams();
  p.top_k = -3;
  EXPECT_FALSE(p.Validate().ok());
}

TEST(StopStringFilterTest, HoldsBackPossiblePrefixesAndCutsAtTheStop) {
  StopStringFilter f({"END", "\n\n"});
  std::string out;
  out += f.Push("Hello E");
  EXPECT_EQ(out, "Hello ") << "'E' may start END";
  out += f.Push("ND of story");
  EXPECT_TRUE(f.stopped());
  EXPECT_EQ(out, "Hello ");
  EXPECT_EQ(f.Push("more"), "");
}

TEST(StopStringFilterTest, ReleasesHeldTextWhenItIsNotAStop) {
  StopStringFilter f({"STOP"});
  std::string out = f.Push("ST");
  EXPECT_EQ(out, "");
  out += f.Push("AR");
  EXPECT_EQ(out, "STAR");
  out += f.Push("S");
  EXPECT_EQ(out, "STAR");
  out += f.Flush();
  EXPECT_EQ(out, "STARS");
  EXPECT_FALSE(f.stopped());
}

}  // namespace
}  // namespace kvasir::worker
