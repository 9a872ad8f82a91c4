// Failures with real processes: a client that hangs up frees the worker's KV, and a worker killed
// with SIGKILL mid-request is marked dead, its in-flight requests resume on the live worker from
// the tokens they had delivered, and new requests go to the live worker. Workers run with a
// per-step delay so that requests stay in flight long enough to interfere with.
#include <thread>

#include "gtest/gtest.h"
#include "tests/integration/cluster.h"

namespace kvasir::integration {
namespace {

TEST(FailureTest, ClientDisconnectCancelsTheGenerationAndFreesKv) {
  auto cluster = Cluster::Start({.worker_args = {"--debug-step-delay-ms", "20"}});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  for (const bool stream : {true, false}) {
    SCOPED_TRACE(stream ? "streaming" : "not streaming");
    transport::http::HttpClientRequest request;
    request.method = "POST";
    request.target = "/v1/completions";
    request.body = json{
        {"prompt", "Once upon a time"},
        {"max_tokens", 1500},
        {"ignore_eos", true},
        {"stream",
         stream}}.dump();
    std::unique_ptr<transport::http::HttpClientStream> client;
    std::thread impatient;
    if (stream) {
      auto s = transport::http::HttpClientStream::Open("127.0.0.1", c.port(), request,
                                                       absl::Seconds(30));
      ASSERT_TRUE(s.ok()) << s.status();
      client = std::move(*s);
      auto first = client->Read(absl::Seconds(10));
      ASSERT_TRUE(first.ok()) << first.status();
    } else {
      // The header of a non-streamed answer only comes at the end: give up after 2 s.
      impatient = std::thread([&] {
        auto s = transport::http::HttpClientStream::Open("127.0.0.1", c.port(), request,
                                                         absl::Seconds(2));
        EXPECT_FALSE(s.ok());
      });
    }
    // The worker holds the request and its KV...
    EXPECT_TRUE(Eventually(
        [&] {
          const std::string m = c.WorkerMetrics(0);
          return MetricValue(m, "kvasir_num_requests_running") == 1 &&
                 MetricValue(m, "kvasir_kv_cache_usage_perc{worker=\"worker-0\"}").value_or(0) > 0;
        },
        absl::Seconds(2)));
    if (client) client->Close();
    if (impatient.joinable()) impatient.join();
    // ... and lets go of both soon after the client is gone, long before the 1500 tokens.
    const absl::Time hung_up = absl::Now();
    EXPECT_TRUE(Eventually(
        [&] {
          const std::string m = c.WorkerMetrics(0);
          return MetricValue(m, "kvasir_num_requests_running") == 0 &&
                 MetricValue(m, "kvasir_kv_cache_usage_perc{worker=\"worker-0\"}") == 0;
        },
        absl::Seconds(5)));
    EXPECT_LT(absl::Now() - hung_up, absl::Seconds(5));
    EXPECT_LT(MetricValue(c.WorkerMetrics(0), "kvasir_generation_tokens_total").value_or(1e9),
              1500 * 2);
  }
  EXPECT_TRUE(Eventually(
      [&] {
        return MetricValue(c.Get("/metrics").body,
                           "kvasir_request_failure_total{reason=\"cancelled\"}") == 2;
      },
      absl::Seconds(5)));
}

struct Outcome {
  bool done = false;
  bool ok = false;           // completed normally
  bool clean_error = false;  // an OpenAI error object (JSON, or an SSE data line)
  std::string detail;
  absl::Duration took;
};

TEST(FailureTest, WorkerKilledMidRequest) {
  auto cluster = Cluster::Start({.workers = 2, .worker_args = {"--debug-step-delay-ms", "15"}});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  constexpr int kRequests = 4;
  std::vector<Outcome> outcomes(kRequests);
  std::vector<std::thread> threads;
  std::atomic<int> started{0};
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      const bool stream = i % 2 == 0;
      const absl::Time t0 = absl::Now();
      Outcome& o = outcomes[i];
      const json body = {{"prompt", "Once upon a time"},
                         {"max_tokens", 300},
                         {"ignore_eos", true},
                         {"stream", stream}};
      if (stream) {
        auto s = c.OpenStream("/v1/completions", body);
        if (!s.ok()) {
          o.detail = s.status().ToString();
          o.done = true;
          return;
        }
        ++started;
        auto all = (*s)->ReadAll(absl::Seconds(30));
        o.took = absl::Now() - t0;
        o.done = all.ok();
        if (!all.ok()) {
          o.detail = all.status().ToString();
          return;
        }
        bool framing_ok = false;
        std::vector<std::string> events = SseEvents(*all, &framing_ok);
        o.detail = *all;
        if (!framing_ok || events.empty() || events.back() != "[DONE]") return;
        json last =
            json::parse(events.size() >= 2 ? events[events.size() - 2] : "", nullptr, false);
        if (last.is_object() && last.contains("error")) {
          o.clean_error = last["error"]["message"].is_string() && last["error"]["type"].is_string();
        } else {
          o.ok = true;
        }
      } else {
        ++started;
        HttpResult r = c.Post("/v1/completions", body, {}, absl::Seconds(30));
        o.took = absl::Now() - t0;
        o.done = r.status > 0;
        o.detail = r.body;
        o.ok = r.status == 200;
        o.clean_error = r.status == 503 && r.j.is_object() && r.j.contains("error") &&
                        r.j["error"]["code"] == "service_unavailable";
      }
    });
  }
  // Both workers are busy with two requests each, then one dies.
  ASSERT_TRUE(Eventually(
      [&] {
        return started.load() == kRequests &&
               MetricValue(c.WorkerMetrics(0), "kvasir_num_requests_running").value_or(0) >= 1 &&
               MetricValue(c.WorkerMetrics(1), "kvasir_num_requests_running").value_or(0) >= 1;
      },
      absl::Seconds(10)));
  absl::SleepFor(absl::Milliseconds(200));
  c.worker(0).Signal(SIGKILL);
  const absl::Time killed = absl::Now();
  for (auto& t : threads) t.join();
  int ok = 0, clean = 0;
  for (int i = 0; i < kRequests; ++i) {
    const Outcome& o = outcomes[i];
    EXPECT_TRUE(o.done) << i << ": " << o.detail;
    EXPECT_TRUE(o.ok || o.clean_error) << i << ": " << o.detail;
    ok += o.ok;
    clean += o.clean_error;
  }
  // The killed worker's requests resumed on the live one from the tokens they had delivered.
  EXPECT_EQ(ok, kRequests);
  EXPECT_EQ(clean, 0);
  std::printf("worker killed: %d requests failed cleanly, %d finished; all done %.2f s after\n",
              clean, ok, absl::ToDoubleSeconds(absl::Now() - killed));
  EXPECT_GE(
      MetricValue(c.Get("/metrics").body, "kvasir_request_resumes_total{reason=\"worker_lost\"}")
          .value_or(0),
      1);

  // The coordinator marks it dead ...
  EXPECT_TRUE(Eventually(
      [&] {
        HttpResult ready = c.Get("/ready");
        return ready.status == 200 && ready.j["workers_ready"] == 1 &&
               ready.j["workers"].size() == 1;
      },
      absl::Seconds(5)));
  EXPECT_GE(MetricValue(c.Get("/metrics").body, "kvasir_worker_deaths_total").value_or(0), 1);
  // ... and new requests go to the live worker.
  for (int i = 0; i < 4; ++i) {
    HttpResult r = c.Post("/v1/completions", {{"prompt", "The dog"}, {"max_tokens", 8}});
    EXPECT_EQ(r.status, 200) << r.body;
  }
}

TEST(FailureTest, RequestsWaitingForAWorkerThatDiesAreRetriedElsewhere) {
  // One worker is stopped (SIGSTOP) so that it accepts nothing; it is killed while requests are
  // routed to it: they have produced no token, so they run again on the other worker.
  auto cluster = Cluster::Start({.workers = 2});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  c.worker(0).Signal(SIGSTOP);
  std::vector<HttpResult> results(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      results[i] = c.Post("/v1/completions", {{"prompt", "Once upon a time"}, {"max_tokens", 8}},
                          {}, absl::Seconds(30));
    });
  }
  absl::SleepFor(absl::Milliseconds(300));
  c.worker(0).Signal(SIGKILL);
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(results[i].status, 200) << results[i].body;
}

}  // namespace
}  // namespace kvasir::integration
