// `lococo` through the engine: on stories260K (and SmolLM2 when installed) generation runs, the
// KV held is exactly min(floor(T / chunk) * chunk, slots) + T mod chunk slots per (layer, KV
// head), slots covering the sequence give `full` bit for bit, and random convolution weights
// written to a safetensors file here are loaded and change the outputs.
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvcache/lococo_policy.h"
#include "model/model_files.h"
#include "tests/testing/paths.h"
#include "tests/testing/safetensors_builder.h"
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

int64_t ExpectedSlots(int64_t tokens, int64_t slots, int64_t chunk) {
  int64_t len = 0;
  for (int64_t t = 1; t <= tokens; ++t) {
    ++len;
    if (t % chunk == 0 && len > slots) len = slots;
  }
  return len;
}

// Random compressor weights for every layer, in the documented tensor names and shapes.
std::string WriteRandomWeights(const testing::ScopedTempDir& dir, int32_t n_layer, int32_t m_c,
                               int32_t head_dim) {
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<float> dist(-0.5f, 0.5f);
  testing::SafetensorsBuilder b;
  for (int32_t l = 0; l < n_layer; ++l) {
    std::vector<float> w(static_cast<size_t>(m_c) * 2 * head_dim * 21), bias(m_c);
    for (float& x : w) x = dist(rng);
    for (float& x : bias) x = dist(rng);
    const std::string p = "layers." + std::to_string(l) + ".";
    b.AddF32(p + "conv.weight", {m_c, 2 * head_dim, 21}, w);
    b.AddF32(p + "conv.bias", {m_c}, bias);
    b.AddF32(p + "lambda", {}, {0.5f});
  }
  const std::string path = dir.File("lococo.safetensors");
  EXPECT_TRUE(testing::GgufBuilder::WriteFile(path, b.Build()));
  return path;
}

class LococoE2eTest : public ::testing::Test {
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
Engine* LococoE2eTest::stories_ = nullptr;

TEST_F(LococoE2eTest, StoriesHoldsTheSlotsItPromises) {
  const model::ModelConfig& c = stories_->config();
  const std::vector<int32_t> prompt = StoryPrompt(*stories_, 4);
  ASSERT_GT(prompt.size(), 60u);
  for (int32_t max_tokens : {40, 45}) {
    const GreedyRun run = Greedy(*stories_, prompt, "lococo:slots=16,chunk=8", max_tokens, 13);
    const kvcache::KvUsage& kv = run.result.kv;
    ASSERT_EQ(run.result.ids.size(), static_cast<size_t>(max_tokens));
    const int64_t per_table = ExpectedSlots(kv.tokens, 16, 8);
    EXPECT_EQ(kv.slots, int64_t{2} * c.n_layer * c.n_head_kv * per_table);
    EXPECT_DOUBLE_EQ(kv.ratio(), static_cast<double>(per_table) / kv.tokens);
    EXPECT_EQ(run.result.kv_policy, "lococo:slots=16,chunk=8");
  }
  EXPECT_EQ(Greedy(*stories_, prompt, "lococo:slots=16,chunk=8", 20, 512).logits,
            Greedy(*stories_, prompt, "lococo:slots=16,chunk=8", 20, 5).logits);
}

TEST_F(LococoE2eTest, StoriesSlotsCoveringTheSequenceEqualFull) {
  const std::vector<int32_t> prompt = StoryPrompt(*stories_, 3);
  const GreedyRun full = Greedy(*stories_, prompt, "full", 48);
  const GreedyRun l = Greedy(*stories_, prompt, "lococo:slots=400,chunk=16", 48);
  EXPECT_EQ(l.result.ids, full.result.ids);
  EXPECT_EQ(l.logits, full.logits);
  EXPECT_EQ(l.result.kv.slots, full.result.kv.slots);
  const GreedyRun small = Greedy(*stories_, prompt, "lococo:slots=8,chunk=4", 48);
  EXPECT_NE(small.logits, full.logits);
}

TEST_F(LococoE2eTest, StoriesUsesConvolutionWeightsFromAFile) {
  const model::ModelConfig& c = stories_->config();
  testing::ScopedTempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string path = WriteRandomWeights(dir, c.n_layer, 8, c.head_dim);
  const std::vector<int32_t> prompt = StoryPrompt(*stories_, 4);
  const std::string spec = "lococo:slots=16,chunk=8,weights=" + path;
  const GreedyRun fused = Greedy(*stories_, prompt, spec, 30);
  const GreedyRun selected = Greedy(*stories_, prompt, "lococo:slots=16,chunk=8", 30);
  const GreedyRun zero = Greedy(*stories_, prompt, spec + ",lambda=0", 30);
  ASSERT_EQ(fused.result.ids.size(), 30u);
  EXPECT_EQ(fused.result.kv.slots, selected.result.kv.slots);
  EXPECT_EQ(fused.result.kv_policy, spec);
  // The fused slots change what the model sees.
  EXPECT_NE(fused.logits, selected.logits);
  // λ = 0 from the spec is the training-free selection, weights or not.
  EXPECT_EQ(zero.logits, selected.logits);
  // A weights file that does not fit the model is refused with a message.
  auto bad = stories_->Policy("lococo:slots=20,chunk=8,weights=" + path);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LococoE2eDefaultModelTest, HoldsTheSlotsAndCoversLikeFull) {
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
  const GreedyRun l = Greedy(engine, prompt, "lococo:slots=32,chunk=16", 6);
  ASSERT_EQ(l.result.ids.size(), 6u);
  const int64_t per_table = ExpectedSlots(l.result.kv.tokens, 32, 16);
  EXPECT_EQ(l.result.kv.slots, int64_t{2} * c.n_layer * c.n_head_kv * per_table);
  EXPECT_DOUBLE_EQ(l.result.kv.ratio(), static_cast<double>(per_table) / l.result.kv.tokens);
  const GreedyRun full = Greedy(engine, prompt, "full", 6);
  const GreedyRun covering = Greedy(engine, prompt, "lococo:slots=256,chunk=16", 6);
  EXPECT_EQ(covering.result.ids, full.result.ids);
  EXPECT_EQ(covering.logits, full.logits);
}

}  // namespace
}  // namespace kvasir::worker
