// Disaggregated serving under faults, with real processes (a coordinator, a cachestore, prefill
// and decode workers on stories260K): a decode worker killed mid-stream, a decode worker drained
// under load, a prefill worker killed mid-prefill and a cachestore killed under load. Every
// request ends with the text of an undisturbed run (greedy), within its deadline; the store
// keeps no lease or reservation; each departure from the plan is counted. Workers run with a
// per-step delay so that requests stay in flight long enough to interfere with.
#include <signal.h>

#include <atomic>
#include <thread>

#include "gtest/gtest.h"
#include "tests/integration/cluster.h"

namespace kvasir::integration {
namespace {

constexpr char kPrompt[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun "
    "with her big red ball. One day, she saw a small dog in the park and";

json Body(int max_tokens, bool stream) {
  return {{"prompt", kPrompt},
          {"max_tokens", max_tokens},
          {"temperature", 0},
          {"ignore_eos", true},
          {"stream", stream}};
}

struct Answer {
  int status = 0;  // 200 for a complete stream
  std::string text;
  std::string detail;
  absl::Duration took;
};

// One completion, streamed or not; a stream counts as 200 only when it ends with [DONE] and no
// error event.
Answer Complete(const Cluster& c, int max_tokens, bool stream) {
  Answer a;
  const absl::Time t0 = absl::Now();
  if (!stream) {
    HttpResult r = c.Post("/v1/completions", Body(max_tokens, false));
    a.status = r.status;
    a.detail = r.body;
    if (r.status == 200) a.text = r.j["choices"][0]["text"].get<std::string>();
    a.took = absl::Now() - t0;
    return a;
  }
  auto s = c.OpenStream("/v1/completions", Body(max_tokens, true));
  if (!s.ok()) {
    a.detail = s.status().ToString();
    return a;
  }
  auto all = (*s)->ReadAll(absl::Seconds(60));
  a.took = absl::Now() - t0;
  if (!all.ok()) {
    a.detail = all.status().ToString();
    return a;
  }
  a.detail = *all;
  bool framing_ok = false;
  const std::vector<std::string> events = SseEvents(*all, &framing_ok);
  if (!framing_ok || events.empty() || events.back() != "[DONE]") return a;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json e = json::parse(events[i], nullptr, false);
    if (!e.is_object() || e.contains("error")) return a;
    a.text += e["choices"][0]["text"].get<std::string>();
  }
  a.status = 200;
  return a;
}

class DisaggFaultTest : public ::testing::Test {
 protected:
  // A coordinator, a cachestore, `prefill` prefill workers and `decode` decode workers (worker-0
  // .. are the prefill ones, then the decode ones), each with its extra flags.
  void StartCluster(int prefill, int decode, const std::vector<std::string>& prefill_args,
                    const std::vector<std::string>& decode_args) {
    auto cluster = Cluster::Start({.workers = 0, .wait_ready = false});
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    c_ = std::move(*cluster);
    ASSERT_TRUE(c_->StartCachestore().ok());
    for (int i = 0; i < prefill + decode; ++i) {
      std::vector<std::string> args = c_->RoleArgs(i < prefill ? "prefill" : "decode");
      const auto& extra = i < prefill ? prefill_args : decode_args;
      args.insert(args.end(), extra.begin(), extra.end());
      ASSERT_TRUE(c_->AddWorker(StoriesModel(), args).ok());
    }
    ASSERT_TRUE(c_->WaitReady(prefill + decode, absl::Seconds(30)).ok());
  }

  double Metric(const std::string& series) {
    return MetricValue(c_->Get("/metrics").body, series).value_or(0);
  }

  // The store holds no lease and no reservation (within the time its releases take to land).
  void ExpectNoLeases() {
    EXPECT_TRUE(Eventually(
        [&] {
          const std::string m = c_->StoreMetrics();
          return MetricValue(m, "kvasir_cachestore_leases{kind=\"read\"}").value_or(-1) == 0 &&
                 MetricValue(m, "kvasir_cachestore_leases{kind=\"reservation\"}").value_or(-1) ==
                     0 &&
                 MetricValue(m, "kvasir_cachestore_reserved_bytes").value_or(-1) == 0;
        },
        absl::Seconds(5)))
        << c_->StoreMetrics();
  }

