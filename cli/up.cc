// `kvasir up`: a local cluster in one command. Starts the coordinator, the cachestore and N
// workers as child processes (binaries beside this one), waits until /ready answers 200 with every
// worker registered, prints where it listens and a curl example, and on Ctrl-C or SIGTERM stops
// every process (SIGTERM, then SIGKILL after a grace period).
//
// Once the cluster is ready, `kvasir up` supervises it: a child that dies is restarted with the
// same command line (the coordinator and the cachestore on the ports they had, so that the others
// find them again), after a back-off that doubles with every quick death in a row (0.5 s up to
// 30 s; a child that ran a minute starts again from 0.5 s). Each restart is logged and reported to
// the coordinator, which counts it in kvasir_process_restarts_total{process}. During start-up a
// child that dies still stops everything: that is a configuration error, not bad luck.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "common/strings.h"
#include "kvcache/prefix_hash.h"
#include "model/model_files.h"
#include "nlohmann/json.hpp"
#include "transport/child_process.h"
#include "transport/http/client.h"
#include "transport/rpc/client.h"
#include "worker/device.h"
#include "worker/service/worker_service.pb.h"

namespace kvasir::cli {
namespace {

struct Child {
  std::string name;
  std::vector<std::string> argv;  // to start it again
  transport::ChildProcess process;
  bool running = true;
  absl::Time started = absl::Now();
  absl::Time restart_at;  // when !running
  int quick_deaths = 0;   // in a row, for the back-off
  int64_t restarts = 0;
  bool announced = true;  // its first line (where it listens) was read
  bool retired = false;   // it exited on its own with status 0 (a drained worker): not restarted
};

// The back-off before restarting a child that died for the n-th time in a row (n >= 1).
absl::Duration Backoff(int n) {
  return std::min(absl::Milliseconds(500) * (int64_t{1} << std::min(n - 1, 10)), absl::Seconds(30));
}

// "exit code 3" or "signal 9".
std::string ExitText(int code) {
  return code > 128 ? absl::StrCat("signal ", code - 128) : absl::StrCat("exit code ", code);
}

// "2 workers", "1 prefill + 1 decode workers", "1 worker + 1 prefill + 2 decode workers".
std::string WorkerSummary(int both, int prefill, int decode) {
  std::vector<std::string> parts;
  if (both > 0) parts.push_back(absl::StrCat(both));
  if (prefill > 0) parts.push_back(absl::StrCat(prefill, " prefill"));
  if (decode > 0) parts.push_back(absl::StrCat(decode, " decode"));
  return absl::StrCat(absl::StrJoin(parts, " + "),
                      both + prefill + decode == 1 ? " worker" : " workers");
}

// Replaces the value that follows `flag` in argv (or appends both).
void SetFlag(std::vector<std::string>& argv, const std::string& flag, const std::string& value) {
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == flag) {
      argv[i + 1] = value;
      return;
    }
  }
  argv.push_back(flag);
  argv.push_back(value);
}

// The value of `key=` in a line such as "kvasir-coordinator: http=... rpc=127.0.0.1:4000".
std::string Field(const std::string& line, std::string_view key) {
  for (absl::string_view part : absl::StrSplit(line, ' ')) {
    if (absl::StartsWith(part, ToAbsl(key)) && part.size() > key.size() &&
        part[key.size()] == '=') {
      return std::string(part.substr(key.size() + 1));
    }
  }
  return "";
}

bool Exited(pid_t pid) {
  siginfo_t info{};
  return waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
         info.si_pid == pid;
}

