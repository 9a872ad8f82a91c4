// More than one host: the coordinator, the cachestore, a prefill and a decode worker each run in
// their own network namespace, joined by veth pairs to a bridge in a switch namespace,
// at addresses of this test's choosing (10.213.<pid % 200>.0/24). Nothing reaches another process
// over loopback; UCX is held to tcp, so the KV moves between "hosts" over the veth links. A
// client namespace drives the coordinator with curl. Greedy completions of two policies equal
// `kvasir generate`, the KV moved (bytes counted, no fallback), and every data path is tcp.
// Skipped, with the reason, where namespaces cannot be made (not root, no CAP_SYS_ADMIN, no ip).
//
// Each namespace is held by a process started with `unshare --net` and entered with `nsenter
// --net` (not `ip netns`, whose bind mounts under /run/netns cannot be entered from a chroot, as
// in a CI root); the namespaces and their links go away with the holders. The services see their
// namespace's devices in a sysfs of their own (UCX lists network devices there), mounted in a
// mount namespace of their own on a private /sys, so nothing shows outside.
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster.h"

namespace kvasir::integration {
namespace {

constexpr char kIp[] = "/sbin/ip";
constexpr char kUnshare[] = "/usr/bin/unshare";
constexpr char kNsenter[] = "/usr/bin/nsenter";

// Runs a command to its end; its stdout (whole lines: a last line needs its '\n'), or an error
// with the exit code.
absl::StatusOr<std::string> RunCommand(const std::vector<std::string>& argv,
                                       absl::Duration timeout = absl::Seconds(30)) {
  auto child = transport::ChildProcess::Spawn(argv);
  if (!child.ok()) return child.status();
  std::vector<std::string> lines;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    auto line = child->ReadLine(std::max(deadline - absl::Now(), absl::Milliseconds(1)));
    if (!line.ok()) break;
    lines.push_back(*line);
  }
  auto code = child->Wait(std::max(deadline - absl::Now(), absl::Milliseconds(1)));
  if (!code.ok()) return code.status();
  if (*code != 0) {
    return absl::InternalError(absl::StrCat(absl::StrJoin(argv, " "), " exited with ", *code, ": ",
                                            absl::StrJoin(lines, "\n")));
  }
  return absl::StrJoin(lines, "\n");
}

// The network namespace of a process, as /proc names it ("net:[4026531840]"); "" when unknown.
std::string NetNamespaceOf(const std::string& pid) {
  std::error_code error;
  const auto target = std::filesystem::read_symlink("/proc/" + pid + "/ns/net", error);
  return error ? "" : target.string();
}

class NetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "network namespaces need root";
    for (const char* tool : {kIp, kUnshare, kNsenter}) {
      if (access(tool, X_OK) != 0) {
        GTEST_SKIP() << "no " << tool << " (Debian packages iproute2 and util-linux)";
      }
    }
    const std::string tag = absl::StrCat(getpid() % 100000);
    subnet_ = absl::StrCat("10.213.", getpid() % 200, ".");
    if (absl::Status s = MakeNamespace("switch"); !s.ok()) {
      GTEST_SKIP() << "cannot make a network namespace here: " << s.message();
    }
    if (absl::Status s = In("switch", {kIp, "link", "add", "br0", "type", "bridge"}); !s.ok()) {
      GTEST_SKIP() << "cannot use a network namespace here: " << s.message();
    }
    ASSERT_TRUE(In("switch", {kIp, "link", "set", "br0", "up"}).ok());
    auto devices = RunCommand(InNamespace("switch", {"/bin/ls", "/sys/class/net"}, true));
    if (!devices.ok() || devices->find("br0") == std::string::npos) {
      GTEST_SKIP() << "cannot give a network namespace its own sysfs here: "
                   << (devices.ok() ? *devices : devices.status().ToString());
    }
    // host name -> last byte of its address
    for (const auto& [name, host] : std::vector<std::pair<std::string, int>>{
             {"coord", 1}, {"store", 2}, {"prefill", 3}, {"decode", 4}, {"client", 9}}) {
      const std::string inside = absl::StrCat("v", host, "x", tag);
      const std::string outside = absl::StrCat("v", host, "s", tag);
      ASSERT_TRUE(MakeNamespace(name).ok());
      ASSERT_TRUE(Ip({"link", "add", inside, "type", "veth", "peer", "name", outside}).ok());
      ASSERT_TRUE(Ip({"link", "set", inside, "netns", holder_pid_[name]}).ok());
      ASSERT_TRUE(Ip({"link", "set", outside, "netns", holder_pid_["switch"]}).ok());
      ASSERT_TRUE(In("switch", {kIp, "link", "set", outside, "master", "br0"}).ok());
      ASSERT_TRUE(In("switch", {kIp, "link", "set", outside, "up"}).ok());
      ASSERT_TRUE(
          In(name, {kIp, "addr", "add", absl::StrCat(subnet_, host, "/24"), "dev", inside}).ok());
      ASSERT_TRUE(In(name, {kIp, "link", "set", inside, "up"}).ok());
      ASSERT_TRUE(In(name, {kIp, "link", "set", "lo", "up"}).ok());
    }
  }

  void TearDown() override {
    processes_.clear();  // killed and reaped
    holders_.clear();    // their namespaces, and the veth pairs in them, go with them
  }

  // A new network namespace for `name`, held by a sleeping process until TearDown.
  absl::Status MakeNamespace(const std::string& name) {
    auto holder = transport::ChildProcess::Spawn({kUnshare, "--net", "/bin/sleep", "3600"});
    if (!holder.ok()) return holder.status();
    const std::string pid = absl::StrCat(holder->pid());
    holders_.push_back(std::make_unique<transport::ChildProcess>(std::move(*holder)));
    // unshare(2) runs before sleep is executed: wait until the holder is in its own namespace.
    const std::string ours = NetNamespaceOf("self");
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (true) {
      const std::string theirs = NetNamespaceOf(pid);
      if (!theirs.empty() && theirs != ours) break;
      if (absl::Now() > deadline) {
        return absl::UnavailableError("unshare --net did not give its process a new namespace");
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    holder_pid_[name] = pid;
    return absl::OkStatus();
  }

  // `argv` run in the namespace of `host`; with `own_sysfs`, in a mount namespace of its own
  // where /sys shows the network namespace's devices.
  std::vector<std::string> InNamespace(const std::string& host, std::vector<std::string> argv,
                                       bool own_sysfs = false) {
    if (own_sysfs) {
      argv.insert(argv.begin(),
                  {kUnshare, "--mount", "--propagation", "unchanged", "/bin/sh", "-c",
                   "mount --make-private /sys && mount -t sysfs sysfs /sys && exec \"$@\"", "sh"});
    }
    argv.insert(argv.begin(),
                {kNsenter, absl::StrCat("--net=/proc/", holder_pid_[host], "/ns/net")});
    return argv;
  }
  absl::Status In(const std::string& host, std::vector<std::string> argv) {
    return RunCommand(InNamespace(host, std::move(argv))).status();
  }

  absl::Status Ip(std::vector<std::string> args) {
    args.insert(args.begin(), kIp);
    return RunCommand(args).status();
  }

  std::string Addr(int host) const { return absl::StrCat(subnet_, host); }

  // Starts `argv` in the namespace of `host` with UCX held to tcp; returns its first line.
  absl::StatusOr<std::string> Start(const std::string& host, std::vector<std::string> argv) {
    auto child = transport::ChildProcess::Spawn(InNamespace(host, std::move(argv), true),
                                                {{"UCX_TLS", "tcp"}});
    if (!child.ok()) return child.status();
    processes_.push_back(std::make_unique<transport::ChildProcess>(std::move(*child)));
    return processes_.back()->ReadLine(absl::Seconds(60));
  }

  // An HTTP request from the client namespace (curl); the parsed JSON body.
  json Curl(const std::string& url, const std::string& body = "") {
    std::vector<std::string> argv = InNamespace(
        "client",
        {"curl", "-s", "-m", "60", "-w", "\\n", "-H", "Authorization: Bearer netns-test-key", url});
    if (!body.empty()) {
      argv.insert(argv.end(), {"-H", "Content-Type: application/json", "-d", body});
    }
    auto out = RunCommand(argv, absl::Seconds(70));
    if (!out.ok()) return json::object({{"curl_error", out.status().ToString()}});
    return json::parse(*out, nullptr, false);
  }

  std::string subnet_;
  std::map<std::string, std::string> holder_pid_;  // host name -> pid holding its namespace
  std::vector<std::unique_ptr<transport::ChildProcess>> holders_;
  std::vector<std::unique_ptr<transport::ChildProcess>> processes_;
};

TEST_F(NetnsTest, DisaggregatedClusterAcrossNamespacesMovesKvOverTcp) {
  auto store = Start("store", {Bin("kvasir-cachestore"), "--host", Addr(2), "--port", "7000",
                               "--http-port", "7001", "--capacity", "128MiB"});
  ASSERT_TRUE(store.ok()) << store.status();
  auto coordinator = Start("coord", {Bin("kvasir-coordinator"), "--model", StoriesModel(), "--host",
                                     Addr(1), "--port", "8000", "--rpc-host", Addr(1), "--rpc-port",
                                     "7100", "--api-key", "netns-test-key"});
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  std::vector<std::string> worker_http;  // host:port of each worker's /ready
  for (const auto& [role, host] :
       std::vector<std::pair<std::string, int>>{{"prefill", 3}, {"decode", 4}}) {
    auto worker =
        Start(role, {Bin("kvasir-worker"), "--model", StoriesModel(), "--name", role, "--role",
                     role, "--host", Addr(host), "--coordinator", Addr(1) + ":7100", "--cachestore",
                     Addr(2) + ":7000", "--threads", "1", "--quiet"});
    ASSERT_TRUE(worker.ok()) << role << ": " << worker.status();
    worker_http.push_back(LineField(*worker, "http"));
  }
  const std::string base = absl::StrCat("http://", Addr(1), ":8000");
  ASSERT_TRUE(Eventually(
      [&] {
        const json ready = Curl(base + "/ready");
        return ready.is_object() && ready.value("workers_ready", 0) == 2;
      },
      absl::Seconds(30)))
      << Curl(base + "/ready").dump();

  const std::string prompt =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "sun with her big red ball. One day, she saw a small dog in the park and";
  for (const std::string policy : {"full", "h2o:budget=24,recent=8"}) {
    SCOPED_TRACE(policy);
    auto expected = KvasirGenerate({"--model", StoriesModel(), "--prompt", prompt, "--max-tokens",
                                    "24", "--temperature", "0", "--kv", policy});
    ASSERT_TRUE(expected.ok()) << expected.status();
    const json answer =
        Curl(base + "/v1/completions",
             json{{"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}, {"kv_policy", policy}}
                 .dump());
    ASSERT_TRUE(answer.is_object() && answer.contains("choices")) << answer.dump();
    EXPECT_EQ(answer["choices"][0]["text"], (*expected)["text"]);
  }
  // The KV moved through the store, with no fallback.
  auto metrics =
      RunCommand(InNamespace("client", {"curl", "-s", "-m", "10", "-w", "\\n", base + "/metrics"}));
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_GT(MetricValue(*metrics, "kvasir_kv_transfer_bytes_total").value_or(0), 0);
  EXPECT_FALSE(MetricValue(*metrics, "kvasir_disagg_fallbacks_total").has_value()) << *metrics;
  // Each worker reaches the store over UCX tcp (its /ready names the data path).
  for (const std::string& http : worker_http) {
    const json ready = Curl("http://" + http + "/ready");
    const std::string path = ready.is_object() ? ready.value("cachestore", "") : "";
    EXPECT_NE(path.find("tcp"), std::string::npos) << ready.dump();
    for (const char* local : {"shm", "sysv", "posix", "cma", "xpmem"}) {
      EXPECT_EQ(path.find(local), std::string::npos) << ready.dump();
    }
  }
}

}  // namespace
}  // namespace kvasir::integration
