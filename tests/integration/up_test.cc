// `kvasir up` as a user runs it: a local cluster that prints where it listens once /ready
// answers, serves, and stops every process on SIGTERM (and SIGINT); its prefix cache's blocks
// outlive a restart of the whole cluster in the cachestore's disk tier.
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <map>
#include <optional>
#include <thread>

#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster.h"
#include "tests/testing/safetensors_builder.h"

namespace kvasir::integration {
namespace {

std::vector<pid_t> PidsIn(const std::vector<std::string>& lines) {
  std::vector<pid_t> pids;
  for (const std::string& line : lines) {
    int pid = 0;
    if (absl::SimpleAtoi(LineField(line, "pid"), &pid) && pid > 0) pids.push_back(pid);
  }
  return pids;
}

bool Gone(pid_t pid) { return kill(pid, 0) != 0 && errno == ESRCH; }

void RunUpAndStop(int signal) {
  Up up;
  ASSERT_NO_FATAL_FAILURE(StartUp(up));
  std::vector<pid_t> pids;
  for (const auto& [name, pid] : up.pids) pids.push_back(pid);
  ASSERT_EQ(pids.size(), 4u);  // coordinator, cachestore and two workers
  // The cachestore answers on its HTTP port.
  auto store_health = Fetch(up.store_port, "GET", "/health");
  ASSERT_TRUE(store_health.ok()) << store_health.status();
  EXPECT_EQ(store_health->status, 200);
  // It serves.
  const std::string completion = R"({"prompt": "Once upon a time", "max_tokens": 8})";
  auto r = Fetch(up.port, "POST", "/v1/completions", completion);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
  // It stops cleanly, children included.
  up.process->Signal(signal);
  auto code = up.process->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  for (pid_t pid : pids) EXPECT_TRUE(Gone(pid)) << "pid " << pid << " is still there";
  EXPECT_FALSE(Fetch(up.port, "POST", "/v1/completions", completion, absl::Seconds(2)).ok());
}

std::optional<double> Restarts(uint16_t port, const std::string& process) {
  auto m = Fetch(port, "GET", "/metrics", "", absl::Seconds(5));
  if (!m.ok() || m->status != 200) return std::nullopt;
  return MetricValue(m->body, "kvasir_process_restarts_total{process=\"" + process + "\"}");
}

bool ReadyWithTwoWorkers(uint16_t port) {
  auto r = Fetch(port, "GET", "/ready", "", absl::Seconds(2));
  if (!r.ok() || r->status != 200) return false;
  const json j = json::parse(r->body, nullptr, false);
  return j.is_object() && j.contains("workers_ready") && j["workers_ready"] == 2;
}

// kill -9 of a worker, of the cachestore and of the coordinator under a steady load: each comes
// back within seconds (the coordinator and the cachestore on their old ports), the restarts are
// counted in /metrics, and every request ends (answered or cleanly refused) before its deadline.
TEST(UpTest, SurvivesKillOfEachKindOfChildUnderLoad) {
  Up up;
  ASSERT_NO_FATAL_FAILURE(StartUp(up));
  ASSERT_EQ(up.pids.size(), 4u);
  // Every series exists from the start, at 0.
  ASSERT_TRUE(Eventually([&] { return Restarts(up.port, "worker-0") == 0; }, absl::Seconds(10)));

  // Load: four clients in a loop, each request with a 30 s deadline of its own.
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, refused{0}, hung{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        const absl::Time begin = absl::Now();
        auto r = Fetch(up.port, "POST", "/v1/completions",
                       R"({"prompt": "Once upon a time", "max_tokens": 24})", absl::Seconds(30));
        const bool late = absl::Now() - begin >= absl::Seconds(29);
        if (late || (!r.ok() && r.status().code() == absl::StatusCode::kDeadlineExceeded)) {
          ++hung;
        } else if (r.ok() && r->status == 200) {
          ++ok;
        } else {
          ++refused;  // a clean error (503 while no worker could take it, or connection refused)
          absl::SleepFor(absl::Milliseconds(50));
        }
      }
    });
  }
  absl::SleepFor(absl::Seconds(1));

  for (const std::string& victim : {"worker-0", "cachestore", "coordinator"}) {
    SCOPED_TRACE(victim);
    const int ok_before = ok.load();
    ASSERT_EQ(kill(up.pids[victim], SIGKILL), 0);
    const absl::Time killed = absl::Now();
    EXPECT_TRUE(Eventually([&] { return Restarts(up.port, victim) == 1; }, absl::Seconds(30)));
    EXPECT_TRUE(Eventually([&] { return ReadyWithTwoWorkers(up.port); }, absl::Seconds(30)));
    if (victim == "cachestore") {
      EXPECT_TRUE(Eventually(
          [&] {
            auto h = Fetch(up.store_port, "GET", "/health", "", absl::Seconds(2));
            return h.ok() && h->status == 200;
          },
          absl::Seconds(30)));
    }
    // Serving again: requests complete after the restart.
    EXPECT_TRUE(Eventually([&] { return ok.load() > ok_before + 4; }, absl::Seconds(30)));
    std::fprintf(stderr, "%s: back and serving %.1f s after kill -9\n", victim.c_str(),
                 absl::ToDoubleSeconds(absl::Now() - killed));
  }
  stop = true;
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(hung.load(), 0);
  EXPECT_GT(ok.load(), 10);
  std::fprintf(stderr, "requests: %d answered, %d refused cleanly, %d hung\n", ok.load(),
               refused.load(), hung.load());
  // Only the victims were restarted.
  EXPECT_EQ(Restarts(up.port, "worker-1"), 0);

  up.process->Signal(SIGTERM);
  auto code = up.process->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  EXPECT_FALSE(Fetch(up.port, "GET", "/health", "", absl::Seconds(2)).ok());
}