  // Waits until worker `i` runs at least one request.
  bool Running(int i) {
    return Eventually(
        [&] {
          return MetricValue(c_->WorkerMetrics(i), "kvasir_num_requests_running").value_or(0) >= 1;
        },
        absl::Seconds(10));
  }

  std::unique_ptr<Cluster> c_;
};

// Killed after it streamed tokens, a decode worker's requests resume on the other decode worker
// from the tokens delivered: no token repeated or lost, the same text as an undisturbed run.
TEST_F(DisaggFaultTest, DecodeWorkerKilledMidStreamResumesOnAnother) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(1, 2, {}, {"--debug-step-delay-ms", "20"}));
  const Answer reference = Complete(*c_, 80, false);
  ASSERT_EQ(reference.status, 200) << reference.detail;
  std::vector<Answer> answers(2);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] { answers[i] = Complete(*c_, 80, /*stream=*/i == 0); });
  }
  ASSERT_TRUE(Running(1) && Running(2));
  absl::SleepFor(absl::Milliseconds(300));
  c_->worker(1).Signal(SIGKILL);
  for (auto& t : threads) t.join();
  for (const Answer& a : answers) {
    EXPECT_EQ(a.status, 200) << a.detail;
    EXPECT_EQ(a.text, reference.text);
    EXPECT_LT(a.took, absl::Seconds(30));
  }
  EXPECT_GE(Metric("kvasir_request_resumes_total{reason=\"worker_lost\"}"), 1);
  ExpectNoLeases();
}

// POST /admin/drain moves a decode worker's running requests to the other one through the store
// and lets it exit: no request lost, the same text, and the drained worker is not a death.
TEST_F(DisaggFaultTest, DrainUnderLoadLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(1, 2, {}, {"--debug-step-delay-ms", "20"}));
  const Answer reference = Complete(*c_, 80, false);
  ASSERT_EQ(reference.status, 200) << reference.detail;
  // Bad drain requests are refused.
  EXPECT_EQ(c_->Post("/admin/drain", {{"worker", "nobody"}}).status, 404);
  EXPECT_EQ(c_->PostRaw("/admin/drain", "{").status, 400);
  EXPECT_EQ(c_->Get("/admin/drain").status, 405);

  constexpr int kRequests = 4;
  std::vector<Answer> answers(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] { answers[i] = Complete(*c_, 80, /*stream=*/i % 2 == 0); });
  }
  ASSERT_TRUE(Running(1) && Running(2));
  absl::SleepFor(absl::Milliseconds(300));
  HttpResult drain = c_->Post("/admin/drain", {{"worker", "worker-1"}});
  ASSERT_EQ(drain.status, 200) << drain.body;
  EXPECT_EQ(drain.j["worker"], "worker-1");
  EXPECT_GE(drain.j["live_requests"].get<int>(), 1);
  for (auto& t : threads) t.join();
  for (const Answer& a : answers) {
    EXPECT_EQ(a.status, 200) << a.detail;
    EXPECT_EQ(a.text, reference.text);
  }
  auto code = c_->worker(1).Wait(absl::Seconds(10));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  EXPECT_GE(Metric("kvasir_request_resumes_total{reason=\"drained\"}"), 1);
  // The migrated KV moved through the store (the resumed requests took it).
  EXPECT_EQ(Metric("kvasir_disagg_fallbacks_total{reason=\"not_found\"}"), 0);
  EXPECT_TRUE(Eventually(
      [&] {
        HttpResult ready = c_->Get("/ready");
        return ready.status == 200 && ready.j["workers"].size() == 2;
      },
      absl::Seconds(10)));
  EXPECT_EQ(Metric("kvasir_worker_deaths_total"), 0);
  const Answer after = Complete(*c_, 80, false);
  EXPECT_EQ(after.text, reference.text) << after.detail;
  ExpectNoLeases();
}