// SIGTERM to everyone (workers first), then wait; SIGKILL whoever is left after the grace.
void StopAll(std::vector<Child>& children, absl::Duration grace) {
  for (auto it = children.rbegin(); it != children.rend(); ++it) {
    if (it->running) it->process.Signal(SIGTERM);
  }
  const absl::Time deadline = absl::Now() + grace;
  for (auto it = children.rbegin(); it != children.rend(); ++it) {
    if (!it->running) continue;
    absl::StatusOr<int> code =
        it->process.Wait(std::max(deadline - absl::Now(), absl::Milliseconds(1)));
    if (!code.ok()) {
      std::fprintf(stderr, "kvasir up: %s did not stop in time; killed\n", it->name.c_str());
    }
  }
  children.clear();
}

// Restarts the children that die, and reports every restart to the coordinator.
class Supervisor {
 public:
  Supervisor(std::string coordinator_host, uint16_t coordinator_port)
      : host_(std::move(coordinator_host)), port_(coordinator_port) {}

  void Tick(std::vector<Child>& children) {
    const absl::Time now = absl::Now();
    for (Child& c : children) {
      if (c.running && Exited(c.process.pid())) {
        const absl::StatusOr<int> code = c.process.Wait(absl::Milliseconds(100));
        c.running = false;
        if (code.ok() && *code == 0) {
          c.retired = true;
          std::fprintf(stderr, "kvasir up: %s exited (drained); not restarted\n", c.name.c_str());
          continue;
        }
        c.quick_deaths = now - c.started > absl::Minutes(1) ? 1 : c.quick_deaths + 1;
        c.restart_at = now + Backoff(c.quick_deaths);
        std::fprintf(stderr, "kvasir up: %s died (%s); restarting it in %s\n", c.name.c_str(),
                     code.ok() ? ExitText(*code).c_str() : "status unknown",
                     absl::FormatDuration(c.restart_at - now).c_str());
      }
      if (!c.running && !c.retired && now >= c.restart_at) {
        auto process = transport::ChildProcess::Spawn(c.argv);
        if (!process.ok()) {
          c.restart_at = now + Backoff(++c.quick_deaths);
          std::fprintf(stderr, "kvasir up: cannot restart %s: %s\n", c.name.c_str(),
                       std::string(process.status().message()).c_str());
          continue;
        }
        c.process = std::move(*process);
        c.running = true;
        c.started = now;
        c.announced = false;
        ++c.restarts;
        report_pending_ = true;
        std::fprintf(stderr, "kvasir up: %s restarted (pid %d, restart %lld)\n", c.name.c_str(),
                     c.process.pid(), static_cast<long long>(c.restarts));
      }
      if (c.running && !c.announced) {
        // Its first line says it serves (a worker prints it once its model is loaded).
        if (c.process.ReadLine(absl::ZeroDuration()).ok()) {
          c.announced = true;
          std::fprintf(stderr, "kvasir up: %s is back\n", c.name.c_str());
        }
      }
    }
    // The totals go to the coordinator (all of them: it may be a restarted one that knows none),
    // once at start so that the series exist, then after each restart until it answers.
    if (report_pending_ && now >= next_report_) {
      next_report_ = now + absl::Seconds(1);
      if (Report(children)) report_pending_ = false;
    }
  }

 private:
  bool Report(const std::vector<Child>& children) {
    if (client_ == nullptr) {
      transport::rpc::RpcClient::Options o;
      o.host = host_;
      o.port = port_;
      o.handshake.role = "supervisor";
      o.handshake.name = "kvasir-up";
      o.handshake.prefix_hash_test_vector = kvcache::PrefixHashTestVector();
      o.connect_timeout = absl::Milliseconds(500);
      o.default_timeout = absl::Seconds(1);
      auto client = transport::rpc::RpcClient::Create(o);
      if (!client.ok()) return false;
      client_ = std::move(*client);
    }
    serving::ProcessRestartsRequest request;
    for (const Child& c : children) {
      serving::ProcessRestarts* p = request.add_processes();
      p->set_process(c.name);
      p->set_restarts_total(c.restarts);
    }
    serving::ProcessRestartsResponse response;
    return transport::rpc::CallProto(*client_, "coordinator.ProcessRestarts", request, &response,
                                     {.timeout = absl::Seconds(1)})
        .ok();
  }

