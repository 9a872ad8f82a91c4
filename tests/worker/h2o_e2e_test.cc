// `h2o` through the engine: on stories260K (and SmolLM2 when installed) generation runs, the KV
// held is exactly `budget` slots per (layer, KV head) once full, and a budget that covers the
// whole sequence gives `full`'s greedy ids and logits bit for bit.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/model_files.h"
#include "tests/worker/e2e_util.h"
#include "worker/engine.h"

namespace kvasir::worker {
namespace {

using H2oE2eTest = e2e::StoriesSuite<>;

TEST_F(H2oE2eTest, StoriesHoldsTheBudget) {
  const model::ModelConfig& c = engine_->config();
  const std::vector<int32_t> prompt = e2e::StoryPrompt(*engine_, 4);
  ASSERT_GT(prompt.size(), 60u);
  for (int32_t chunk : {512, 13}) {
    const e2e::GreedyRun run = e2e::Greedy(*engine_, prompt, "h2o:budget=24,recent=4", 40, chunk);
    const kvcache::KvUsage& kv = run.result.kv;
    ASSERT_EQ(run.result.ids.size(), 40u);
    EXPECT_EQ(kv.tokens, static_cast<int64_t>(prompt.size()) + 39);
    e2e::ExpectUniformSlots(c, run, 24);
    EXPECT_EQ(run.result.kv_policy, "h2o:budget=24,recent=4");
  }
  // The prefill chunking does not change the outcome.
  EXPECT_EQ(e2e::Greedy(*engine_, prompt, "h2o:budget=24,recent=4", 20, 512).result.ids,
            e2e::Greedy(*engine_, prompt, "h2o:budget=24,recent=4", 20, 7).result.ids);
}

TEST_F(H2oE2eTest, StoriesBudgetCoveringTheSequenceEqualsFull) {
  const std::vector<int32_t> prompt = e2e::StoryPrompt(*engine_, 3);
  const e2e::GreedyRun full = e2e::Greedy(*engine_, prompt, "full", 48);
  const e2e::GreedyRun h = e2e::Greedy(*engine_, prompt, "h2o:budget=400,recent=32", 48);
  EXPECT_EQ(h.result.ids, full.result.ids);
  EXPECT_EQ(h.logits, full.logits);
  EXPECT_EQ(h.result.kv.slots, full.result.kv.slots);
  const e2e::GreedyRun small = e2e::Greedy(*engine_, prompt, "h2o:budget=8,recent=2", 48);
  EXPECT_NE(small.logits, full.logits);
}

using H2oE2eDefaultModelTest = e2e::DefaultModelSuite<>;

TEST_F(H2oE2eDefaultModelTest, HoldsTheBudgetAndCoversLikeFull) {
  Engine& engine = *engine_;
  const model::ModelConfig& c = engine.config();
  const std::vector<int32_t> prompt = e2e::FoxPrompt(engine, 6);
  ASSERT_GT(prompt.size(), 80u);
  const e2e::GreedyRun h = e2e::Greedy(engine, prompt, "h2o:budget=64,recent=16", 6);
  ASSERT_EQ(h.result.ids.size(), 6u);
  e2e::ExpectUniformSlots(c, h, 64);
  e2e::ExpectCoversLikeFull(engine, prompt, "h2o:budget=256,recent=32", 6);
}

}  // namespace
}  // namespace kvasir::worker
