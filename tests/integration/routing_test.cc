// KV-aware routing with real processes: two workers of the default model, a workload of 8 shared
// 1k-token prefixes (kvasir bench serve --shared-prefix-len). With the coordinator routing by
// the prompt's cached blocks (`--routing kv`, the workers' prefix-cache events in their
// heartbeats) at least 90 % of the prompt tokens are found in the chosen worker's prefix cache,
// more than when it routes by load alone (`--routing load`), where each prefix ends up computed
// on both workers.
#include <filesystem>

#include "gtest/gtest.h"
#include "tests/integration/cluster.h"

namespace kvasir::integration {
namespace {

struct RoutedRun {
  double hits = 0, queries = 0;          // prompt tokens, summed over the workers
  double routed_cached = 0, routed = 0;  // the coordinator's router counters (blocks)
  double hit_rate() const { return queries > 0 ? hits / queries : 0; }
};

RoutedRun RunSharedPrefixLoad(const std::string& routing) {
  RoutedRun run;
  auto cluster = Cluster::Start({.model = DefaultModelPath(),
                                 .workers = 2,
                                 .coordinator_args = {"--routing", routing},
                                 .worker_args = {"--threads", "1"}});
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  if (!cluster.ok()) return run;
  const BenchRun bench =
      RunBenchServe({"--port", std::to_string((*cluster)->port()), "--num-prompts", "160",
                     "--max-concurrency", "4", "--shared-prefix-len", "1000", "--num-prefixes", "8",
                     "--input-len", "8", "--output-len", "2", "--seed", "5", "--json"},
                    absl::Seconds(400));
  EXPECT_EQ(bench.exit_code, 0) << bench.out;
  const json r = json::parse(bench.out, nullptr, false);
  EXPECT_FALSE(r.is_discarded()) << bench.out;
  if (!r.is_discarded()) EXPECT_EQ(r["completed"], 160) << bench.out;
  for (int w = 0; w < 2; ++w) {
    const std::string m = (*cluster)->WorkerMetrics(w);
    run.hits += MetricValue(m, "kvasir_prefix_cache_hits_total{tier=\"local\"}").value_or(0);
    run.queries += MetricValue(m, "kvasir_prefix_cache_queries_total{tier=\"local\"}").value_or(0);
  }
  const std::string m = (*cluster)->Get("/metrics").body;
  run.routed = MetricValue(m, "kvasir_router_prompt_blocks_total").value_or(0);
  run.routed_cached = MetricValue(m, "kvasir_router_cached_blocks_total").value_or(0);
  return run;
}

TEST(RoutingTest, SharedPrefixesStayOnTheWorkerThatCachedThem) {
#if defined(__SANITIZE_THREAD__)
  // 16 prefills of 1k tokens of the default model take minutes under ThreadSanitizer; the
  // routing's threads (heartbeat events, the registry's index) are exercised by the other
  // integration tests there.
  GTEST_SKIP() << "a load test: too slow under ThreadSanitizer";
#endif
  if (!std::filesystem::exists(DefaultModelPath())) {
    GTEST_SKIP() << "the default model is not installed (" << DefaultModelPath()
                 << "); scripts/install-deps.sh installs it";
  }
  const RoutedRun kv = RunSharedPrefixLoad("kv");
  const RoutedRun load = RunSharedPrefixLoad("load");
  RecordProperty("kv_hit_rate", std::to_string(kv.hit_rate()));
  RecordProperty("load_hit_rate", std::to_string(load.hit_rate()));
  ASSERT_GT(kv.queries, 160 * 1000);
  EXPECT_GE(kv.hit_rate(), 0.90) << "hits " << kv.hits << " of " << kv.queries;
  EXPECT_GT(kv.hit_rate(), load.hit_rate())
      << "kv " << kv.hit_rate() << ", load alone " << load.hit_rate();
  // The router saw what the workers then found.
  EXPECT_GT(kv.routed, 0);
  EXPECT_GE(kv.routed_cached / kv.routed, 0.85);
  EXPECT_EQ(load.routed_cached, 0);  // routing by load does not look at the blocks
}

}  // namespace
}  // namespace kvasir::integration
