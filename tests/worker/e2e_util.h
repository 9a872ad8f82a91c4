// Shared harness of the engine-level tests (tests/worker/*_e2e_test.cc, golden_test.cc): loading
// stories260K once per suite or the default model per test (skipped when absent), the prompts the
// tests use, and greedy runs that keep every sampling step's logits for bit-for-bit comparisons.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "model/model_files.h"
#include "tests/testing/paths.h"
#include "worker/engine.h"

namespace kvasir::worker::e2e {

// An engine over `model` (a path or "default"), weights not prefaulted; nullptr (and a failed
// expectation) when it does not load. num_threads 0 is all cores.
inline std::unique_ptr<Engine> LoadEngine(const std::string& model, int32_t num_threads = 2) {
  EngineOptions o;
  o.model = model;
  o.prefault = false;
  o.num_threads = num_threads;
  auto e = Engine::Load(o);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(*e) : nullptr;
}

inline bool DefaultModelInstalled() { return model::ResolveModelPath("default").ok(); }

// A greedy generation's result and the logits of every sampling step.
struct GreedyRun {
  GenerateResult result;
  std::vector<std::vector<float>> logits;
};

// Greedy decoding of `max_tokens` tokens (EOS ignored) after `prompt` under KV policy `policy`.
inline GreedyRun Greedy(Engine& engine, const std::vector<int32_t>& prompt,
                        const std::string& policy, int32_t max_tokens,
                        int32_t prefill_chunk = 512) {
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

inline std::vector<int32_t> RepeatedPrompt(const Engine& engine, const std::string& sentence,
                                           int repeats) {
  std::string text;
  for (int i = 0; i < repeats; ++i) text += sentence;
  return engine.tokenizer().Encode(text, true, false);
}

// `repeats` times a two-sentence story, for stories260K.
inline std::vector<int32_t> StoryPrompt(const Engine& engine, int repeats) {
  return RepeatedPrompt(engine,
                        "Once upon a time, there was a little girl named Lily. She loved to play "
                        "outside in the park with her dog. ",
                        repeats);
}

// `repeats` times a pangram sentence, for the default model.
inline std::vector<int32_t> FoxPrompt(const Engine& engine, int repeats) {
  return RepeatedPrompt(
      engine, "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. ",
      repeats);
}

// A three-sentence story about Lily and a red ball.
inline std::vector<int32_t> BallPrompt(const Engine& engine) {
  return engine.tokenizer().Encode(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "park with her friends. One day, she saw a big red ball under a tree.",
      true, false);
}

// K + V slots of a model whose every (layer, KV head) table holds `per_table` slots.
inline int64_t UniformSlots(const model::ModelConfig& c, int64_t per_table) {
  return int64_t{2} * c.n_layer * c.n_head_kv * per_table;
}

// The run's KV held `per_table` slots in every (layer, KV head) table at the end, and says so in
// its ratio to full.
inline void ExpectUniformSlots(const model::ModelConfig& c, const GreedyRun& run,
                               int64_t per_table) {
  const kvcache::KvUsage& kv = run.result.kv;
  EXPECT_EQ(kv.slots, UniformSlots(c, per_table));
  EXPECT_DOUBLE_EQ(kv.ratio(), static_cast<double>(per_table) / static_cast<double>(kv.tokens));
}

// Greedy runs under `spec` (a policy that drops nothing of this sequence) and under `full` give
// the same ids and the same logits, bit for bit, at every step.
inline void ExpectCoversLikeFull(Engine& engine, const std::vector<int32_t>& prompt,
                                 const std::string& spec, int32_t max_tokens) {
  const GreedyRun full = Greedy(engine, prompt, "full", max_tokens);
  const GreedyRun covering = Greedy(engine, prompt, spec, max_tokens);
  EXPECT_EQ(covering.result.ids, full.result.ids) << spec;
  EXPECT_EQ(covering.logits, full.logits) << spec;
}

// Feeds `tokens` one at a time through `policy` (so every position's logits are seen, and a
// compressing policy compresses in decode steps) and compares each step's logits with `expected`
// ([tokens.size(), n_vocab]), as trained models' artifacts record them (check.logits).
struct ReplayCheck {
  double max_err = 0;      // largest |logit - expected| over all positions and tokens
  double mean_err = 0;     // mean |logit - expected|
  int argmax_agree = 0;    // positions whose largest logit is the expected one
  kvcache::KvUsage usage;  // the sequence's KV at the end
};
inline ReplayCheck ReplayAndCompare(Engine& engine,
                                    const std::shared_ptr<const kvcache::KvPolicy>& policy,
                                    std::span<const int32_t> tokens,
                                    std::span<const float> expected) {
  ReplayCheck out;
  const int32_t vocab = engine.config().n_vocab;
  EXPECT_EQ(expected.size(), tokens.size() * static_cast<size_t>(vocab));
  if (expected.size() != tokens.size() * static_cast<size_t>(vocab)) return out;
  kvcache::KvCache& cache = engine.cache();
  kvcache::SequenceKv& seq = cache.CreateSequence(policy);
  std::vector<float> logits;
  double sum_err = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    StepSequence step{&seq, tokens.subspan(i, 1), false};
    const absl::Status status = engine.runner().Forward({&step, 1}, logits);
    EXPECT_TRUE(status.ok()) << status;
    if (!status.ok()) break;
    const float* want = expected.data() + i * vocab;
    int best_got = 0, best_want = 0;
    for (int32_t v = 0; v < vocab; ++v) {
      const double err = std::fabs(double(logits[v]) - want[v]);
      out.max_err = std::max(out.max_err, err);
      sum_err += err;
      if (logits[v] > logits[best_got]) best_got = v;
      if (want[v] > want[best_want]) best_want = v;
    }
    out.argmax_agree += best_got == best_want;
  }
  out.usage = cache.Usage(seq);
  cache.FreeSequence(seq.id());
  out.mean_err = tokens.empty() ? 0 : sum_err / (static_cast<double>(tokens.size()) * vocab);
  std::printf("check: %zu positions, mean |error| %.2e, max %.2e, slots %lld of %lld\n",
              tokens.size(), out.mean_err, out.max_err, static_cast<long long>(out.usage.slots),
              static_cast<long long>(out.usage.full_slots));
  return out;
}

// A suite sharing one stories260K engine (engine_), loaded once before its first test. Base is
// ::testing::Test or ::testing::TestWithParam<...>.
template <typename Base = ::testing::Test, int32_t kNumThreads = 2>
class StoriesSuite : public Base {
 protected:
  static void SetUpTestSuite() {
    engine_ = LoadEngine(testing::SharedPath("models/stories260K.gguf"), kNumThreads).release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    engine_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(engine_, nullptr); }

  static inline Engine* engine_ = nullptr;
};

// A test on the default model (SmolLM2-135M-Instruct), loaded per test into engine_; skipped
// when the model is not installed.
template <int32_t kNumThreads = 2>
class DefaultModelSuite : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!DefaultModelInstalled()) {
      GTEST_SKIP() << "the default model (SmolLM2-135M-Instruct) is not installed";
    }
    engine_ = LoadEngine("default", kNumThreads);
    ASSERT_NE(engine_, nullptr);
  }

  std::unique_ptr<Engine> engine_;
};

}  // namespace kvasir::worker::e2e
