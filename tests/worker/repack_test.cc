// The CPU runner's weights repacked for decode (kernels/cpu/ops.h RepackRows8) on the default model
// (Q4_1 layers, a Q8_0 output layer): the runner repacks exactly the matrices the kernels prefer,
// its logits agree with a runner over the mapped weights up to float summation order, greedy
// decoding picks the same tokens, and a sequence's logits do not depend on what it is batched with.
#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "tests/worker/e2e_util.h"
#include "worker/engine.h"
#include "worker/model_runner.h"

namespace kvasir::worker {
namespace {

using RepackTest = e2e::DefaultModelSuite<>;

// A runner of its own over the engine's weights, with a cache of its own.
struct SecondRunner {
  std::unique_ptr<kvcache::KvCache> cache;
  std::unique_ptr<ModelRunner> runner;
};
SecondRunner MakeRunner(Engine& e, bool repack) {
  SecondRunner s;
  kvcache::KvCacheOptions ko;
  ko.capacity_bytes = 64 << 20;
  auto cache = kvcache::KvCache::Create(e.cache().geometry(), ko);
  EXPECT_TRUE(cache.ok()) << cache.status();
  s.cache = std::move(*cache);
  CpuRunnerOptions ro;
  ro.num_threads = 2;
  ro.repack_weights = repack;
  auto runner = CreateCpuRunner(e.config(), e.weights(), *s.cache, ro);
  EXPECT_TRUE(runner.ok()) << runner.status();
  s.runner = std::move(*runner);
  return s;
}

TEST_F(RepackTest, RepacksWhatTheKernelsPreferAndAgreesWithTheMappedWeights) {
  Engine& e = *engine_;
  const LlamaWeights& w = e.weights();
  if (!kernels::cpu::PrefersRows8(w.layers[0].wq)) {
    GTEST_SKIP() << "ISA level " << kernels::cpu::ActiveIsa() << " has no kRows8 kernels";
  }
  int64_t expect_bytes = 0;
  for (const LayerWeights& l : w.layers) {
    for (const kernels::WeightView* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down}) {
      if (kernels::cpu::PrefersRows8(*m)) expect_bytes += m->rows * m->row_bytes;
    }
  }
  if (kernels::cpu::PrefersRows8(w.output)) expect_bytes += w.output.rows * w.output.row_bytes;
  EXPECT_EQ(w.output.type, DType::kQ8_0);
  EXPECT_TRUE(kernels::cpu::PrefersRows8(w.output));
  EXPECT_GT(expect_bytes, w.bytes / 2);
  EXPECT_EQ(e.runner().repacked_weight_bytes(), expect_bytes);

  SecondRunner mapped = MakeRunner(e, false);
  EXPECT_EQ(mapped.runner->repacked_weight_bytes(), 0);
  const model::ModelConfig& c = e.config();
  auto policy = e.Policy("full");
  ASSERT_TRUE(policy.ok());
  kvcache::SequenceKv& a = e.cache().CreateSequence(*policy);
  kvcache::SequenceKv& b = mapped.cache->CreateSequence(*policy);
  const std::vector<int32_t> prompt = e2e::FoxPrompt(e, 2);
  std::vector<float> la, lb;
  StepSequence pa{&a, prompt, false}, pb{&b, prompt, false};
  ASSERT_TRUE(e.runner().Forward({&pa, 1}, la).ok());
  ASSERT_TRUE(mapped.runner->Forward({&pb, 1}, lb).ok());
  double worst = 0.0;
  for (int step = 0; step < 16; ++step) {
    ASSERT_EQ(la.size(), static_cast<size_t>(c.n_vocab));
    ASSERT_EQ(lb.size(), la.size());
    float range = 0.0f;
    for (float v : lb) range = std::max(range, std::fabs(v));
    for (size_t i = 0; i < la.size(); ++i) {
      worst = std::max(worst, static_cast<double>(std::fabs(la[i] - lb[i]) / range));
    }
    EXPECT_NE(la, lb) << "step " << step << ": the same bits: was anything repacked?";
    const int32_t ta = ArgMax(std::span<const float>(la));
    ASSERT_EQ(ta, ArgMax(std::span<const float>(lb))) << "step " << step;
    StepSequence da{&a, std::span<const int32_t>(&ta, 1), false};
    StepSequence db{&b, std::span<const int32_t>(&ta, 1), false};
    ASSERT_TRUE(e.runner().Forward({&da, 1}, la).ok());
    ASSERT_TRUE(mapped.runner->Forward({&db, 1}, lb).ok());
  }
  // Only float summation order differs, about 1e-6 relative per product; but each layer quantizes
  // its activations to 8 bits again, where a value that moved by 1e-6 can round the other way, so
  // differences grow through the 30 layers: measured 2-4 % of the largest logit, as between the
  // scalar and avx2 levels over the same weights. A wrong kernel is far off (and picks other
  // tokens).
  EXPECT_LT(worst, 0.1);
  std::printf("repacked vs mapped weights: max |logit difference| %.2e of the largest logit\n",
              worst);
}

// Each token's products run the same instructions in the same order whatever the batch holds,
// so a sequence's decode logits are the same, bit for bit, alone and beside another sequence.
TEST_F(RepackTest, LogitsDoNotDependOnTheBatch) {
  Engine& e = *engine_;
  if (!kernels::cpu::PrefersRows8(e.weights().layers[0].wq)) {
    GTEST_SKIP() << "ISA level " << kernels::cpu::ActiveIsa() << " has no kRows8 kernels";
  }
  const int64_t vocab = e.config().n_vocab;
  auto policy = e.Policy("full");
  ASSERT_TRUE(policy.ok());
  const std::vector<int32_t> prompt = e2e::FoxPrompt(e, 1);
  const std::vector<int32_t> other = e2e::BallPrompt(e);
  kvcache::SequenceKv& alone = e.cache().CreateSequence(*policy);
  kvcache::SequenceKv& paired = e.cache().CreateSequence(*policy);
  kvcache::SequenceKv& partner = e.cache().CreateSequence(*policy);
  std::vector<float> l1, l2;
  StepSequence p1{&alone, prompt, false};
  ASSERT_TRUE(e.runner().Forward({&p1, 1}, l1).ok());
  StepSequence p2[2] = {{&paired, prompt, false}, {&partner, other, false}};
  ASSERT_TRUE(e.runner().Forward(p2, l2).ok());
  ASSERT_EQ(l2.size(), 2 * l1.size());
  EXPECT_TRUE(std::equal(l1.begin(), l1.end(), l2.begin())) << "after the prompts";
  int32_t next = ArgMax(std::span<const float>(l1));
  int32_t next_other = ArgMax(std::span<const float>(l2.data() + vocab, vocab));
  for (int step = 0; step < 4; ++step) {
    StepSequence d1{&alone, std::span<const int32_t>(&next, 1), false};
    ASSERT_TRUE(e.runner().Forward({&d1, 1}, l1).ok());
    StepSequence d2[2] = {{&paired, std::span<const int32_t>(&next, 1), false},
                          {&partner, std::span<const int32_t>(&next_other, 1), false}};
    ASSERT_TRUE(e.runner().Forward(d2, l2).ok());
    ASSERT_TRUE(std::equal(l1.begin(), l1.end(), l2.begin())) << "step " << step;
    next = ArgMax(std::span<const float>(l1));
    next_other = ArgMax(std::span<const float>(l2.data() + vocab, vocab));
  }
}

}  // namespace
}  // namespace kvasir::worker
