// `h2o` through the engine: on stories260K (and SmolLM2 when installed) generation runs, the KV
// held is exactly `budget` slots per (layer, KV head) once full, and a budget that covers the
// whole sequence gives `full`'s greedy ids and logits bit for bit.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/model_files.h"
#include "tests/testing/paths.h"
#include "worker/engine.h"

namespace kvasir::worker {
namespace {

struct GreedyRun {
  GenerateResult result;
  std::vector<std::vector<float>> logits;  // per sampling step
};

GreedyRun Greedy(Engine& engine, const std::vector<int32_t>& prompt, const std::string& policy,
                 int32_t max_tokens, int32_t prefill_chunk = 512) {
  GenerateRequest req;
  req.prompt = prompt;
  req.sampling = SamplingParams::Greedy();
  req.max_tokens = max_tokens;
  req.ignore_eos = true;
  req.kv_policy = policy;
  req.prefill_chunk = prefill_chunk;
  GreedyRun run;
  auto r = Generate(engine, req, nullptr, [&](int, std::span<const float> logits) {
    run.logits.emplace_back(logits.begin(), logits.end());
  });
  EXPECT_TRUE(r.ok()) << policy << ": " << r.status();
  if (r.ok()) run.result = std::move(*r);
  return run;
}

std::vector<int32_t> StoryPrompt(const Engine& engine, int repeats) {
  std::string text;
  for (int i = 0; i < repeats; ++i) {
    text +=
        "Once upon a time, there was a little girl named Lily. She loved to play outside "
        "in the park with her dog. ";
  }
  return engine.tokenizer().Encode(text, true, false);
}

class H2oE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    EngineOptions o;
    o.model = testing::SharedPath("models/stories260K.gguf");
    o.prefault = false;
    o.num_threads = 2;
    auto e = Engine::Load(o);
    ASSERT_TRUE(e.ok()) << e.status();
    stories_ = e->release();
  }
  static void TearDownTestSuite() {
    delete stories_;
    stories_ = nullptr;
  }
  static Engine* stories_;
};
Engine* H2oE2eTest::stories_ = nullptr;

TEST_F(H2oE2eTest, StoriesHoldsTheBudget) {
  const model::ModelConfig& c = stories_->config();
  const std::vector<int32_t> prompt = StoryPrompt(*stories_, 4);
  ASSERT_GT(prompt.size(), 60u);
  for (int32_t chunk : {512, 13}) {
    const GreedyRun run = Greedy(*stories_, prompt, "h2o:budget=24,recent=4", 40, chunk);
    const kvcache::KvUsage& kv = run.result.kv;
    ASSERT_EQ(run.result.ids.size(), 40u);
    EXPECT_EQ(kv.tokens, static_cast<int64_t>(prompt.size()) + 39);
    EXPECT_EQ(kv.slots, int64_t{2} * c.n_layer * c.n_head_kv * 24);
    EXPECT_DOUBLE_EQ(kv.ratio(), 24.0 / static_cast<double>(kv.tokens));
    EXPECT_EQ(run.result.kv_policy, "h2o:budget=24,recent=4");
  }
  // The prefill chunking does not change the outcome.
  EXPECT_EQ(Greedy(*stories_, prompt, "h2o:budget=24,recent=4", 20, 512).result.ids,
            Greedy(*stories_, prompt, "h2o:budget=24,recent=4", 20, 7).result.ids);
}

TEST_F(H2oE2eTest, StoriesBudgetCoveringTheSequenceEqualsFull) {
  const std::vector<int32_t> prompt = StoryPrompt(*stories_, 3);
  const GreedyRun full = Greedy(*stories_, prompt, "full", 48);
  const GreedyRun h = Greedy(*stories_, prompt, "h2o:budget=400,recent=32", 48);
  EXPECT_EQ(h.result.ids, full.result.ids);
  EXPECT_EQ(h.logits, full.logits);
  EXPECT_EQ(h.result.kv.slots, full.result.kv.slots);
  const GreedyRun small = Greedy(*stories_, prompt, "h2o:budget=8,recent=2", 48);
  EXPECT_NE(small.logits, full.logits);
}

TEST(H2oE2eDefaultModelTest, HoldsTheBudgetAndCoversLikeFull) {
  if (!model::ResolveModelPath("default").ok()) {
    GTEST_SKIP() << "the default model (SmolLM2-135M-Instruct) is not installed";
  }
  EngineOptions o;
  o.model = "default";
  o.prefault = false;
  o.num_threads = 2;
  auto e = Engine::Load(o);
  ASSERT_TRUE(e.ok()) << e.status();
  Engine& engine = **e;
  const model::ModelConfig& c = engine.config();
  std::string text;
  for (int i = 0; i < 6; ++i) {
    text += "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. ";
  }
  const std::vector<int32_t> prompt = engine.tokenizer().Encode(text, true, false);
  ASSERT_GT(prompt.size(), 80u);
  const GreedyRun h = Greedy(engine, prompt, "h2o:budget=64,recent=16", 6);
  ASSERT_EQ(h.result.ids.size(), 6u);
  EXPECT_EQ(h.result.kv.slots, int64_t{2} * c.n_layer * c.n_head_kv * 64);
  EXPECT_DOUBLE_EQ(h.result.kv.ratio(), 64.0 / static_cast<double>(h.result.kv.tokens));
  const GreedyRun full = Greedy(engine, prompt, "full", 6);
  const GreedyRun covering = Greedy(engine, prompt, "h2o:budget=256,recent=32", 6);
  EXPECT_EQ(covering.result.ids, full.result.ids);
  EXPECT_EQ(covering.logits, full.logits);
}

}  // namespace
}  // namespace kvasir::worker
