// The `pod` policy through the engine: on stories260K (and the default model when installed)
// generation runs, the KV held is what the policy promises, and a pod that keeps everything (a
// window longer than the sequence, or every layer its own anchor) gives exactly `full`'s logits.
// Calibration on the project's Shakespeare text produces a valid groups file the policy loads.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvcache/pod_groups.h"
#include "kvcache/pod_policy.h"
#include "tests/testing/paths.h"
#include "tests/worker/e2e_util.h"
#include "worker/engine.h"
#include "worker/pod_calibration.h"

namespace kvasir::worker {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("kvasir_pod_e2e_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

// K + V slots pod must hold after `t` tokens, from the groups, table by table.
int64_t ExpectedSlots(const kvcache::PodGroups& g, int64_t t, int32_t sink, int32_t window) {
  int64_t slots = 0;
  for (int32_t l = 0; l < g.n_layer(); ++l) {
    for (int32_t h = 0; h < g.n_head_kv(); ++h) {
      slots += t + (g.anchor(l, h) == l ? t : std::min<int64_t>(t, int64_t{sink} + window));
    }
  }
  return slots;
}

using PodStoriesTest = e2e::StoriesSuite<::testing::Test, /*kNumThreads=*/0>;

TEST_F(PodStoriesTest, KeepingEverythingGivesExactlyFullsLogits) {
  const std::vector<int32_t> prompt = e2e::BallPrompt(*engine_);
  const e2e::GreedyRun full = e2e::Greedy(*engine_, prompt, "full", 40, 16);
  ASSERT_EQ(full.logits.size(), 40u);
  for (const std::string spec :
       {"pod:sink=4,window=4096,group_size=2", "pod:sink=2,window=8,group_size=1"}) {
    SCOPED_TRACE(spec);
    const e2e::GreedyRun pod = e2e::Greedy(*engine_, prompt, spec, 40, 16);
    EXPECT_EQ(pod.result.ids, full.result.ids);
    ASSERT_EQ(pod.logits.size(), full.logits.size());
    for (size_t s = 0; s < full.logits.size(); ++s) {
      ASSERT_EQ(pod.logits[s], full.logits[s]) << "step " << s;
    }
    EXPECT_EQ(pod.result.kv.slots, full.result.kv.slots);
  }
}

TEST_F(PodStoriesTest, HoldsWhatThePolicyPromises) {
  const std::vector<int32_t> prompt = e2e::BallPrompt(*engine_);
  const e2e::GreedyRun full = e2e::Greedy(*engine_, prompt, "full", 60);
  const kvcache::PodGroups groups = kvcache::PodGroups::FixedSize(5, 4, 2);
  const e2e::GreedyRun pod =
      e2e::Greedy(*engine_, prompt, "pod:sink=4,window=16,group_size=2", 60, 7);
  const kvcache::KvUsage& u = pod.result.kv;
  ASSERT_EQ(u.tokens, static_cast<int64_t>(prompt.size()) + 59);
  EXPECT_EQ(u.slots, ExpectedSlots(groups, u.tokens, 4, 16));
  EXPECT_EQ(u.full_slots, full.result.kv.slots);
  EXPECT_EQ(u.bytes, u.slots * 8 * 4);
  // 3 of 5 layers anchor: K of the other 2 keeps 20 of the tokens.
  const double expected_ratio =
      (5.0 * u.tokens + 3.0 * u.tokens + 2.0 * std::min<int64_t>(u.tokens, 20)) / (10.0 * u.tokens);
  EXPECT_NEAR(u.ratio(), expected_ratio, 1e-12);
  EXPECT_LT(u.ratio(), 0.9);
  EXPECT_EQ(pod.result.ids.size(), 60u);
  int same = 0;
  for (size_t i = 0; i < 60; ++i) same += pod.result.ids[i] == full.result.ids[i];
  RecordProperty("greedy_agreement_with_full_of_60", same);
}

TEST_F(PodStoriesTest, CalibrationOnShakespeareWritesALoadableFile) {
  const std::string text = ReadFile(testing::SharedPath("eval/shakespeare-public.txt"));
  ASSERT_GT(text.size(), 10000u);
  PodCalibrationOptions o;
  o.sink = 4;
  o.window = 32;
  o.max_tokens = 600;
  o.chunk_tokens = 300;
  o.queries = 16;
  o.threshold = 0.5;
  o.text_name = "shakespeare-public.txt";
  std::vector<std::string> lines;
  o.progress = [&](std::string_view line) { lines.emplace_back(line); };
  auto file = CalibratePod(*engine_, text, o);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_GE(lines.size(), 3u) << "progress lines";
  EXPECT_EQ(engine_->cache().num_sequences(), 0u) << "sequences freed";
  const kvcache::PodGroups& g = file->groups;
  ASSERT_EQ(g.n_layer(), 5);
  ASSERT_EQ(g.n_head_kv(), 4);
  ASSERT_TRUE(file->calibration.has_value());
  EXPECT_EQ(file->calibration->chunks, 2);
  EXPECT_EQ(file->calibration->tokens, 600);
  EXPECT_EQ(file->calibration->queries, 2 * 16);
  ASSERT_EQ(file->similarity.size(), 4u);
  for (int32_t h = 0; h < 4; ++h) {
    for (int32_t a = 0; a < 5; ++a) {
      for (int32_t b = 0; b < 5; ++b) {
        const double s = file->similarity[h][a][b];
        ASSERT_FALSE(std::isnan(s));
        EXPECT_GE(s, 0.0);
        EXPECT_LE(s, 1.0);
        EXPECT_EQ(s, file->similarity[h][b][a]);
      }
      EXPECT_EQ(file->similarity[h][a][a], 1.0);
    }
    // The grouping rule: members resemble their anchor enough, and a new group starts only where
    // a layer does not resemble the previous group's anchor.
    const auto groups = g.Groups(h);
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      for (size_t m = 1; m < groups[gi].size(); ++m) {
        EXPECT_GE(file->similarity[h][groups[gi][0]][groups[gi][m]], 0.5);
      }
      if (gi > 0) {
        EXPECT_LT(file->similarity[h][groups[gi - 1][0]][groups[gi][0]], 0.5);
      }
    }
  }
  const std::string path = TempPath("groups.json");
  {
    std::ofstream out(path, std::ios::binary);
    out << kvcache::PodGroupsToJson(*file);
  }
  auto policy = engine_->Policy("pod:groups=" + path);
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ((*policy)->spec(), "pod:sink=4,window=32,groups=" + path);
  EXPECT_EQ(static_cast<const kvcache::PodPolicy&>(**policy).groups(), g);
  const e2e::GreedyRun pod =
      e2e::Greedy(*engine_, e2e::BallPrompt(*engine_), "pod:groups=" + path, 30);
  EXPECT_EQ(pod.result.kv.slots, ExpectedSlots(g, pod.result.kv.tokens, 4, 32));
  std::filesystem::remove(path);

  // Too short a text, or a window that leaves nothing distant: clear errors.
  EXPECT_EQ(CalibratePod(*engine_, "Hello there.", o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.window = 400;
  EXPECT_EQ(CalibratePod(*engine_, text, o).status().code(), absl::StatusCode::kInvalidArgument);
}

// The default model (SmolLM2-135M-Instruct Q4_1), when installed.
using PodDefaultModelTest = e2e::DefaultModelSuite</*kNumThreads=*/0>;

TEST_F(PodDefaultModelTest, LongPromptHoldsTheFormulaAndKeepAllEqualsFull) {
  Engine& engine = *engine_;
  const std::string text = ReadFile(testing::SharedPath("eval/shakespeare-public.txt"));
  std::vector<int32_t> prompt = engine.tokenizer().Encode(text.substr(0, 2400), true, false);
  ASSERT_GT(prompt.size(), 400u);
  const kvcache::PodGroups groups = kvcache::PodGroups::FixedSize(30, 3, 2);
  const e2e::GreedyRun pod = e2e::Greedy(engine, prompt, "pod:sink=4,window=64,group_size=2", 6);
  const kvcache::KvUsage& u = pod.result.kv;
  EXPECT_EQ(u.slots, ExpectedSlots(groups, u.tokens, 4, 64));
  EXPECT_NEAR(u.ratio(), 0.75 + 0.25 * 68.0 / u.tokens, 1e-12);
  std::fprintf(stderr, "default model, %lld tokens: pod held %.1f%% of full, output '%s'\n",
               static_cast<long long>(u.tokens), 100 * u.ratio(), pod.result.text.c_str());

  prompt.resize(120);
  const e2e::GreedyRun full = e2e::Greedy(engine, prompt, "full", 6);
  const e2e::GreedyRun all = e2e::Greedy(engine, prompt, "pod:sink=4,window=512,group_size=3", 6);
  EXPECT_EQ(all.result.ids, full.result.ids);
  ASSERT_EQ(all.logits.size(), full.logits.size());
  for (size_t s = 0; s < full.logits.size(); ++s) EXPECT_EQ(all.logits[s], full.logits[s]);
}

}  // namespace
}  // namespace kvasir::worker
