// `streaming` through the engine: on stories260K (and SmolLM2 when installed) generation runs,
// the KV held is exactly sink + window slots per (layer, KV head) once full, and a window that
// covers the whole sequence gives `full`'s greedy ids and logits bit for bit.
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

class StreamingE2eTest : public ::testing::Test {
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
Engine* StreamingE2eTest::stories_ = nullptr;

TEST_F(StreamingE2eTest, StoriesHoldsSinkPlusWindowSlots) {
  const model::ModelConfig& c = stories_->config();
  const std::vector<int32_t> prompt = StoryPrompt(*stories_, 4);
  ASSERT_GT(prompt.size(), 60u);
  for (int32_t chunk : {512, 13}) {
    const GreedyRun run = Greedy(*stories_, prompt, "streaming:sink=4,window=28", 40, chunk);
    const kvcache::KvUsage& kv = run.result.kv;
    ASSERT_EQ(run.result.ids.size(), 40u);
    EXPECT_EQ(kv.tokens, static_cast<int64_t>(prompt.size()) + 39);
    EXPECT_EQ(kv.slots, int64_t{2} * c.n_layer * c.n_head_kv * 32);
    EXPECT_DOUBLE_EQ(kv.ratio(), 32.0 / static_cast<double>(kv.tokens));
    EXPECT_EQ(run.result.kv_policy, "streaming:sink=4,window=28");
  }
}

TEST_F(StreamingE2eTest, StoriesWindowCoveringTheSequenceEqualsFull) {
  const std::vector<int32_t> prompt = StoryPrompt(*stories_, 3);
  const GreedyRun full = Greedy(*stories_, prompt, "full", 48);
  for (const char* spec : {"streaming:sink=4,window=400", "streaming:sink=0,window=512"}) {
    const GreedyRun s = Greedy(*stories_, prompt, spec, 48);
    EXPECT_EQ(s.result.ids, full.result.ids) << spec;
    EXPECT_EQ(s.logits, full.logits) << spec;
    EXPECT_EQ(s.result.kv.slots, full.result.kv.slots) << spec;
  }
  // A short window changes what the model sees (the outputs are not `full`'s any more).
  const GreedyRun small = Greedy(*stories_, prompt, "streaming:sink=2,window=6", 48);
  EXPECT_NE(small.logits, full.logits);
}

TEST(StreamingE2eDefaultModelTest, HoldsSinkPlusWindowAndCoversLikeFull) {
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
  const GreedyRun s = Greedy(engine, prompt, "streaming:sink=4,window=60", 6);
  ASSERT_EQ(s.result.ids.size(), 6u);
  EXPECT_EQ(s.result.kv.slots, int64_t{2} * c.n_layer * c.n_head_kv * 64);
  EXPECT_DOUBLE_EQ(s.result.kv.ratio(), 64.0 / static_cast<double>(s.result.kv.tokens));
  const GreedyRun full = Greedy(engine, prompt, "full", 6);
  const GreedyRun covering = Greedy(engine, prompt, "streaming:sink=4,window=256", 6);
  EXPECT_EQ(covering.result.ids, full.result.ids);
  EXPECT_EQ(covering.logits, full.logits);
}

}  // namespace
}  // namespace kvasir::worker