// A prefill worker killed mid-prefill: the decode worker recomputes the prompt, same text.
TEST_F(DisaggFaultTest, PrefillWorkerKilledMidPrefillIsRecomputed) {
  // The prompt (about 45 tokens) takes 3 steps of 16 tokens, 400 ms apart (each time: the
  // prefix cache, which would give the second run its blocks, is off).
  ASSERT_NO_FATAL_FAILURE(StartCluster(1, 1,
                                       {"--debug-step-delay-ms", "400", "--max-num-batched-tokens",
                                        "16", "--max-num-seqs", "16", "--no-prefix-caching"},
                                       {}));
  const Answer reference = Complete(*c_, 40, false);
  ASSERT_EQ(reference.status, 200) << reference.detail;
  Answer answer;
  std::thread t([&] { answer = Complete(*c_, 40, true); });
  ASSERT_TRUE(Running(0));
  absl::SleepFor(absl::Milliseconds(100));
  c_->worker(0).Signal(SIGKILL);
  t.join();
  EXPECT_EQ(answer.status, 200) << answer.detail;
  EXPECT_EQ(answer.text, reference.text);
  EXPECT_GE(Metric("kvasir_disagg_fallbacks_total{reason=\"prefill_failed\"}"), 1);
  ExpectNoLeases();
}

// With the cachestore gone, every request is still answered (the decode worker recomputes), the
// same text, within its deadline; the fallbacks are counted.
TEST_F(DisaggFaultTest, CachestoreKilledUnderLoadRequestsStillAnswered) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(1, 1, {}, {"--debug-step-delay-ms", "5"}));
  const Answer reference = Complete(*c_, 24, false);
  ASSERT_EQ(reference.status, 200) << reference.detail;
  std::atomic<bool> stop{false};
  std::vector<Answer> answers;
  absl::Mutex mu;
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      while (!stop.load()) {
        Answer a = Complete(*c_, 24, i == 0);
        absl::MutexLock lock(&mu);
        answers.push_back(std::move(a));
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(500));
  c_->cachestore().Signal(SIGKILL);
  absl::SleepFor(absl::Seconds(3));
  stop = true;
  for (auto& t : threads) t.join();
  ASSERT_GE(answers.size(), 4u);
  for (const Answer& a : answers) {
    EXPECT_EQ(a.status, 200) << a.detail;
    EXPECT_EQ(a.text, reference.text);
    EXPECT_LT(a.took, absl::Seconds(10));  // one transfer deadline (3 s) at most
  }
  const std::string m = c_->Get("/metrics").body;
  EXPECT_GE(MetricValue(m, "kvasir_disagg_fallbacks_total{reason=\"prefill_failed\"}").value_or(0),
            1)
      << m;
  // The workers no longer reach their fabric: their /ready and the coordinator's say so.
  EXPECT_TRUE(Eventually(
      [&] {
        HttpResult ready = c_->Get("/ready");
        return ready.status == 503 && ready.j.value("reason", "").find("no ready worker") == 0;
      },
      absl::Seconds(5)))
      << c_->Get("/ready").body;
}

// The coordinator is ready with a ready prefill and a ready decode worker (or a worker of role
// both), not with one role alone.
TEST_F(DisaggFaultTest, ReadyNeedsAPrefillAndADecodeWorker) {
  auto cluster = Cluster::Start({.workers = 0, .wait_ready = false});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  c_ = std::move(*cluster);
  ASSERT_TRUE(c_->StartCachestore().ok());
  ASSERT_TRUE(c_->AddWorker(StoriesModel(), c_->RoleArgs("decode")).ok());
  ASSERT_TRUE(Eventually([&] { return c_->Get("/ready").j.value("workers_ready", 0) == 1; },
                         absl::Seconds(10)));
  HttpResult alone = c_->Get("/ready");
  EXPECT_EQ(alone.status, 503);
  EXPECT_EQ(alone.j.value("reason", ""), "no ready prefill worker");
  EXPECT_EQ(alone.j["workers"][0].value("cachestore_reachable", false), true);
  ASSERT_TRUE(c_->AddWorker(StoriesModel(), c_->RoleArgs("prefill")).ok());
  ASSERT_TRUE(c_->WaitReady(2, absl::Seconds(10)).ok());
  HttpResult both = c_->Get("/ready");
  EXPECT_EQ(both.j["disaggregated"], true);
}

}  // namespace
}  // namespace kvasir::integration
