// `kvasir bench serve` as a user runs it: against a real coordinator and worker, its JSON must
// account for every request and token, and its latencies must be consistent with each other;
// against nothing, it fails fast with a clear message.
#include "gtest/gtest.h"
#include "tests/integration/cluster.h"

namespace kvasir::integration {
namespace {

TEST(ServeBenchTest, AccountsForEveryRequestAndToken) {
  auto cluster = Cluster::Start({});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  constexpr int kPrompts = 10, kOutput = 12;
  const BenchRun run = RunBenchServe(
      {"--port", std::to_string((*cluster)->port()), "--num-prompts", std::to_string(kPrompts),
       "--max-concurrency", "3", "--request-rate", "40", "--input-len", "16", "--output-len",
       std::to_string(kOutput), "--seed", "7", "--json"},
      absl::Seconds(120));
  ASSERT_EQ(run.exit_code, 0) << run.out;
  const json r = json::parse(run.out, nullptr, false);
  ASSERT_FALSE(r.is_discarded()) << run.out;
  EXPECT_EQ(r["model"], (*cluster)->model_name());
  EXPECT_EQ(r["request_rate"], 40.0);
  EXPECT_EQ(r["completed"], kPrompts);
  EXPECT_EQ(r["failed"], 0);
  // ignore_eos: every request generates exactly --output-len tokens.
  EXPECT_EQ(r["output_tokens"], kPrompts * kOutput);
  EXPECT_GE(r["input_tokens"].get<int64_t>(), kPrompts * 16);
  const double duration = r["duration_s"];
  ASSERT_GT(duration, 0);
  EXPECT_NEAR(r["request_throughput"].get<double>(), kPrompts / duration, 1e-6);
  EXPECT_NEAR(r["output_throughput"].get<double>(), kPrompts * kOutput / duration, 1e-6);
  for (const char* metric : {"ttft", "tpot", "itl", "e2e"}) {
    const json& m = r[metric];
    EXPECT_GT(m["median_ms"].get<double>(), 0) << metric;
    EXPECT_LE(m["median_ms"].get<double>(), m["p99_ms"].get<double>()) << metric;
  }
  // A request's first token comes before its end, and every request ends within the run.
  EXPECT_LT(r["ttft"]["median_ms"].get<double>(), r["e2e"]["median_ms"].get<double>());
  EXPECT_LE(r["e2e"]["p99_ms"].get<double>(), duration * 1000 + 1);
  // The chat endpoint, measured the same way.
  const BenchRun chat =
      RunBenchServe({"--port", std::to_string((*cluster)->port()), "--chat", "--num-prompts", "4",
                     "--output-len", "6", "--input-len", "8", "--json"},
                    absl::Seconds(120));
  ASSERT_EQ(chat.exit_code, 0) << chat.out;
  const json c = json::parse(chat.out, nullptr, false);
  ASSERT_FALSE(c.is_discarded()) << chat.out;
  EXPECT_EQ(c["endpoint"], "/v1/chat/completions");
  EXPECT_EQ(c["completed"], 4);
  EXPECT_EQ(c["output_tokens"], 4 * 6);
  EXPECT_GT(c["ttft"]["median_ms"].get<double>(), 0);
  // A mixed workload: some prompts long, the others short (which ones: from the seed), so more
  // prompt tokens than all short and fewer than all long.
  auto input_tokens = [&](const char* fraction) -> int64_t {
    const BenchRun run = RunBenchServe(
        {"--port", std::to_string((*cluster)->port()), "--num-prompts", "8", "--input-len", "8",
         "--long-fraction", fraction, "--long-input-len", "100", "--output-len", "4", "--json"},
        absl::Seconds(120));
    const json j = json::parse(run.out, nullptr, false);
    if (run.exit_code != 0 || j.is_discarded() || j["completed"] != 8) {
      ADD_FAILURE() << run.out;
      return -1;
    }
    return j["input_tokens"].get<int64_t>();
  };
  const int64_t short_only = input_tokens("0"), mixed = input_tokens("0.5"),
                long_only = input_tokens("1");
  EXPECT_LT(short_only, mixed);
  EXPECT_LT(mixed, long_only);
  // The coordinator counted the same requests.
  HttpResult metrics = (*cluster)->Get("/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("kvasir_time_to_first_token_seconds"), std::string::npos);
}

TEST(ServeBenchTest, FailsFastWithoutACoordinatorAndOnBadOptions) {
  const absl::Time start = absl::Now();
  BenchRun run = RunBenchServe({"--port", "1", "--num-prompts", "2"}, absl::Seconds(30));
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
  run = RunBenchServe({"--num-prompts", "0"}, absl::Seconds(30));
  EXPECT_EQ(run.exit_code, 2);
  run = RunBenchServe({"--port", "70000"}, absl::Seconds(30));
  EXPECT_EQ(run.exit_code, 2);
  run = RunBenchServe({"--request-rate", "fast"}, absl::Seconds(30));
  EXPECT_EQ(run.exit_code, 2);
  run = RunBenchServe({"--long-fraction", "1.5"}, absl::Seconds(30));
  EXPECT_EQ(run.exit_code, 2);
}

}  // namespace
}  // namespace kvasir::integration
