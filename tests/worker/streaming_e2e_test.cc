// `streaming` through the engine: on stories260K (and SmolLM2 when installed) generation runs,
// the KV held is exactly sink + window slots per (layer, KV head) once full, and a window that
// covers the whole sequence gives `full`'s greedy ids and logits bit for bit.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/model_files.h"
#include "tests/worker/e2e_util.h"
#include "worker/engine.h"

namespace kvasir::worker {
namespace {

using StreamingE2eTest = e2e::StoriesSuite<>;

TEST_F(StreamingE2eTest, StoriesHoldsSinkPlusWindowSlots) {
  const model::ModelConfig& c = engine_->config();
  const std::vector<int32_t> prompt = e2e::StoryPrompt(*engine_, 4);
  ASSERT_GT(prompt.size(), 60u);
  for (int32_t chunk : {512, 13}) {
    const e2e::GreedyRun run =
        e2e::Greedy(*engine_, prompt, "streaming:sink=4,window=28", 40, chunk);
    const kvcache::KvUsage& kv = run.result.kv;
    ASSERT_EQ(run.result.ids.size(), 40u);
    EXPECT_EQ(kv.tokens, static_cast<int64_t>(prompt.size()) + 39);
    e2e::ExpectUniformSlots(c, run, 32);
    EXPECT_EQ(run.result.kv_policy, "streaming:sink=4,window=28");
  }
}

TEST_F(StreamingE2eTest, StoriesWindowCoveringTheSequenceEqualsFull) {
  const std::vector<int32_t> prompt = e2e::StoryPrompt(*engine_, 3);
  const e2e::GreedyRun full = e2e::Greedy(*engine_, prompt, "full", 48);
  for (const char* spec : {"streaming:sink=4,window=400", "streaming:sink=0,window=512"}) {
    const e2e::GreedyRun s = e2e::Greedy(*engine_, prompt, spec, 48);
    EXPECT_EQ(s.result.ids, full.result.ids) << spec;
    EXPECT_EQ(s.logits, full.logits) << spec;
    EXPECT_EQ(s.result.kv.slots, full.result.kv.slots) << spec;
  }
  // A short window changes what the model sees (the outputs are not `full`'s any more).
  const e2e::GreedyRun small = e2e::Greedy(*engine_, prompt, "streaming:sink=2,window=6", 48);
  EXPECT_NE(small.logits, full.logits);
}

using StreamingE2eDefaultModelTest = e2e::DefaultModelSuite<>;

TEST_F(StreamingE2eDefaultModelTest, HoldsSinkPlusWindowAndCoversLikeFull) {
  Engine& engine = *engine_;
  const model::ModelConfig& c = engine.config();
  const std::vector<int32_t> prompt = e2e::FoxPrompt(engine, 6);
  ASSERT_GT(prompt.size(), 80u);
  const e2e::GreedyRun s = e2e::Greedy(engine, prompt, "streaming:sink=4,window=60", 6);
  ASSERT_EQ(s.result.ids.size(), 6u);
  e2e::ExpectUniformSlots(c, s, 64);
  e2e::ExpectCoversLikeFull(engine, prompt, "streaming:sink=4,window=256", 6);
}

}  // namespace
}  // namespace kvasir::worker
