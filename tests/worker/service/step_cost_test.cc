// StepCostModel: recovers the weights of a linear step cost from noisy observations, follows a
// change of the machine, and sizes prefill so that a step stays within a target. The default
// target's calibration measures a step and leaves the cache as it was.
#include "worker/service/step_cost.h"

#include <algorithm>
#include <random>

#include "gtest/gtest.h"
#include "tests/testing/paths.h"

namespace kvasir::worker::service {
namespace {

double TrueCost(const StepCostModel::Features& f, double scale = 1.0) {
  return scale * (0.010 + 0.0008 * f.decodes + 0.004 * f.prefill_tokens + 0.002 * f.context_k);
}

TEST(StepCostModelTest, LearnsALinearCostAndSizesPrefill) {
  StepCostModel m;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> decodes(0, 16), prefill(0, 256), context(0, 8000);
  std::normal_distribution<double> noise(1.0, 0.02);
  StepCostModel::Features f;
  // Not ready: a small chunk beside the decodes, not a guess; no target: no cut.
  EXPECT_EQ(m.PrefillBudget(f, 0.1, 16, 256), StepCostModel::kColdPrefillTokens);
  EXPECT_EQ(m.PrefillBudget(f, 0.1, 64, 256), 64);
  EXPECT_EQ(m.PrefillBudget(f, 0.1, 16, 20), 20);
  EXPECT_EQ(m.PrefillBudget(f, 0.0, 16, 256), 256);
  for (int i = 0; i < 400; ++i) {
    f = {static_cast<double>(decodes(rng)), static_cast<double>(prefill(rng)),
         context(rng) / 1000.0};
    m.Observe(f, TrueCost(f) * noise(rng));
  }
  ASSERT_TRUE(m.ready());
  const StepCostModel::Features probe{8, 100, 3.0};
  EXPECT_NEAR(m.Predict(probe), TrueCost(probe), 0.05 * TrueCost(probe));
  // 8 decodes attending to 3k tokens cost 0.0224 s; a 0.1 s target leaves ~19 prefill tokens.
  const int64_t budget = m.PrefillBudget({8, 0, 3.0}, 0.1, 4, 256);
  EXPECT_GE(budget, 17);
  EXPECT_LE(budget, 21);
  // A target below the decodes alone: the minimum, so that prefill still advances.
  EXPECT_EQ(m.PrefillBudget({8, 0, 3.0}, 0.01, 4, 256), 4);
  // A generous target: the cap.
  EXPECT_EQ(m.PrefillBudget({8, 0, 3.0}, 10.0, 4, 256), 256);
}

TEST(StepCostModelTest, FollowsTheMachineWhenItSlowsDown) {
  StepCostModel m;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> decodes(0, 16), prefill(0, 256);
  auto observe = [&](double scale, int n) {
    for (int i = 0; i < n; ++i) {
      StepCostModel::Features f{static_cast<double>(decodes(rng)),
                                static_cast<double>(prefill(rng)), 1.0};
      m.Observe(f, TrueCost(f, scale));
    }
  };
  observe(1.0, 200);
  const StepCostModel::Features probe{4, 64, 1.0};
  EXPECT_NEAR(m.Predict(probe), TrueCost(probe), 0.02 * TrueCost(probe));
  observe(2.0, 200);  // twice as slow (another process took a core)
  EXPECT_NEAR(m.Predict(probe), TrueCost(probe, 2.0), 0.05 * TrueCost(probe, 2.0));
}

TEST(StepCostModelTest, SizesStepsWithAMarginForTheModelsError) {
  // Steps that vary by +-20 % around a linear cost. Sized to the fit alone, about half of them
  // would overrun the target; with the margin (the 90th percentile of observed / predicted time)
  // about a tenth do.
  StepCostModel m;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> decodes(1, 16), prefill(1, 256);
  std::uniform_real_distribution<double> noise(0.8, 1.2);
  EXPECT_EQ(m.margin(), 1.0);
  for (int i = 0; i < 200; ++i) {
    const StepCostModel::Features f{static_cast<double>(decodes(rng)),
                                    static_cast<double>(prefill(rng)), 2.0};
    m.Observe(f, TrueCost(f) * noise(rng));
  }
  ASSERT_TRUE(m.ready());
  EXPECT_GT(m.margin(), 1.08);
  EXPECT_LT(m.margin(), 1.25);
  const int steps = 400;
  const double target = 0.2;
  int over = 0;
  for (int i = 0; i < steps; ++i) {
    StepCostModel::Features f{static_cast<double>(decodes(rng)), 0, 2.0};
    f.prefill_tokens = static_cast<double>(m.PrefillBudget(f, target, 1, 4096));
    ASSERT_GT(f.prefill_tokens, 20);  // the decodes take at most 0.027 s of the 0.2 s
    const double took = TrueCost(f) * noise(rng);
    over += took > target ? 1 : 0;
    m.Observe(f, took);
  }
  EXPECT_LT(over, steps / 5);
  // Steps without prefill or decodes were not sized: they do not move the margin.
  const double margin = m.margin();
  for (int i = 0; i < 100; ++i) m.Observe({8, 0, 2.0}, 3 * TrueCost({8, 0, 2.0}));
  EXPECT_EQ(m.margin(), margin);
}

TEST(StepCostModelTest, CalibrationMeasuresABusyDecodeStepAndLeavesTheCache) {
  // 8 sequences at 256 tokens of context (7 of them sharing the first one's pages).
  EngineOptions o;
  o.model = testing::SharedPath("models/stories260K.gguf");
  o.num_threads = 1;
  o.prefault = false;
  auto engine = Engine::Load(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  kvcache::KvCache& cache = (*engine)->cache();
  const int32_t free_before = cache.pool().pages_free();
  double step = 0;
  int64_t context = 0;
  auto target = CalibrateTargetItl(**engine, 8, &step, &context);
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_GT(step, 0);
  EXPECT_EQ(context, kCalibrationContext);  // stories260K computes it in milliseconds
  const double expected = std::clamp(kDefaultTargetFactor * step, 0.020, 2.0);
  EXPECT_NEAR(absl::ToDoubleSeconds(*target), expected, 0.0006);
  EXPECT_EQ(cache.num_sequences(), 0u);
  EXPECT_EQ(cache.pool().pages_free(), free_before);
  // A cache without room for the sequences: an error, and still nothing left behind.
  EngineOptions tiny = o;
  tiny.kv_cache_bytes = 1 << 20;
  auto small = Engine::Load(tiny);
  ASSERT_TRUE(small.ok()) << small.status();
  auto refused = CalibrateTargetItl(**small, 4096);
  EXPECT_FALSE(refused.ok());
  EXPECT_EQ((*small)->cache().num_sequences(), 0u);
}

}  // namespace
}  // namespace kvasir::worker::service
