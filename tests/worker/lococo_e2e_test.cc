// `lococo` through the engine: on stories260K (and SmolLM2 when installed) generation runs, the
// KV held is exactly min(floor(T / chunk) * chunk, slots) + T mod chunk slots per (layer, KV
// head), slots covering the sequence give `full` bit for bit, random convolution weights written
// to a safetensors file here are loaded and change the outputs, and the trained compressor of
// train/artifacts gives the logits its PyTorch training code gave.
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvcache/lococo_policy.h"
#include "model/model_files.h"
#include "model/safetensors.h"
#include "tests/testing/paths.h"
#include "tests/testing/safetensors_builder.h"
#include "tests/worker/e2e_util.h"
#include "worker/engine.h"

namespace kvasir::worker {
namespace {

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

using LococoE2eTest = e2e::StoriesSuite<>;

TEST_F(LococoE2eTest, StoriesHoldsTheSlotsItPromises) {
  const model::ModelConfig& c = engine_->config();
  const std::vector<int32_t> prompt = e2e::StoryPrompt(*engine_, 4);
  ASSERT_GT(prompt.size(), 60u);
  for (int32_t max_tokens : {40, 45}) {
    const e2e::GreedyRun run =
        e2e::Greedy(*engine_, prompt, "lococo:slots=16,chunk=8", max_tokens, 13);
    const kvcache::KvUsage& kv = run.result.kv;
    ASSERT_EQ(run.result.ids.size(), static_cast<size_t>(max_tokens));
    const int64_t per_table = ExpectedSlots(kv.tokens, 16, 8);
    e2e::ExpectUniformSlots(c, run, per_table);
    EXPECT_EQ(run.result.kv_policy, "lococo:slots=16,chunk=8");
  }
  EXPECT_EQ(e2e::Greedy(*engine_, prompt, "lococo:slots=16,chunk=8", 20, 512).logits,
            e2e::Greedy(*engine_, prompt, "lococo:slots=16,chunk=8", 20, 5).logits);
}

TEST_F(LococoE2eTest, StoriesSlotsCoveringTheSequenceEqualFull) {
  const std::vector<int32_t> prompt = e2e::StoryPrompt(*engine_, 3);
  const e2e::GreedyRun full = e2e::Greedy(*engine_, prompt, "full", 48);
  const e2e::GreedyRun l = e2e::Greedy(*engine_, prompt, "lococo:slots=400,chunk=16", 48);
  EXPECT_EQ(l.result.ids, full.result.ids);
  EXPECT_EQ(l.logits, full.logits);
  EXPECT_EQ(l.result.kv.slots, full.result.kv.slots);
  const e2e::GreedyRun small = e2e::Greedy(*engine_, prompt, "lococo:slots=8,chunk=4", 48);
  EXPECT_NE(small.logits, full.logits);
}

TEST_F(LococoE2eTest, StoriesUsesConvolutionWeightsFromAFile) {
  const model::ModelConfig& c = engine_->config();
  testing::ScopedTempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string path = WriteRandomWeights(dir, c.n_layer, 8, c.head_dim);
  const std::vector<int32_t> prompt = e2e::StoryPrompt(*engine_, 4);
  const std::string spec = "lococo:slots=16,chunk=8,weights=" + path;
  const e2e::GreedyRun fused = e2e::Greedy(*engine_, prompt, spec, 30);
  const e2e::GreedyRun selected = e2e::Greedy(*engine_, prompt, "lococo:slots=16,chunk=8", 30);
  const e2e::GreedyRun zero = e2e::Greedy(*engine_, prompt, spec + ",lambda=0", 30);
  ASSERT_EQ(fused.result.ids.size(), 30u);
  EXPECT_EQ(fused.result.kv.slots, selected.result.kv.slots);
  EXPECT_EQ(fused.result.kv_policy, spec);
  // The fused slots change what the model sees.
  EXPECT_NE(fused.logits, selected.logits);
  // λ = 0 from the spec is the training-free selection, weights or not.
  EXPECT_EQ(zero.logits, selected.logits);
  // A weights file that does not fit the model is refused with a message.
  auto bad = engine_->Policy("lococo:slots=20,chunk=8,weights=" + path);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

// The committed artifact (train/retrofit.py lococo): the engine's lococo policy with the trained
// convolution reproduces the logits of train/kvasir_train/lococo.py over the artifact's check
// tokens, fed one at a time (so the compressions happen in decode steps, as when serving).
TEST_F(LococoE2eTest, EngineReproducesTheTrainedCompressor) {
  const std::string path = testing::RepoPath("train/artifacts/stories260K-lococo-4x.safetensors");
  auto file = model::SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const model::SafeTensorInfo* tokens = file->Find("check.tokens");
  const model::SafeTensorInfo* want = file->Find("check.logits");
  ASSERT_TRUE(tokens != nullptr && want != nullptr);
  ASSERT_EQ(tokens->dtype, model::SafeDType::kI32);
  ASSERT_EQ(want->dtype, model::SafeDType::kF32);
  std::string spec;
  for (const auto& [key, value] : file->metadata()) {
    if (key == "kvasir.kv_policy") spec = value;
  }
  ASSERT_EQ(spec.rfind("lococo:", 0), 0u) << spec;
  const int32_t vocab = engine_->config().n_vocab;
  const size_t n = tokens->shape.at(0);
  ASSERT_EQ(want->shape, (std::vector<int64_t>{static_cast<int64_t>(n), vocab}));
  std::vector<int32_t> ids(n);
  std::memcpy(ids.data(), tokens->data, n * sizeof(int32_t));
  std::vector<float> expected(n * vocab);
  std::memcpy(expected.data(), want->data, expected.size() * sizeof(float));

  auto policy = engine_->Policy(spec + ",weights=" + path);
  ASSERT_TRUE(policy.ok()) << policy.status();
  const e2e::ReplayCheck check = e2e::ReplayAndCompare(*engine_, *policy, ids, expected);
  // f32 in both, summed in other orders: logits of magnitude ~10 agree to ~1e-4. A heavy-hitter
  // choice between two scores within rounding of each other could differ and move later logits
  // more, hence the mean bound besides the max.
  EXPECT_LT(check.mean_err, 2e-4) << "max " << check.max_err;
  EXPECT_LT(check.max_err, 5e-2);
  EXPECT_EQ(check.argmax_agree, static_cast<int>(n));
  const kvcache::KvUsage& usage = check.usage;
  EXPECT_LT(usage.ratio(), 0.5) << usage.slots << " of " << usage.full_slots;
}

using LococoE2eDefaultModelTest = e2e::DefaultModelSuite<>;

TEST_F(LococoE2eDefaultModelTest, HoldsTheSlotsAndCoversLikeFull) {
  Engine& engine = *engine_;
  const model::ModelConfig& c = engine.config();
  const std::vector<int32_t> prompt = e2e::FoxPrompt(engine, 6);
  ASSERT_GT(prompt.size(), 80u);
  const e2e::GreedyRun l = e2e::Greedy(engine, prompt, "lococo:slots=32,chunk=16", 6);
  ASSERT_EQ(l.result.ids.size(), 6u);
  const int64_t per_table = ExpectedSlots(l.result.kv.tokens, 32, 16);
  e2e::ExpectUniformSlots(c, l, per_table);
  e2e::ExpectCoversLikeFull(engine, prompt, "lococo:slots=256,chunk=16", 6);
}

}  // namespace
}  // namespace kvasir::worker
