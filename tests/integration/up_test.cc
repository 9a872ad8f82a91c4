// `kvasir up` as a user runs it: a local cluster that prints where it listens once /ready
// answers, serves, and stops every process on SIGTERM (and SIGINT).
#include <signal.h>

#include <cerrno>

#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster.h"

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
  auto up = transport::ChildProcess::Spawn({Bin("kvasir"), "up", "--model", StoriesModel(),
                                            "--port", "0", "--workers", "2", "--threads", "1"});
  ASSERT_TRUE(up.ok()) << up.status();
  std::vector<std::string> lines;
  std::string base;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (base.empty() && absl::Now() < deadline) {
    auto line = up->ReadLine(deadline - absl::Now());
    ASSERT_TRUE(line.ok()) << line.status();
    lines.push_back(*line);
    const size_t at = line->find(" at http://");
    if (absl::StrContains(*line, "ready: serving") && at != std::string::npos) {
      base = line->substr(at + 4);
      base = base.substr(0, base.find(' '));
    }
  }
  ASSERT_FALSE(base.empty());
  // The curl example follows.
  bool curl = false;
  for (int i = 0; i < 4 && !curl; ++i) {
    auto line = up->ReadLine(absl::Seconds(5));
    ASSERT_TRUE(line.ok());
    curl = absl::StrContains(*line, "curl http://");
  }
  EXPECT_TRUE(curl);
  const std::vector<pid_t> pids = PidsIn(lines);
  ASSERT_EQ(pids.size(), 4u);  // coordinator, cachestore and two workers
  // The cachestore answers on its HTTP port.
  std::string store_http;
  for (const std::string& line : lines) {
    if (absl::StrContains(line, "cachestore pid=")) store_http = LineField(line, "http");
  }
  uint32_t store_port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(store_http.substr(store_http.rfind(':') + 1), &store_port))
      << store_http;
  transport::http::HttpClientRequest health;
  health.target = "/health";
  auto store_health = transport::http::HttpFetch("127.0.0.1", static_cast<uint16_t>(store_port),
                                                 health, absl::Seconds(10));
  ASSERT_TRUE(store_health.ok()) << store_health.status();
  EXPECT_EQ(store_health->status, 200);
  // It serves.
  const size_t colon = base.rfind(':');
  uint32_t port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(base.substr(colon + 1, base.find('/', colon) - colon - 1), &port))
      << base;
  transport::http::HttpClientRequest post;
  post.method = "POST";
  post.target = "/v1/completions";
  post.body = R"({"prompt": "Once upon a time", "max_tokens": 8})";
  auto r =
      transport::http::HttpFetch("127.0.0.1", static_cast<uint16_t>(port), post, absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
  // It stops cleanly, children included.
  up->Signal(signal);
  auto code = up->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  for (pid_t pid : pids) EXPECT_TRUE(Gone(pid)) << "pid " << pid << " is still there";
  auto refused =
      transport::http::HttpFetch("127.0.0.1", static_cast<uint16_t>(port), post, absl::Seconds(2));
  EXPECT_FALSE(refused.ok());
}

TEST(UpTest, StartsServesAndStopsOnSigterm) { RunUpAndStop(SIGTERM); }

TEST(UpTest, StopsOnCtrlC) { RunUpAndStop(SIGINT); }

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