// Greedy completions through a disaggregated cluster (1 prefill worker, 1 decode worker, the KV
// moving through the cachestore) equal `kvasir generate` for every policy; the KV did move (bytes
// counted, no fallback); and after kill -9 of the prefill worker and then of the decode worker
// every request is still answered with the same text (recomputed on the decode worker while the
// prefill worker is down, counted as a fallback).
TEST(UpTest, DisaggregatedGreedyEqualsGenerateAndSurvivesKills) {
  Up up;
  ASSERT_NO_FATAL_FAILURE(StartUp(up, {"--prefill-workers", "1", "--decode-workers", "1"}));
  ASSERT_TRUE(up.pids.count("prefill-0") && up.pids.count("decode-0"));
  const std::string prompt =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "sun with her big red ball. One day, she saw a small dog in the park and";
  auto complete = [&](const std::string& policy) -> std::string {
    json body = {{"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}};
    if (!policy.empty()) body["kv_policy"] = policy;
    auto r = Fetch(up.port, "POST", "/v1/completions", body.dump());
    if (!r.ok()) return "error: " + r.status().ToString();
    const json j = json::parse(r->body, nullptr, false);
    if (r->status != 200 || !j.is_object()) return "error: " + r->body;
    return j["choices"][0]["text"].get<std::string>();
  };
  for (const std::string policy :
       {"full", "streaming:sink=4,window=16", "h2o:budget=24,recent=8", "dmc:mode=free,ratio=3",
        "pod:sink=4,window=16", "lococo:slots=16,chunk=4"}) {
    SCOPED_TRACE(policy);
    auto expected = KvasirGenerate({"--model", StoriesModel(), "--prompt", prompt, "--max-tokens",
                                    "24", "--temperature", "0", "--kv", policy});
    ASSERT_TRUE(expected.ok()) << expected.status();
    EXPECT_EQ(complete(policy), (*expected)["text"].get<std::string>());
  }
  auto metrics = Fetch(up.port, "GET", "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_GT(MetricValue(metrics->body, "kvasir_kv_transfer_bytes_total").value_or(0), 0)
      << metrics->body;
  EXPECT_FALSE(MetricValue(metrics->body, "kvasir_disagg_fallbacks_total").has_value())
      << metrics->body;
  // One push and one pull per completion.
  EXPECT_GE(MetricValue(metrics->body, "kvasir_kv_transfer_seconds_count").value_or(0), 12)
      << metrics->body;
  EXPECT_EQ(MetricValue(metrics->body, "kvasir_num_workers_by_role{role=\"decode\"}"), 1);
  EXPECT_EQ(MetricValue(metrics->body, "kvasir_num_workers_by_role{role=\"prefill\"}"), 1);

  const std::string reference = complete("");
  ASSERT_EQ(reference.rfind("error", 0), std::string::npos) << reference;
  for (const std::string victim : {"prefill-0", "decode-0"}) {
    SCOPED_TRACE(victim);
    ASSERT_EQ(kill(up.pids[victim], SIGKILL), 0);
    // Answered throughout, the same text each time (a request may fail cleanly while the only
    // decode worker is down, never hang).
    int answered = 0;
    const absl::Time until = absl::Now() + absl::Seconds(4);
    while (absl::Now() < until) {
      const std::string text = complete("");
      if (text.rfind("error", 0) != 0) {
        EXPECT_EQ(text, reference);
        ++answered;
      }
    }
    EXPECT_GT(answered, 0);
    EXPECT_TRUE(Eventually([&] { return Restarts(up.port, victim) == 1; }, absl::Seconds(30)));
    EXPECT_TRUE(Eventually([&] { return ReadyWithTwoWorkers(up.port); }, absl::Seconds(30)));
    EXPECT_EQ(complete(""), reference);
  }
  up.process->Signal(SIGTERM);
  auto code = up.process->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
}

TEST(UpTest, StartsServesAndStopsOnSigterm) { RunUpAndStop(SIGTERM); }

TEST(UpTest, StopsOnCtrlC) { RunUpAndStop(SIGINT); }

// The prefix cache's store tier across a restart of the whole cluster: the blocks a first
// `kvasir up` computed are written to the cachestore's disk tier; a second one, started afresh
// on the same directory, takes them from there (counted as store hits on its worker) and answers
// as the first did.
TEST(UpTest, PrefixBlocksSurviveARestartOfTheWholeCluster) {
  testing::ScopedTempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::string prompt = "Once upon a time, there was a little girl named Lily.";
  while (prompt.size() < 400) prompt += " She liked to play in the park with her friends.";
  const std::string body =
      absl::StrCat(R"({"prompt": ")", prompt, R"(", "max_tokens": 8, "temperature": 0})");
  auto text_of = [](const std::string& reply) {
    const json j = json::parse(reply, nullptr, false);
    return j.is_object() && j.contains("choices") ? j["choices"][0]["text"].get<std::string>()
                                                  : std::string("<no text>");
  };
  auto block_files = [&dir] {
    int n = 0;
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir.path())) {
      n += e.path().extension() == ".kvb" ? 1 : 0;
    }
    return n;
  };
  auto worker_metric = [](const Up& up, const std::string& series) -> std::optional<double> {
    for (const std::string& line : up.lines) {
      if (!absl::StartsWith(line, "kvasir up: worker-0 ")) continue;
      auto m = Fetch(PortOf(LineField(line, "http")), "GET", "/metrics", "", absl::Seconds(5));
      if (m.ok() && m->status == 200) return MetricValue(m->body, series);
    }
    return std::nullopt;
  };
  const std::vector<std::string> flags = {"--workers", "1", "--cachestore-disk-dir", dir.path()};
  std::string first_text;
  {
    Up up;
    ASSERT_NO_FATAL_FAILURE(StartUp(up, flags));
    auto r = Fetch(up.port, "POST", "/v1/completions", body);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->status, 200) << r->body;
    first_text = text_of(r->body);
    // Every block the worker computed reaches the disk.
    ASSERT_TRUE(Eventually(
        [&] {
          auto written =
              worker_metric(up, "kvasir_prefix_cache_store_writes_total{result=\"written\"}");
          return written.has_value() && *written >= 4 && block_files() >= *written;
        },
        absl::Seconds(20)));
    up.process->Signal(SIGTERM);
    auto code = up.process->Wait(absl::Seconds(30));
    ASSERT_TRUE(code.ok()) << code.status();
  }
  Up up;
  ASSERT_NO_FATAL_FAILURE(StartUp(up, flags));
  auto r = Fetch(up.port, "POST", "/v1/completions", body);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(text_of(r->body), first_text);
  const std::optional<double> hits =
      worker_metric(up, "kvasir_prefix_cache_hits_total{tier=\"store\"}");
  ASSERT_TRUE(hits.has_value());
  EXPECT_GE(*hits, 64);  // at least 4 blocks of 16 tokens
  up.process->Signal(SIGTERM);
  EXPECT_TRUE(up.process->Wait(absl::Seconds(30)).ok());
}

