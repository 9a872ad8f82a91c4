// A tensor-parallel worker group as processes behind the coordinator: `kvasir-worker
// --tensor-parallel-size 2` starts its second rank itself; the group serves greedy completions
// equal to a single worker's, and when its second rank dies the group leaves service (the worker
// exits with status 1, so that `kvasir up` starts it again) and requests fail cleanly.
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

TEST(TensorParallelServingTest, RefusesRolesAndSizesItCannotServe) {
  auto disagg = transport::ChildProcess::Spawn({Bin("kvasir-worker"), "--model", StoriesModel(),
                                                "--tensor-parallel-size", "2", "--role", "prefill",
                                                "--cachestore", "127.0.0.1:1"});
  ASSERT_TRUE(disagg.ok());
  auto code = disagg->Wait(absl::Seconds(10));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 2);
  auto heads = transport::ChildProcess::Spawn(
      {Bin("kvasir-worker"), "--model", StoriesModel(), "--tensor-parallel-size", "3"});
  ASSERT_TRUE(heads.ok());
  code = heads->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 1);
}

}  // namespace
}  // namespace kvasir::integration