  std::string host_;
  uint16_t port_;
  std::unique_ptr<transport::rpc::RpcClient> client_;
  bool report_pending_ = true;
  absl::Time next_report_ = absl::InfinitePast();
};

}  // namespace

int RunUp(int argc, char** argv) {
  const std::string cmd = "kvasir up";
  ArgParser p(
      "kvasir up [--model M] [--host H] [--port P] [--workers N | --prefill-workers N "
      "--decode-workers M] [--kv-policy NAME=SPEC] [--kv POLICY]",
      "Starts a local cluster (coordinator, cachestore and workers) serving the model over "
      "an OpenAI-compatible HTTP API, restarts any process of it that dies, and stops it "
      "on Ctrl-C or SIGTERM. With --prefill-workers and --decode-workers, prompts are "
      "computed on prefill workers and their compressed KV moves through the cachestore "
      "to decode workers (disaggregated serving).");
  std::string model = "default", host = "127.0.0.1", kv, api_key_file, kv_cache_memory,
              cachestore_capacity = "1GiB";
  std::vector<std::string> kv_policies;
  bool no_cachestore = false;
  std::vector<std::string> served_names;
  int32_t port = 8000, workers = 1, prefill_workers = 0, decode_workers = 0, threads = 0,
          max_num_seqs = 0, max_num_batched_tokens = 0, max_model_len = 0, ready_timeout_s = 600,
          kv_stream_layers = -1, tp = 1, prefill_tp = 0, decode_tp = 0;
  p.AddString("model", &model, "PATH", "a .gguf file, a Hugging Face folder, or 'default'");
  p.AddString("host", &host, "ADDR", "HTTP address of the coordinator");
  p.AddInt32("port", &port, "HTTP port of the coordinator (0: any free port)");
  p.AddInt32("workers", &workers,
             "worker processes that prefill and decode (role both; 0 by default with "
             "--prefill-workers/--decode-workers)");
  p.AddInt32("prefill-workers", &prefill_workers,
             "workers that only prefill and write the KV to the cachestore");
  p.AddInt32("decode-workers", &decode_workers,
             "workers that read the KV from the cachestore and decode");
  p.AddStrings("kv-policy", &kv_policies, "[NAME=]SPEC",
               "a KV policy the workers offer, loaded at start-up. Files (groups=, weights=) are "
               "named only here; requests select the policy by NAME");
  p.AddString("kv", &kv, "NAME|SPEC",
              "KV policy of requests that name none (default: the first --kv-policy, or full)");
  p.AddInt32("threads", &threads,
             "compute threads per worker process (0: the cores divided by the processes of every "
             "worker's ranks)");
  p.AddString("kv-cache-memory", &kv_cache_memory, "BYTES", "KV cache size per worker (4GiB)");
  std::string device = "cpu";
  p.AddString("device", &device, "NAME",
              "where the workers run the model: cpu, or cuda (each worker on GPU 0; one GPU per "
              "worker, no tensor parallelism on GPUs yet)");
  p.AddInt32("max-num-seqs", &max_num_seqs, "sequences per batch per worker (0: default)");
  p.AddInt32("max-num-batched-tokens", &max_num_batched_tokens,
             "tokens per step per worker (0: default)");
  p.AddInt32("max-model-len", &max_model_len, "tokens per request (0: the model's context)");
  p.AddInt32("kv-stream-layers", &kv_stream_layers,
             "prefill workers write the KV in parts of this many layers while computing (0: all "
             "at the end; -1: the worker's default)");
  p.AddStrings("served-model-name", &served_names, "NAME", "model name(s) clients use");
  p.AddString("api-key-file", &api_key_file, "PATH", "require one of these API keys");
  p.AddInt32("tensor-parallel-size", &tp,
             "tensor-parallel ranks per worker: each worker starts N-1 more processes, each "
             "holding 1/N of the weights and KV heads (docs/parallelism.md)");
  p.AddInt32("prefill-tp", &prefill_tp,
             "tensor-parallel ranks per prefill worker (0: --tensor-parallel-size); the KV moves "
             "to decode workers of another size by KV heads");
  p.AddInt32("decode-tp", &decode_tp,
             "tensor-parallel ranks per decode worker (0: --tensor-parallel-size)");
  p.AddInt32("ready-timeout-s", &ready_timeout_s, "how long to wait for /ready");
  p.AddString("cachestore-capacity", &cachestore_capacity, "BYTES",
              "memory of the cachestore's KV block tier");
  std::string cachestore_disk_dir;
  p.AddString("cachestore-disk-dir", &cachestore_disk_dir, "DIR",
              "the cachestore's disk tier (its blocks, the prefix cache's included, survive a "
              "restart of the cluster); default: memory only");
  p.AddBool("no-cachestore", &no_cachestore,
            "do not start a cachestore (prefix-cache blocks then stay in each worker)");
  bool no_prefix_caching = false;
  p.AddBool("no-prefix-caching", &no_prefix_caching,
            "workers do not share the KV of common prompt prefixes between requests");
  bool no_prefix_store = false;
  p.AddBool("no-prefix-store", &no_prefix_store,
            "workers keep prefix-cache blocks to themselves (not written to the cachestore)");
  int32_t target_itl_ms = -1;
  p.AddInt32("target-itl-ms", &target_itl_ms,
             "workers size each step to this inter-token latency target (-1: each worker "
             "measures its own at start-up; 0: none)");
  std::string routing;
  p.AddString("routing", &routing, "kv|load",
              "the coordinator's routing: by the prompt's KV cached on each worker against its "
              "load (kv, the default) or by load alone");
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(cmd, s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  if (absl::Status s = worker::CheckDeviceName(device); !s.ok()) return Fail(cmd, s, 2);
  const bool disaggregated = prefill_workers > 0 || decode_workers > 0;
  const bool workers_given = std::any_of(
      argv + 1, argv + argc, [](const char* a) { return absl::StartsWith(a, "--workers"); });
  if (disaggregated && !workers_given) workers = 0;
  if (disaggregated && (prefill_workers < 1 || decode_workers < 1)) {
    return Fail(
        cmd,
        absl::InvalidArgumentError(
            "disaggregated serving needs --prefill-workers and --decode-workers, both >= 1"),
        2);
  }
  if (disaggregated && no_cachestore) {
    return Fail(cmd,
                absl::InvalidArgumentError(
                    "--prefill-workers/--decode-workers move KV through the cachestore: drop "
                    "--no-cachestore"),
                2);
  }
  if (workers < 0 || workers > 64 || prefill_workers < 0 || prefill_workers > 64 ||
      decode_workers < 0 || decode_workers > 64 || workers + prefill_workers + decode_workers < 1) {
    return Fail(cmd, absl::InvalidArgumentError("worker counts must be in [0, 64], at least 1"), 2);
  }
  // (name, role) of every worker.
  std::vector<std::pair<std::string, std::string>> roles;
  for (int i = 0; i < workers; ++i) roles.emplace_back(absl::StrCat("worker-", i), "both");
  for (int i = 0; i < prefill_workers; ++i)
    roles.emplace_back(absl::StrCat("prefill-", i), "prefill");
  for (int i = 0; i < decode_workers; ++i) roles.emplace_back(absl::StrCat("decode-", i), "decode");
  const int total_workers = static_cast<int>(roles.size());
  if (tp < 1 || tp > 64 || prefill_tp < 0 || prefill_tp > 64 || decode_tp < 0 || decode_tp > 64) {
    return Fail(cmd,
                absl::InvalidArgumentError(
                    "--tensor-parallel-size must be in [1, 64], --prefill-tp and --decode-tp in "
                    "[0, 64]"),
                2);
  }
  if ((prefill_tp > 0 && prefill_workers == 0) || (decode_tp > 0 && decode_workers == 0)) {
    return Fail(cmd,
                absl::InvalidArgumentError(
                    "--prefill-tp and --decode-tp size the prefill and decode workers: give "
                    "--prefill-workers and --decode-workers"),
                2);
  }
  if (prefill_tp == 0) prefill_tp = tp;
  if (decode_tp == 0) decode_tp = tp;
  // The ranks of each worker, by role.
  auto ranks_of = [&](const std::string& role) {
    return role == "prefill" ? prefill_tp : role == "decode" ? decode_tp : tp;
  };
  if (port < 0 || port > 65535 || ready_timeout_s <= 0) {
    return Fail(cmd, absl::InvalidArgumentError("--port or --ready-timeout-s out of range"), 2);
  }
  // Resolve the model once, so that every process serves the same file.
  auto path = model::ResolveModelPath(model);
  if (!path.ok()) return Fail(cmd, path.status());
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  const std::filesystem::path bin = ec ? std::filesystem::path(".") : self.parent_path();
  const std::string coordinator_bin = (bin / "kvasir-coordinator").string();
  const std::string worker_bin = (bin / "kvasir-worker").string();
  const std::string cachestore_bin = (bin / "kvasir-cachestore").string();
  std::vector<std::string> needed = {coordinator_bin, worker_bin};
  if (!no_cachestore) needed.push_back(cachestore_bin);
  for (const std::string& b : needed) {
    if (access(b.c_str(), X_OK) != 0) {
      return Fail(cmd, absl::NotFoundError(absl::StrCat(b,
                                                        " not found: build it first "
                                                        "(make build)")));
    }
  }
  if (threads <= 0) {
    // Every rank of every worker is a process with its own threads.
    int total_ranks = 0;
    for (const auto& [name, role] : roles) total_ranks += ranks_of(role);
    threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / total_ranks);
  }

  // Signals are taken with sigtimedwait below. Children inherit the mask; ours block and
  // sigwait on the same signals anyway.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::vector<Child> children;
  auto fail = [&](const absl::Status& status) {
    StopAll(children, absl::Seconds(10));
    return Fail(cmd, status);
  };
  auto interrupted = [&]() {
    timespec zero{0, 0};
    return sigtimedwait(&signals, nullptr, &zero) > 0;
  };

  // Coordinator.
  std::vector<std::string> args = {
      coordinator_bin,      "--model",    *path,       "--host",     host, "--port",
      std::to_string(port), "--rpc-host", "127.0.0.1", "--rpc-port", "0"};
  for (const std::string& name : served_names) {
    args.push_back("--served-model-name");
    args.push_back(name);
  }
  if (!routing.empty()) {
    args.push_back("--routing");
    args.push_back(routing);
  }
  if (!api_key_file.empty()) {
    args.push_back("--api-key-file");
    args.push_back(api_key_file);
  }
  if (max_model_len > 0) {
    args.push_back("--max-model-len");
    args.push_back(std::to_string(max_model_len));
  }
  auto coordinator = transport::ChildProcess::Spawn(args);
  if (!coordinator.ok()) return fail(coordinator.status());
  children.push_back({.name = "coordinator", .argv = args, .process = std::move(*coordinator)});
  auto line = children.back().process.ReadLine(absl::Seconds(60));
  if (!line.ok()) {
    return fail(absl::UnavailableError("the coordinator did not start (see its messages above)"));
  }
  const std::string rpc = Field(*line, "rpc");
  const std::string http = Field(*line, "http");
  const std::string model_name = Field(*line, "model");
  const int actual_port = [&] {
    const size_t colon = http.rfind(':');
    return colon == std::string::npos ? port : std::atoi(http.c_str() + colon + 1);
  }();
  // Restarts come back on the same ports, so that workers and clients find it again.
  SetFlag(children.back().argv, "--port", std::to_string(actual_port));
  SetFlag(children.back().argv, "--rpc-port", rpc.substr(rpc.rfind(':') + 1));
  std::printf("kvasir up: coordinator pid=%d http=%s rpc=%s\n", children.back().process.pid(),
              http.c_str(), rpc.c_str());
  std::fflush(stdout);

  // Cachestore: its first line is "PORT <rpc port> HTTP <http port>".
  std::string store_rpc;
  if (!no_cachestore) {
    std::vector<std::string> store_args = {
        cachestore_bin,      "--host", "127.0.0.1", "--port", "0", "--http-port", "0", "--capacity",
        cachestore_capacity, "--name", "cachestore"};
    if (!cachestore_disk_dir.empty()) {
      store_args.push_back("--disk-dir");
      store_args.push_back(cachestore_disk_dir);
    }
    auto store = transport::ChildProcess::Spawn(store_args);
    if (!store.ok()) return fail(store.status());
    children.push_back({.name = "cachestore", .argv = store_args, .process = std::move(*store)});
    auto store_line = children.back().process.ReadLine(absl::Seconds(60));
    std::vector<std::string> words;
    if (store_line.ok()) words = absl::StrSplit(*store_line, ' ', absl::SkipEmpty());
    if (words.size() < 4 || words[0] != "PORT" || words[2] != "HTTP") {
      return fail(absl::UnavailableError("the cachestore did not start (see its messages above)"));
    }
    store_rpc = absl::StrCat("127.0.0.1:", words[1]);
    SetFlag(children.back().argv, "--port", words[1]);
    SetFlag(children.back().argv, "--http-port", words[3]);
    std::printf("kvasir up: cachestore pid=%d rpc=127.0.0.1:%s http=127.0.0.1:%s capacity=%s\n",
                children.back().process.pid(), words[1].c_str(), words[3].c_str(),
                cachestore_capacity.c_str());
    std::fflush(stdout);
  }

  // Workers.
  const size_t first_worker = children.size();
  for (const auto& [name, role] : roles) {
    std::vector<std::string> w = {
        worker_bin, "--model", *path,       "--coordinator",         rpc,      "--name",   name,
        "--role",   role,      "--threads", std::to_string(threads), "--host", "127.0.0.1"};
    // Every worker uses the store: hand-offs, drains, and the prefix cache's second tier.
    if (!store_rpc.empty()) {
      w.push_back("--cachestore");
      w.push_back(store_rpc);
    }
    for (const std::string& policy : kv_policies) {
      w.push_back("--kv-policy");
      w.push_back(policy);
    }
    if (!kv.empty()) {
      w.push_back("--default-kv-policy");
      w.push_back(kv);
    }
    if (!kv_cache_memory.empty()) {
      w.push_back("--kv-cache-memory");
      w.push_back(kv_cache_memory);
    }
    if (device != "cpu") {
      w.push_back("--device");
      w.push_back(device);
    }
    if (max_num_seqs > 0) {
      w.push_back("--max-num-seqs");
      w.push_back(std::to_string(max_num_seqs));
    }
    if (max_num_batched_tokens > 0) {
      w.push_back("--max-num-batched-tokens");
      w.push_back(std::to_string(max_num_batched_tokens));
    }
    if (max_model_len > 0) {
      w.push_back("--max-model-len");
      w.push_back(std::to_string(max_model_len));
    }
    if (no_prefix_caching) w.push_back("--no-prefix-caching");
    if (ranks_of(role) > 1) {
      w.push_back("--tensor-parallel-size");
      w.push_back(std::to_string(ranks_of(role)));
    }
    if (no_prefix_store) w.push_back("--no-prefix-store");
    if (target_itl_ms >= 0) {
      w.push_back("--target-itl-ms");
      w.push_back(std::to_string(target_itl_ms));
    }
    if (kv_stream_layers >= 0 && role == "prefill") {
      w.push_back("--kv-stream-layers");
      w.push_back(std::to_string(kv_stream_layers));
    }
    auto worker = transport::ChildProcess::Spawn(w);
    if (!worker.ok()) return fail(worker.status());
    children.push_back({.name = name, .argv = w, .process = std::move(*worker)});
  }
  for (size_t i = first_worker; i < children.size(); ++i) {
    auto worker_line = children[i].process.ReadLine(absl::Seconds(ready_timeout_s));
    if (!worker_line.ok()) {
      return fail(absl::UnavailableError(
          absl::StrCat(children[i].name, " did not start (see its messages above)")));
    }
    std::printf("kvasir up: %s pid=%d rpc=%s http=%s\n", children[i].name.c_str(),
                children[i].process.pid(), Field(*worker_line, "rpc").c_str(),
                Field(*worker_line, "http").c_str());
    std::fflush(stdout);
  }

  // Ready: /ready answers 200 with every worker registered.
  const std::string probe_host = host == "0.0.0.0" || host == "::" ? "127.0.0.1" : host;
  const absl::Time give_up = absl::Now() + absl::Seconds(ready_timeout_s);
  while (true) {
    if (interrupted()) {
      StopAll(children, absl::Seconds(10));
      return 130;
    }
    for (const Child& c : children) {
      if (Exited(c.process.pid())) {
        return fail(absl::UnavailableError(absl::StrCat(c.name, " exited during start-up")));
      }
    }
    transport::http::HttpClientRequest get;
    get.target = "/ready";
    auto r = transport::http::HttpFetch(probe_host, static_cast<uint16_t>(actual_port), get,
                                        absl::Seconds(2));
    if (r.ok() && r->status == 200) {
      const auto body = nlohmann::json::parse(r->body, nullptr, false);
      auto ready = body.is_object() ? body.find("workers_ready") : body.end();
      if (ready != body.end() && ready->is_number_integer() && ready->get<int>() >= total_workers) {
        break;
      }
    }
    if (absl::Now() > give_up) {
      return fail(absl::DeadlineExceededError("the cluster did not become ready in time"));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  const std::string base = absl::StrCat(
      "http://", host.find(':') != std::string::npos ? absl::StrCat("[", host, "]") : host, ":",
      actual_port);
  std::printf(
      "kvasir up: ready: serving %s at %s/v1 (%s, KV policy %s)\n"
      "\n"
      "  curl %s/v1/chat/completions -H 'Content-Type: application/json'%s \\\n"
      "    -d '{\"model\": \"%s\", \"messages\": [{\"role\": \"user\", \"content\": \"What is "
      "the capital of France?\"}], \"max_tokens\": 64}'\n"
      "\n"
      "Ctrl-C stops every process.\n",
      model_name.c_str(), base.c_str(),
      WorkerSummary(workers, prefill_workers, decode_workers).c_str(),
      kv.empty() ? (kv_policies.empty() ? "full" : kv_policies.front().c_str()) : kv.c_str(),
      base.c_str(), api_key_file.empty() ? "" : " -H \"Authorization: Bearer $KEY\"",
      model_name.c_str());
  std::fflush(stdout);

  // Serve until a signal; restart the children that die.
  const size_t colon = rpc.rfind(':');
  Supervisor supervisor(rpc.substr(0, colon),
                        static_cast<uint16_t>(std::atoi(rpc.c_str() + colon + 1)));
  while (true) {
    timespec tick{0, 100 * 1000 * 1000};
    const int signal = sigtimedwait(&signals, nullptr, &tick);
    if (signal > 0) {
      std::printf("kvasir up: %s, stopping\n", signal == SIGINT ? "SIGINT" : "SIGTERM");
      std::fflush(stdout);
      StopAll(children, absl::Seconds(10));
      std::printf("kvasir up: stopped\n");
      std::fflush(stdout);
      return 0;
    }
    supervisor.Tick(children);
  }
}

}  // namespace kvasir::cli