TEST(UpTest, RefusesBadOptions) {
  auto up = transport::ChildProcess::Spawn({Bin("kvasir"), "up", "--workers", "0"});
  ASSERT_TRUE(up.ok());
  auto code = up->Wait(absl::Seconds(10));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 2);
  auto missing = transport::ChildProcess::Spawn(
      {Bin("kvasir"), "up", "--model", "/nonexistent/model.gguf", "--port", "0"});
  ASSERT_TRUE(missing.ok());
  code = missing->Wait(absl::Seconds(10));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 1);
}

TEST(UpTest, BinariesHaveHelp) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{Bin("kvasir-coordinator"), "--help"},
                                             {Bin("kvasir-worker"), "--help"},
                                             {Bin("kvasir"), "up", "--help"}}) {
    auto child = transport::ChildProcess::Spawn(args);
    ASSERT_TRUE(child.ok());
    auto first = child->ReadLine(absl::Seconds(10));
    ASSERT_TRUE(first.ok()) << args[0];
    EXPECT_TRUE(absl::StrContains(*first, "usage:")) << *first;
    auto code = child->Wait(absl::Seconds(10));
    ASSERT_TRUE(code.ok());
    EXPECT_EQ(*code, 0) << args[0];
  }
}

}  // namespace
}  // namespace kvasir::integration
