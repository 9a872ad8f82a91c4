// A tensor-parallel worker group as processes behind the coordinator: `kvasir-worker
// --tensor-parallel-size 2` starts its second rank itself; the group serves greedy completions
// equal to a single worker's, and when its second rank dies the group leaves service (the worker
// exits with status 1, so that `kvasir up` starts it again) and requests fail cleanly. Prefill
// and decode groups of different sizes hand KV over through the cachestore.
#include <signal.h>

#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster.h"

namespace kvasir::integration {
namespace {

// The pids of the children of `pid` (the ranks a worker started).
std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::vector<pid_t> out;
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (absl::string_view part : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    int child = 0;
    if (absl::SimpleAtoi(part, &child)) out.push_back(child);
  }
  return out;
}

std::string Greedy(Cluster& c) {
  HttpResult r = c.Post("/v1/completions",
                        {{"prompt", "Once upon a time"}, {"max_tokens", 24}, {"temperature", 0}});
  EXPECT_EQ(r.status, 200) << r.body;
  if (r.status != 200) return "";
  return r.j["choices"][0]["text"].get<std::string>();
}

TEST(TensorParallelServingTest, AGroupOfTwoProcessesServesAndLeavesWhenARankDies) {
  std::string single;
  {
    auto one = Cluster::Start({.worker_args = {"--threads", "1"}});
    ASSERT_TRUE(one.ok()) << one.status();
    single = Greedy(**one);
    ASSERT_FALSE(single.empty());
  }
  auto group = Cluster::Start({.worker_args = {"--threads", "1", "--tensor-parallel-size", "2"}});
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_EQ(Greedy(**group), single);
  EXPECT_EQ(Greedy(**group), single);  // the second rank's sequences were freed and made anew

  const std::vector<pid_t> ranks = ChildrenOf((*group)->worker(0).pid());
  ASSERT_EQ(ranks.size(), 1u);
  ::kill(ranks[0], SIGKILL);
  // The group notices (the next collective or keepalive fails) and the worker leaves with 1.
  auto code = (*group)->worker(0).Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 1);
  // The coordinator sees no worker: a request fails cleanly, without a hang.
  HttpResult r = (*group)->Post("/v1/completions", {{"prompt", "Once"}, {"max_tokens", 4}});
  EXPECT_EQ(r.status, 503) << r.body;
}

TEST(TensorParallelServingTest, RefusesSizesItCannotServe) {
  // Per-role sizes without workers of that role.
  auto roles = transport::ChildProcess::Spawn(
      {Bin("kvasir"), "up", "--model", StoriesModel(), "--port", "0", "--prefill-tp", "2"});
  ASSERT_TRUE(roles.ok());
  auto code = roles->Wait(absl::Seconds(10));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 2);
  // Three ranks do not divide stories260K's 8 heads.
  auto heads = transport::ChildProcess::Spawn(
      {Bin("kvasir-worker"), "--model", StoriesModel(), "--tensor-parallel-size", "3"});
  ASSERT_TRUE(heads.ok());
  code = heads->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 1);
}

// Prefill and decode workers of different tensor-parallel sizes (`kvasir up --prefill-tp
// --decode-tp`): the prefill group's ranks each write their KV heads, the decode side takes the
// heads it holds, and the greedy text equals `kvasir generate`'s (one process) with no fallback
// to recomputing, under every policy (the policy state travels split by KV heads).
TEST(TensorParallelServingTest, PrefillAndDecodeGroupsOfDifferentSizesHandKvOver) {
  const std::string prompt =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "sun with her big red ball.";
  for (const auto& [prefill_tp, decode_tp] :
       std::vector<std::pair<std::string, std::string>>{{"2", "1"}, {"1", "2"}}) {
    SCOPED_TRACE("prefill TP " + prefill_tp + ", decode TP " + decode_tp);
    Up up;
    ASSERT_NO_FATAL_FAILURE(StartUp(up, {"--prefill-workers", "1", "--decode-workers", "1",
                                         "--prefill-tp", prefill_tp, "--decode-tp", decode_tp}));
    auto complete = [&](const std::string& policy) -> std::string {
      json body = {
          {"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}, {"kv_policy", policy}};
      auto r = Fetch(up.port, "POST", "/v1/completions", body.dump());
      if (!r.ok()) return "error: " + r.status().ToString();
      const json j = json::parse(r->body, nullptr, false);
      if (r->status != 200 || !j.is_object()) return "error: " + r->body;
      return j["choices"][0]["text"].get<std::string>();
    };
    auto expect_generate = [&](const std::string& policy) {
      auto expected = KvasirGenerate({"--model", StoriesModel(), "--prompt", prompt, "--max-tokens",
                                      "24", "--temperature", "0", "--kv", policy});
      ASSERT_TRUE(expected.ok()) << expected.status();
      EXPECT_EQ(complete(policy), (*expected)["text"].get<std::string>()) << policy;
    };
    for (const std::string policy :
         {"full", "streaming:sink=4,window=16", "h2o:budget=24,recent=8", "dmc:mode=free,ratio=3",
          "pod:sink=4,window=16", "lococo:slots=16,chunk=4"}) {
      expect_generate(policy);
    }
    auto metrics = Fetch(up.port, "GET", "/metrics");
    ASSERT_TRUE(metrics.ok());
    EXPECT_GT(MetricValue(metrics->body, "kvasir_kv_transfer_bytes_total").value_or(0), 0)
        << metrics->body;
    EXPECT_FALSE(MetricValue(metrics->body, "kvasir_disagg_fallbacks_total").has_value())
        << metrics->body;
    up.process->Signal(SIGTERM);
    auto code = up.process->Wait(absl::Seconds(30));
    ASSERT_TRUE(code.ok()) << code.status();
    EXPECT_EQ(*code, 0);
  }
}

}  // namespace
}  // namespace kvasir::integration
