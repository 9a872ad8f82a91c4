// The continuous-batching scheduler on the real engine (stories260K, in process): admission,
// the token budget, chunked prefill, preemption by recompute with a tiny KV cache,
// cancellation, fairness, and outputs that match the single-request Generate.
#include "worker/service/scheduler.h"

#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/paths.h"
#include "worker/engine.h"

namespace kvasir::worker::service {
namespace {

struct Collected {
  std::vector<int32_t> ids;
  std::string text;
  std::vector<TokenLogprobs> logprobs;
  bool finished = false;
  std::string finish_reason;
  absl::Status status;
  RequestState last_state = RequestState::kQueued;
  int outputs = 0;
  int preemptions = 0;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
};

class SchedulerTest : public ::testing::Test {
 protected:
  void Load(int64_t kv_cache_bytes = 0, const std::string& adapter = "") {
    EngineOptions options;
    options.model = testing::SharedPath("models/stories260K.gguf");
    options.num_threads = 1;
    options.kv_cache_bytes = kv_cache_bytes;
    options.adapter = adapter;
    options.prefault = false;
    auto engine = Engine::Load(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }

  void MakeScheduler(SchedulerOptions options = {}) {
    auto s = Scheduler::Create(*engine_, options);
    ASSERT_TRUE(s.ok()) << s.status();
    scheduler_ = std::move(*s);
  }

  std::vector<int32_t> Encode(const std::string& text) {
    return engine_->tokenizer().Encode(text, /*add_special=*/true, /*parse_special=*/false);
  }
  // The sentences of kPrompts one after the other, cut to `n` tokens.
  std::vector<int32_t> Sentences(size_t n);

  SchedulerRequest Greedy(const std::string& id, const std::string& prompt, int32_t max_tokens) {
    SchedulerRequest r;
    r.id = id;
    r.prompt = Encode(prompt);
    r.sampling = SamplingParams::Greedy();
    r.max_tokens = max_tokens;
    return r;
  }

  void Submit(SchedulerRequest r) {
    const std::string id = r.id;
    absl::Status s = scheduler_->Submit(std::move(r), [this, id](const RequestOutput& out) {
      EXPECT_EQ(out.id, id);
      Collected& c = results_[id];
      EXPECT_FALSE(c.finished) << "output after the last one for " << id;
      c.ids.insert(c.ids.end(), out.ids.begin(), out.ids.end());
      c.text += out.text;
      c.logprobs.insert(c.logprobs.end(), out.logprobs.begin(), out.logprobs.end());
      c.finished = out.finished;
      c.finish_reason = out.finish_reason;
      c.status = out.status;
      c.last_state = out.state;
      c.preemptions = out.preemptions;
      c.prompt_tokens = out.prompt_tokens;
      c.completion_tokens = out.completion_tokens;
      ++c.outputs;
    });
    ASSERT_TRUE(s.ok()) << s;
  }

  // Steps until idle; returns the number of steps.
  int RunAll(int max_steps = 100000) {
    int steps = 0;
    while (scheduler_->Step()) {
      if (++steps >= max_steps) {
        ADD_FAILURE() << "the scheduler did not finish in " << max_steps << " steps";
        break;
      }
    }
    return steps;
  }

  // The single-request reference (under `kv_policy`; the request's own names the scheduler's).
  GenerateResult Reference(const SchedulerRequest& r, int32_t prefill_chunk = 512,
                           const std::string& kv_policy = "full") {
    GenerateRequest g;
    g.kv_policy = kv_policy;
    g.prompt = r.prompt;
    g.sampling = r.sampling;
    g.max_tokens = r.max_tokens;
    g.stop = r.stop;
    g.stop_ids = r.stop_ids;
    g.ignore_eos = r.ignore_eos;
    g.prefill_chunk = prefill_chunk;
    auto result = Generate(*engine_, g);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : GenerateResult();
  }

  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Scheduler> scheduler_;
  std::map<std::string, Collected> results_;
};

const char* const kPrompts[] = {
    "Once upon a time",
    "The little dog",
    "Lily and Tom went to the park",
    "One day, a big bird",
    "There was a boy who liked",
    "The sun was hot and",
};

std::vector<int32_t> SchedulerTest::Sentences(size_t n) {
  std::string text;
  std::vector<int32_t> prompt;
  for (int i = 0; prompt.size() < n; ++i) {
    text += std::string(kPrompts[i % 6]) + ". ";
    prompt = Encode(text);
  }
  prompt.resize(n);
  return prompt;
}

// A worker whose model is merged with a retrofit adapter (docs/retrofit.md) serves its configured
// learned-DMC policy, with the engine's own output, and refuses requests for any other policy.
TEST_F(SchedulerTest, AnAdaptedModelServesOnlyItsPolicy) {
  const std::string adapter = testing::RepoPath("train/artifacts/stories260K-dmc-4x.safetensors");
  ASSERT_NO_FATAL_FAILURE(Load(0, adapter));
  const std::string spec = "dmc:mode=learned,weights=" + adapter;
  SchedulerOptions options;
  options.kv_policies = {{"dmc4", spec}};
  ASSERT_NO_FATAL_FAILURE(MakeScheduler(options));
  SchedulerRequest r = Greedy("a", "Once upon a time", 24);
  SchedulerRequest other = Greedy("b", "Once upon a time", 4);
  other.kv_policy = "full";
  EXPECT_TRUE(absl::IsInvalidArgument(scheduler_->Submit(other, [](const RequestOutput&) {})));
  other.kv_policy = "h2o:budget=64";
  EXPECT_TRUE(absl::IsInvalidArgument(scheduler_->Submit(other, [](const RequestOutput&) {})));
  Submit(r);
  RunAll();
  ASSERT_TRUE(results_["a"].finished);
  ASSERT_TRUE(results_["a"].status.ok()) << results_["a"].status;
  EXPECT_EQ(results_["a"].ids, Reference(r, 512, spec).ids);
  // A scheduler that configures another policy beside it does not start.
  SchedulerOptions two = options;
  two.kv_policies.push_back({"", "streaming"});
  EXPECT_FALSE(Scheduler::Create(*engine_, two).ok());
  // The inter-token latency target is calibrated on an adapted model too.
  SchedulerOptions calibrated = options;
  calibrated.max_num_seqs = 2;
  calibrated.target_itl = absl::Milliseconds(-1);
  auto s = Scheduler::Create(*engine_, calibrated);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_GT((*s)->options().target_itl, absl::ZeroDuration());
}

TEST_F(SchedulerTest, SingleGreedyRequestMatchesGenerate) {
  ASSERT_NO_FATAL_FAILURE(Load());
  ASSERT_NO_FATAL_FAILURE(MakeScheduler());
  SchedulerRequest r = Greedy("a", "Once upon a time", 40);
  const GenerateResult ref = Reference(r);
  Submit(r);
  RunAll();
  const Collected& c = results_["a"];
  EXPECT_TRUE(c.finished);
  EXPECT_EQ(c.last_state, RequestState::kFinished);
  EXPECT_TRUE(c.status.ok());
  EXPECT_EQ(c.ids, ref.ids);
  EXPECT_EQ(c.text, ref.text);
  EXPECT_EQ(c.finish_reason, ref.finish_reason);
  EXPECT_EQ(c.prompt_tokens, static_cast<int32_t>(r.prompt.size()));
  EXPECT_EQ(c.completion_tokens, static_cast<int32_t>(ref.ids.size()));
  EXPECT_EQ(engine_->cache().pool().pages_used(), 0);
  EXPECT_EQ(engine_->cache().num_sequences(), 0u);
}

TEST_F(SchedulerTest, BatchedRequestsGiveTheSameTokensAsAlone) {
  ASSERT_NO_FATAL_FAILURE(Load());
  ASSERT_NO_FATAL_FAILURE(MakeScheduler());
  std::vector<SchedulerRequest> requests;
  std::vector<GenerateResult> refs;
  for (int i = 0; i < 6; ++i) {
    requests.push_back(Greedy("r" + std::to_string(i), kPrompts[i], 24 + 4 * i));
    refs.push_back(Reference(requests.back()));
  }
  for (const auto& r : requests) Submit(r);
  int max_batch = 0;
  while (scheduler_->Step()) {
    max_batch = std::max(max_batch, scheduler_->last_step().num_seqs);
  }
  EXPECT_EQ(max_batch, 6);  // all six ran together
  for (int i = 0; i < 6; ++i) {
    const Collected& c = results_["r" + std::to_string(i)];
    EXPECT_TRUE(c.finished);
    EXPECT_EQ(c.ids, refs[i].ids) << "request " << i;
    EXPECT_EQ(c.text, refs[i].text) << "request " << i;
  }
  EXPECT_EQ(engine_->cache().pool().pages_used(), 0);
}

TEST_F(SchedulerTest, TokenBudgetAndChunkedPrefill) {
  ASSERT_NO_FATAL_FAILURE(Load());
  SchedulerOptions options;
  options.max_num_batched_tokens = 16;
  options.prefill_chunk = 8;
  ASSERT_NO_FATAL_FAILURE(MakeScheduler(options));
  SchedulerRequest long_prompt = Greedy(
      "long", "Once upon a time there was a little girl named Lily who loved to play outside", 20);
  ASSERT_GT(long_prompt.prompt.size(), 16u);
  SchedulerRequest short_prompt = Greedy("short", "The dog", 20);
  const GenerateResult ref_long = Reference(long_prompt, /*prefill_chunk=*/8);
  const GenerateResult ref_short = Reference(short_prompt, 8);
  Submit(long_prompt);
  Submit(short_prompt);
  int steps_before_first_long_token = 0;
  while (scheduler_->Step()) {
    const StepStats& st = scheduler_->last_step();
    EXPECT_LE(st.prefill_tokens + st.decode_tokens, 16);
    if (results_["long"].outputs == 0) ++steps_before_first_long_token;
  }
  // The long prompt went in chunks of at most 8 tokens.
  EXPECT_GE(steps_before_first_long_token,
            static_cast<int>((long_prompt.prompt.size() + 7) / 8) - 1);
  EXPECT_EQ(results_["long"].ids, ref_long.ids);
  EXPECT_EQ(results_["short"].ids, ref_short.ids);
}

TEST_F(SchedulerTest, AdmissionRespectsMaxNumSeqsFirstComeFirstServed) {
  ASSERT_NO_FATAL_FAILURE(Load());
  SchedulerOptions options;
  options.max_num_seqs = 2;
  ASSERT_NO_FATAL_FAILURE(MakeScheduler(options));
  for (int i = 0; i < 4; ++i) {
    SchedulerRequest r = Greedy("q" + std::to_string(i), kPrompts[i], 12);
    r.ignore_eos = true;
    Submit(r);
  }
  ASSERT_TRUE(scheduler_->Step());
  EXPECT_EQ(scheduler_->last_step().ids, (std::vector<std::string>{"q0", "q1"}));
  EXPECT_EQ(scheduler_->stats().running, 2);
  EXPECT_EQ(scheduler_->stats().waiting, 2);
  std::vector<std::string> finish_order;
  while (scheduler_->Step()) {
    EXPECT_LE(scheduler_->last_step().num_seqs, 2);
    for (const auto& [id, c] : results_) {
      if (c.finished &&
          std::find(finish_order.begin(), finish_order.end(), id) == finish_order.end()) {
        finish_order.push_back(id);
      }
    }
  }
  ASSERT_EQ(finish_order.size(), 4u);
  // q2 and q3 only started once q0 and q1 were done.
  EXPECT_TRUE((finish_order[0] == "q0" || finish_order[0] == "q1"));
  EXPECT_TRUE((finish_order[2] == "q2" || finish_order[2] == "q3"));
  for (const auto& [id, c] : results_) EXPECT_EQ(c.ids.size(), 12u) << id;
}

TEST_F(SchedulerTest, PreemptionByRecomputeKeepsTheOutput) {
  // 600 pages of 512 bytes: room for ~15 blocks of 16 tokens (40 pages each), while four
  // requests of 8 + 100 tokens need 28. One alone fits.
  ASSERT_NO_FATAL_FAILURE(Load(600 * 512));
  ASSERT_EQ(engine_->cache().pool().capacity_pages(), 600);
  ASSERT_NO_FATAL_FAILURE(MakeScheduler());
  std::vector<SchedulerRequest> requests;
  std::vector<GenerateResult> refs;
  for (int i = 0; i < 4; ++i) {
    SchedulerRequest r = Greedy("p" + std::to_string(i), kPrompts[i], 100);
    r.ignore_eos = true;
    requests.push_back(r);
    refs.push_back(Reference(r));
  }
  for (const auto& r : requests) Submit(r);
  int preempted_steps = 0;
  while (scheduler_->Step()) preempted_steps += scheduler_->last_step().preempted > 0;
  EXPECT_GT(preempted_steps, 0);
  EXPECT_GT(scheduler_->stats().preemptions_total, 0);
  int preempted_requests = 0;
  for (int i = 0; i < 4; ++i) {
    const Collected& c = results_["p" + std::to_string(i)];
    EXPECT_TRUE(c.finished);
    EXPECT_TRUE(c.status.ok()) << c.status;
    EXPECT_EQ(c.ids, refs[i].ids) << "request " << i;
    EXPECT_EQ(c.text, refs[i].text) << "request " << i;
    preempted_requests += c.preemptions > 0;
  }
  EXPECT_GT(preempted_requests, 0);
  EXPECT_EQ(engine_->cache().pool().pages_used(), 0);
}

TEST_F(SchedulerTest, ARequestLargerThanTheCacheFailsCleanly) {
  ASSERT_NO_FATAL_FAILURE(Load(128 * 512));  // 3 blocks: 48 tokens
  ASSERT_NO_FATAL_FAILURE(MakeScheduler());
  SchedulerRequest r = Greedy("big", "Once upon a time", 100);
  r.ignore_eos = true;
  Submit(r);
  SchedulerRequest small = Greedy("small", "The dog", 4);
  small.ignore_eos = true;
  Submit(small);
  RunAll();
  const Collected& big = results_["big"];
  EXPECT_TRUE(big.finished);
  EXPECT_EQ(big.last_state, RequestState::kFailed);
  EXPECT_TRUE(absl::IsResourceExhausted(big.status)) << big.status;
  EXPECT_NE(big.status.message().find("KV cache memory"), std::string::npos);
  EXPECT_TRUE(results_["small"].status.ok());
  EXPECT_EQ(results_["small"].ids.size(), 4u);
  EXPECT_EQ(engine_->cache().pool().pages_used(), 0);
}

TEST_F(SchedulerTest, CancelRunningAndWaitingRequests) {
  ASSERT_NO_FATAL_FAILURE(Load());
  SchedulerOptions options;
  options.max_num_seqs = 1;
  ASSERT_NO_FATAL_FAILURE(MakeScheduler(options));
  SchedulerRequest running = Greedy("running", "Once upon a time", 500);
  running.ignore_eos = true;
  SchedulerRequest waiting = Greedy("waiting", "The dog", 500);
  Submit(running);
  Submit(waiting);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(scheduler_->Step());
  EXPECT_GT(engine_->cache().pool().pages_used(), 0);
  EXPECT_EQ(scheduler_->stats().running, 1);
  EXPECT_EQ(scheduler_->stats().waiting, 1);
  scheduler_->Cancel("running");
  scheduler_->Cancel("waiting");
  scheduler_->Cancel("unknown");  // ignored
  scheduler_->Step();
  for (const char* id : {"running", "waiting"}) {
    const Collected& c = results_[id];
    EXPECT_TRUE(c.finished) << id;
    EXPECT_EQ(c.last_state, RequestState::kCancelled) << id;
    EXPECT_TRUE(absl::IsCancelled(c.status)) << id;
  }
  EXPECT_EQ(results_["running"].ids.size(), 5u);  // 5 steps: prefill (+1 token) and 4 decodes
  EXPECT_TRUE(results_["waiting"].ids.empty());
  EXPECT_EQ(engine_->cache().pool().pages_used(), 0);
  EXPECT_EQ(scheduler_->stats().running, 0);
  EXPECT_FALSE(scheduler_->HasWork());
  // The id can be used again.
  results_.erase("running");
  Submit(Greedy("running", "Once upon a time", 3));
  RunAll();
  EXPECT_EQ(results_["running"].ids.size(), 3u);
}

TEST_F(SchedulerTest, DecodesKeepGoingWhileALongPromptIsPrefilled) {
  ASSERT_NO_FATAL_FAILURE(Load());
  SchedulerOptions options;
  options.max_num_batched_tokens = 24;
  options.prefill_chunk = 16;
  ASSERT_NO_FATAL_FAILURE(MakeScheduler(options));
  SchedulerRequest a = Greedy("a", "The dog", 100);
  a.ignore_eos = true;
  Submit(a);
  ASSERT_TRUE(scheduler_->Step());  // a is decoding now
  std::string long_text;
  for (int i = 0; i < 12; ++i) long_text += "Lily and Tom went to the park to play with a ball. ";
  SchedulerRequest b = Greedy("b", long_text, 10);
  ASSERT_GT(b.prompt.size(), 150u);
  Submit(b);
  int prefill_steps = 0;
  while (results_["b"].outputs == 0) {
    const int before = results_["a"].outputs;
    ASSERT_TRUE(scheduler_->Step());
    ++prefill_steps;
    EXPECT_EQ(results_["a"].outputs, before + 1) << "a got no token in step " << prefill_steps;
    EXPECT_LE(scheduler_->last_step().prefill_tokens, 16);
  }
  EXPECT_GE(prefill_steps, static_cast<int>(b.prompt.size() / 16));
  RunAll();
  EXPECT_EQ(results_["b"].ids, Reference(b, 16).ids);
}

// An inter-token latency target: the decoding request gets a token every step while two long
// prompts are prefilled beside it in turns, every output is the one of a run without the target,
// and the target, the model's estimate and the steps over target are reported.
TEST_F(SchedulerTest, ALatencyTargetKeepsDecodesGoingAndTheOutput) {
  ASSERT_NO_FATAL_FAILURE(Load());
  SchedulerOptions options;
  options.prefill_chunk = 16;
  options.target_itl = absl::Microseconds(1);  // below any step: prefill at its minimum
  ASSERT_NO_FATAL_FAILURE(MakeScheduler(options));
  SchedulerRequest a = Greedy("a", "The dog", 120);
  a.ignore_eos = true;
  Submit(a);
  ASSERT_TRUE(scheduler_->Step());
  std::string long_text;
  for (int i = 0; i < 10; ++i) long_text += "Lily and Tom went to the park to play with a ball. ";
  SchedulerRequest b = Greedy("b", long_text, 8);
  SchedulerRequest c = Greedy("c", "Once upon a time " + long_text, 8);
  Submit(b);
  Submit(c);
  int steps = 0, both = 0;
  while (results_["b"].outputs == 0 || results_["c"].outputs == 0) {
    const int before = results_["a"].outputs;
    ASSERT_TRUE(scheduler_->Step());
    ++steps;
    ASSERT_LT(steps, 200);
    EXPECT_EQ(results_["a"].outputs, before + 1) << "a got no token in step " << steps;
    EXPECT_LE(scheduler_->last_step().prefill_tokens, 2 * 16);
    both += scheduler_->last_step().prefill_tokens == 2 * 16 ? 1 : 0;
  }
  RunAll();
  EXPECT_EQ(results_["a"].ids, Reference(a, 16).ids);
  EXPECT_EQ(results_["b"].ids, Reference(b, 16).ids);
  EXPECT_EQ(results_["c"].ids, Reference(c, 16).ids);
  const SchedulerStats st = scheduler_->stats();
  EXPECT_DOUBLE_EQ(st.target_itl_seconds, 1e-6);
  EXPECT_GT(st.step_cost_estimate_seconds, 0);
  EXPECT_GE(st.steps_over_target_total, steps);  // every step with a decode took over 1 us
  RecordProperty("steps_with_both_prompts", both);
}

TEST_F(SchedulerTest, RefusesBadRequests) {
  ASSERT_NO_FATAL_FAILURE(Load());
  SchedulerOptions options;
  options.max_waiting = 2;
  options.max_model_len = 64;
  ASSERT_NO_FATAL_FAILURE(MakeScheduler(options));
  auto submit = [&](SchedulerRequest r) {
    return scheduler_->Submit(std::move(r), [](const RequestOutput&) {});
  };
  SchedulerRequest empty = Greedy("e", "x", 4);
  empty.prompt.clear();
  EXPECT_TRUE(absl::IsInvalidArgument(submit(empty)));
  SchedulerRequest bad_id = Greedy("b", "x", 4);
  bad_id.prompt.push_back(100000);
  EXPECT_TRUE(absl::IsInvalidArgument(submit(bad_id)));
  SchedulerRequest too_long = Greedy("t", "Once upon a time", 60);
  EXPECT_TRUE(absl::IsInvalidArgument(submit(too_long)));
  SchedulerRequest bad_policy = Greedy("p", "x", 4);
  bad_policy.kv_policy = "nonsense:x=1";
  EXPECT_TRUE(absl::IsInvalidArgument(submit(bad_policy)));
  SchedulerRequest bad_temperature = Greedy("t2", "x", 4);
  bad_temperature.sampling.temperature = -1;
  EXPECT_TRUE(absl::IsInvalidArgument(submit(bad_temperature)));
  EXPECT_TRUE(submit(Greedy("one", "x", 4)).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(submit(Greedy("one", "y", 4))));
  EXPECT_TRUE(submit(Greedy("two", "x", 4)).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(submit(Greedy("three", "x", 4))));  // queue full
  SchedulerOptions bad;
  bad.max_num_seqs = 0;
  EXPECT_FALSE(Scheduler::Create(*engine_, bad).ok());
  bad = {};
  bad.max_model_len = 1 << 20;
  EXPECT_FALSE(Scheduler::Create(*engine_, bad).ok());
}

TEST_F(SchedulerTest, StopStringsMatchGenerate) {
  ASSERT_NO_FATAL_FAILURE(Load());
  ASSERT_NO_FATAL_FAILURE(MakeScheduler());
  SchedulerRequest probe = Greedy("probe", "Once upon a time", 40);
  const GenerateResult free_run = Reference(probe);
  // A word from the middle of the greedy output becomes the stop string.
  const size_t at = free_run.text.find(' ', free_run.text.size() / 2);
  ASSERT_NE(at, std::string::npos);
  const std::string stop = free_run.text.substr(at, 4);
  SchedulerRequest r = probe;
  r.id = "stopped";
  r.stop = {stop, "never appears"};
  const GenerateResult ref = Reference(r);
  ASSERT_EQ(ref.finish_reason, "stop");
  Submit(r);
  RunAll();
  const Collected& c = results_["stopped"];
  EXPECT_EQ(c.text, ref.text);
  EXPECT_EQ(c.text.find(stop), std::string::npos);
  EXPECT_EQ(c.finish_reason, "stop");
  EXPECT_EQ(c.ids, ref.ids);
}

TEST_F(SchedulerTest, LogprobsAreNormalizedAndRanked) {
  ASSERT_NO_FATAL_FAILURE(Load());
  ASSERT_NO_FATAL_FAILURE(MakeScheduler());
  SchedulerRequest r = Greedy("lp", "Once upon a time", 8);
  r.ignore_eos = true;
  r.logprobs = 3;
  Submit(r);
  RunAll();
  const Collected& c = results_["lp"];
  ASSERT_EQ(c.logprobs.size(), c.ids.size());
  ASSERT_EQ(c.ids.size(), 8u);
  for (size_t i = 0; i < c.ids.size(); ++i) {
    const TokenLogprobs& lp = c.logprobs[i];
    EXPECT_EQ(lp.id, c.ids[i]);
    EXPECT_LE(lp.logprob, 0.0f);
    ASSERT_EQ(lp.top.size(), 3u);
    EXPECT_GE(lp.top[0].second, lp.top[1].second);
    EXPECT_GE(lp.top[1].second, lp.top[2].second);
    // Greedy picks the most likely token.
    EXPECT_EQ(lp.top[0].first, lp.id);
    EXPECT_FLOAT_EQ(lp.top[0].second, lp.logprob);
    EXPECT_GT(lp.logprob, -20.0f);
  }
}

TEST_F(SchedulerTest, SeededSamplingIsReproducibleAndMatchesGenerate) {
  ASSERT_NO_FATAL_FAILURE(Load());
  ASSERT_NO_FATAL_FAILURE(MakeScheduler());
  SchedulerRequest r = Greedy("s1", "Once upon a time", 30);
  r.sampling = SamplingParams();
  r.sampling.temperature = 0.9f;
  r.sampling.seed = 42;
  const GenerateResult ref = Reference(r);
  SchedulerRequest again = r;
  again.id = "s2";
  Submit(r);
  Submit(again);
  RunAll();
  EXPECT_EQ(results_["s1"].ids, ref.ids);
  EXPECT_EQ(results_["s2"].ids, ref.ids);
}

// The stats count what the running sequences of each policy kind hold against a full cache.
TEST_F(SchedulerTest, KvBytesByPolicyKind) {
  Load();
  MakeScheduler();
  SchedulerRequest full = Greedy("full", "Once upon a time, there was a little girl", 40);
  full.ignore_eos = true;
  SchedulerRequest h2o = full;
  h2o.id = "h2o";
  h2o.kv_policy = "h2o:budget=8,recent=4";
  // The configured default (full) is listed from the start, with nothing held.
  EXPECT_EQ(scheduler_->stats().kv_by_policy.at("full").bytes, 0);
  Submit(full);
  Submit(h2o);
  for (int i = 0; i < 30; ++i) scheduler_->Step();
  const SchedulerStats s = scheduler_->stats();
  ASSERT_EQ(s.kv_by_policy.size(), 2u);
  const PolicyKvBytes& f = s.kv_by_policy.at("full");
  const PolicyKvBytes& h = s.kv_by_policy.at("h2o");
  EXPECT_EQ(f.sequences, 1);
  EXPECT_GT(f.bytes, 0);
  EXPECT_EQ(f.bytes, f.full_bytes);
  EXPECT_EQ(h.sequences, 1);
  EXPECT_EQ(h.full_bytes, f.full_bytes);  // the same tokens so far
  EXPECT_LT(h.bytes, h.full_bytes / 2);   // 8 slots per head against 30-odd tokens
  // Over the steps so far, h2o held well under half of what full did.
  EXPECT_GT(f.byte_steps, 0);
  EXPECT_EQ(f.byte_steps, f.full_byte_steps);
  EXPECT_LT(h.byte_steps, h.full_byte_steps / 2);
  RunAll();
  // Idle kinds stay listed with nothing held; their totals remain.
  const SchedulerStats idle = scheduler_->stats();
  EXPECT_EQ(idle.kv_by_policy.at("h2o").bytes, 0);
  EXPECT_EQ(idle.kv_by_policy.at("h2o").sequences, 0);
  EXPECT_GE(idle.kv_by_policy.at("h2o").byte_steps, h.byte_steps);
}

// Admission by the policy's real footprint: in the same KV memory, a policy that keeps a
// quarter of the tokens runs at least 3.5x the sequences of full at once (admitting each as if
// it held a full cache would stop it at about 2.5x), and every request still finishes.
TEST_F(SchedulerTest, ACompressingPolicyRunsMoreSequencesInTheSameMemory) {
  // 2000 pages of 512 bytes; a block of 16 tokens is 40 pages under full. A 240-token prompt
  // holds 15-16 blocks under full (600-640 pages) and 4 under streaming's 64 slots (160 pages).
  ASSERT_NO_FATAL_FAILURE(Load(2000 * 512));
  ASSERT_EQ(engine_->cache().pool().capacity_pages(), 2000);
  SchedulerOptions options;
  options.max_num_seqs = 32;
  ASSERT_NO_FATAL_FAILURE(MakeScheduler(options));
  const std::vector<int32_t> long_prompt = Sentences(240);
  std::map<std::string, int32_t> most_running;
  for (const std::string policy : {"full", "streaming:sink=4,window=60"}) {
    for (int i = 0; i < 16; ++i) {
      SchedulerRequest r;
      r.id = absl::StrCat(policy, "-", i);
      r.prompt = long_prompt;
      r.prompt[1] = 10 + i;  // a prompt of its own
      r.sampling = SamplingParams::Greedy();
      r.max_tokens = 16;
      r.ignore_eos = true;
      r.kv_policy = policy;
      Submit(r);
    }
    int32_t& most = most_running[policy];
    for (int steps = 0; scheduler_->Step() && steps < 100000; ++steps) {
      most = std::max(most, scheduler_->stats().running);
    }
    for (int i = 0; i < 16; ++i) {
      const Collected& c = results_[absl::StrCat(policy, "-", i)];
      EXPECT_TRUE(c.finished && c.status.ok()) << policy << " " << i << ": " << c.status;
      EXPECT_EQ(c.ids.size(), 16u);
    }
    EXPECT_EQ(engine_->cache().pool().pages_used(), 0);
  }
  EXPECT_GE(most_running["full"], 2);
  EXPECT_GE(most_running["streaming:sink=4,window=60"], 3.5 * most_running["full"])
      << "full ran " << most_running["full"] << " at once, streaming "
      << most_running["streaming:sink=4,window=60"];
}

// What admission plans for each policy: a bound on what the policy holds after a prompt where
// it has one, and less than full for every compressing policy.
TEST_F(SchedulerTest, PlannedPagesBoundWhatEachPolicyHolds) {
  ASSERT_NO_FATAL_FAILURE(Load());
  kvcache::KvCache& cache = engine_->cache();
  const kvcache::KvGeometry& g = cache.geometry();
  const int32_t page = cache.pool().page_size();
  std::vector<int32_t> prompt;
  for (int i = 0; prompt.size() < 240; ++i) prompt.push_back(10 + (i * 7) % 200);
  const int64_t full = kvcache::UniformTablePages(g, page, 240);
  for (const char* spec :
       {"full", "streaming:sink=4,window=60", "h2o:budget=48,recent=8", "lococo:slots=48,chunk=8",
        "pod:sink=4,window=60", "dmc:mode=free,ratio=4"}) {
    SCOPED_TRACE(spec);
    auto policy = engine_->Policy(spec);
    ASSERT_TRUE(policy.ok()) << policy.status();
    kvcache::SequenceKv& seq = cache.CreateSequence(*policy);
    std::vector<float> logits;
    for (size_t begin = 0; begin < prompt.size(); begin += 64) {
      const size_t n = std::min<size_t>(64, prompt.size() - begin);
      StepSequence step{&seq, std::span<const int32_t>(prompt).subspan(begin, n), false};
      ASSERT_TRUE(engine_->runner().Forward({&step, 1}, logits).ok());
    }
    const int64_t held =
        cache.Usage(seq).page_bytes / static_cast<int64_t>(cache.pool().page_bytes());
    const int64_t planned = (*policy)->PlannedPages(g, page, 240);
    if (std::string_view(spec) == "full") {
      EXPECT_EQ(planned, full);
    } else {
      EXPECT_LT(planned, full);
    }
    // DMC steers toward its ratio without a bound; the others cannot hold more than planned.
    if (!absl::StartsWith(spec, "dmc")) {
      EXPECT_LE(held, planned);
    }
    cache.FreeSequence(seq.id());
  }
}

// Prefix caching: a request whose prompt starts like an earlier one's takes the KV of the
// common whole blocks from the cache and gives the output of a cold run; the hits are counted
// in tokens; another salt (tenant) finds nothing; what only the cache holds is not counted as
// used and goes back when wanted.
TEST_F(SchedulerTest, ACachedPrefixGivesTheColdOutput) {
  ASSERT_NO_FATAL_FAILURE(Load());
  SchedulerOptions options;
  options.enable_prefix_caching = true;
  options.prefill_chunk = 32;
  ASSERT_NO_FATAL_FAILURE(MakeScheduler(options));
  const std::vector<int32_t> prompt = Sentences(70);
  SchedulerRequest a = Greedy("a", "", 20);
  a.prompt = prompt;
  SchedulerRequest b = a;  // the first 50 tokens of a, then its own
  b.id = "b";
  b.prompt.resize(50);
  for (int32_t id : Encode("The little dog ran to the big tree and")) b.prompt.push_back(id);
  const GenerateResult ref_a = Reference(a), ref_b = Reference(b);
  Submit(a);
  RunAll();
  EXPECT_EQ(scheduler_->stats().prefix_cache_queries_total, 70);
  EXPECT_EQ(scheduler_->stats().prefix_cache_hits_total, 0);
  Submit(b);
  RunAll();
  EXPECT_EQ(scheduler_->stats().prefix_cache_hits_total, 48);  // 3 whole blocks of 16
  EXPECT_EQ(results_["b"].ids, ref_b.ids);
  EXPECT_EQ(results_["b"].text, ref_b.text);
  // a again: its 4 whole prompt blocks (the last token is always computed).
  SchedulerRequest again = a;
  again.id = "a2";
  Submit(again);
  RunAll();
  EXPECT_EQ(scheduler_->stats().prefix_cache_hits_total, 48 + 64);
  EXPECT_EQ(results_["a2"].ids, ref_a.ids);
  EXPECT_EQ(results_["a"].ids, ref_a.ids);
  // Another tenant's salt: no hit, the same output.
  SchedulerRequest salted = a;
  salted.id = "a3";
  salted.cache_salt = 7;
  Submit(salted);
  RunAll();
  EXPECT_EQ(scheduler_->stats().prefix_cache_hits_total, 48 + 64);
  EXPECT_EQ(results_["a3"].ids, ref_a.ids);
  // Idle: every page left is the cache's alone, reported as free.
  const SchedulerStats idle = scheduler_->stats();
  EXPECT_EQ(idle.kv_pages_used, 0);
  EXPECT_GT(idle.prefix_cache_pages, 0);
  EXPECT_EQ(idle.prefix_cache_pages, engine_->cache().pool().pages_used());
}

// The compressing policies reuse a prefix through whole-sequence snapshots taken where prefill
// chunks are cut for them (every interval, here every block): a request that shares 50 tokens
// restores the snapshot of the first 48 and gives the cold output, the same prompt again
// restores its last whole block's, another tenant hits nothing.
TEST_F(SchedulerTest, ACompressingPolicyReusesAPrefixThroughSnapshots) {
  ASSERT_NO_FATAL_FAILURE(Load());
  const std::vector<int32_t> prompt = Sentences(70);
  for (const std::string policy :
       {"streaming:sink=4,window=16", "h2o:budget=24,recent=8", "dmc:mode=free,ratio=3",
        "pod:sink=4,window=16", "lococo:slots=16,chunk=4"}) {
    SCOPED_TRACE(policy);
    SchedulerOptions options;
    options.enable_prefix_caching = true;
    options.prefix_snapshot_interval = 16;  // chunks cut to snapshots at 16, 32, 48 and 64
    ASSERT_NO_FATAL_FAILURE(MakeScheduler(options));
    results_.clear();
    SchedulerRequest a = Greedy("a", "", 20);
    a.prompt = prompt;
    a.kv_policy = policy;
    SchedulerRequest b = a;  // the first 50 tokens of a, then its own
    b.id = "b";
    b.prompt.resize(50);
    for (int32_t id : Encode("The little dog ran to the big tree and")) b.prompt.push_back(id);
    auto cold = [&](const SchedulerRequest& r) {
      GenerateRequest g;
      g.prompt = r.prompt;
      g.sampling = r.sampling;
      g.max_tokens = r.max_tokens;
      g.kv_policy = policy;
      auto result = Generate(*engine_, g);
      EXPECT_TRUE(result.ok()) << result.status();
      return result.ok() ? result->ids : std::vector<int32_t>();
    };
    const std::vector<int32_t> ref_a = cold(a), ref_b = cold(b);
    Submit(a);
    RunAll();
    EXPECT_EQ(scheduler_->stats().prefix_cache_hits_total, 0);
    Submit(b);
    RunAll();
    EXPECT_EQ(scheduler_->stats().prefix_cache_hits_total, 48);
    SchedulerRequest again = a;
    again.id = "a2";
    Submit(again);
    RunAll();
    EXPECT_EQ(scheduler_->stats().prefix_cache_hits_total, 48 + 64);
    SchedulerRequest salted = a;
    salted.id = "a3";
    salted.cache_salt = 7;
    Submit(salted);
    RunAll();
    EXPECT_EQ(scheduler_->stats().prefix_cache_hits_total, 48 + 64);
    for (const char* id : {"a", "a2", "a3"}) EXPECT_EQ(results_[id].ids, ref_a) << id;
    EXPECT_EQ(results_["b"].ids, ref_b);
    EXPECT_EQ(engine_->cache().num_sequences(), 0u);
    scheduler_.reset();
  }
}

// Under memory pressure the cache gives its blocks back before running sequences are
// preempted, and outputs stay those of cold runs.
TEST_F(SchedulerTest, PrefixCachingUnderMemoryPressureKeepsTheOutput) {
  ASSERT_NO_FATAL_FAILURE(Load(600 * 512));  // 15 blocks of 16 tokens
  SchedulerOptions options;
  options.enable_prefix_caching = true;
  ASSERT_NO_FATAL_FAILURE(MakeScheduler(options));
  std::vector<SchedulerRequest> requests;
  std::vector<GenerateResult> refs;
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 4; ++i) {
      // About 40 tokens: two whole blocks to share.
      std::string text;
      for (int k = 0; k < 5; ++k) text += std::string(kPrompts[(i + k) % 6]) + ". ";
      SchedulerRequest r = Greedy(absl::StrCat("p", round, "-", i), text, 100);
      r.ignore_eos = true;
      requests.push_back(r);
      refs.push_back(Reference(r));
    }
  }
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 4; ++i) Submit(requests[round * 4 + i]);
    RunAll();
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    const Collected& c = results_[requests[i].id];
    EXPECT_TRUE(c.finished && c.status.ok()) << requests[i].id << ": " << c.status;
    EXPECT_EQ(c.ids, refs[i].ids) << requests[i].id;
  }
  EXPECT_GT(scheduler_->stats().prefix_cache_hits_total, 0);
  EXPECT_GT(scheduler_->stats().preemptions_total, 0);
  EXPECT_EQ(scheduler_->stats().kv_pages_used, 0);
}

TEST_F(SchedulerTest, ZeroMaxTokensAndCancelAll) {
  ASSERT_NO_FATAL_FAILURE(Load());
  ASSERT_NO_FATAL_FAILURE(MakeScheduler());
  Submit(Greedy("zero", "Once upon a time", 0));
  RunAll();
  EXPECT_TRUE(results_["zero"].finished);
  EXPECT_EQ(results_["zero"].finish_reason, "length");
  EXPECT_TRUE(results_["zero"].ids.empty());
  SchedulerRequest r = Greedy("live", "Once upon a time", 200);
  r.ignore_eos = true;
  Submit(r);
  scheduler_->Step();
  Submit(Greedy("queued", "The dog", 5));
  scheduler_->CancelAll(absl::UnavailableError("shutting down"));
  for (const char* id : {"live", "queued"}) {
    EXPECT_TRUE(results_[id].finished) << id;
    EXPECT_EQ(results_[id].last_state, RequestState::kFailed) << id;
    EXPECT_TRUE(absl::IsUnavailable(results_[id].status)) << id;
  }
  EXPECT_EQ(engine_->cache().pool().pages_used(), 0);
  EXPECT_FALSE(scheduler_->Step());
}

}  // namespace
}  // namespace kvasir::worker::service
