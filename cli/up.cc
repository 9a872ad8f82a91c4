// `kvasir up`: a local cluster in one command. Starts the coordinator, the cachestore and N
// workers as child processes (binaries beside this one), waits until /ready answers 200 with every
// worker registered, prints where it listens and a curl example, and on Ctrl-C or SIGTERM stops
// every process (SIGTERM, then SIGKILL after a grace period). A child that dies stops the cluster
// too.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "common/strings.h"
#include "model/model_files.h"
#include "nlohmann/json.hpp"
#include "transport/child_process.h"
#include "transport/http/client.h"

namespace kvasir::cli {
namespace {

struct Child {
  std::string name;
  transport::ChildProcess process;
};

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
  for (auto it = children.rbegin(); it != children.rend(); ++it) it->process.Signal(SIGTERM);
  const absl::Time deadline = absl::Now() + grace;
  for (auto it = children.rbegin(); it != children.rend(); ++it) {
    absl::StatusOr<int> code =
        it->process.Wait(std::max(deadline - absl::Now(), absl::Milliseconds(1)));
    if (!code.ok()) {
      std::fprintf(stderr, "kvasir up: %s did not stop in time; killed\n", it->name.c_str());
    }
  }
  children.clear();
}

}  // namespace

int RunUp(int argc, char** argv) {
  const std::string cmd = "kvasir up";
  ArgParser p("kvasir up [--model M] [--host H] [--port P] [--workers N] [--kv POLICY]",
              "Starts a local cluster (coordinator, cachestore and workers) serving the model over "
              "an OpenAI-compatible HTTP API, and stops it on Ctrl-C or SIGTERM. The cachestore "
              "holds KV blocks for the disaggregated prefill/decode path; workers of this "
              "version do not use it yet.");
  std::string model = "default", host = "127.0.0.1", kv = "full", api_key_file, kv_cache_memory,
              cachestore_capacity = "1GiB";
  bool no_cachestore = false;
  std::vector<std::string> served_names;
  int32_t port = 8000, workers = 1, threads = 0, max_num_seqs = 0, max_num_batched_tokens = 0,
          max_model_len = 0, ready_timeout_s = 600, tp = 1;
  p.AddString("model", &model, "PATH", "a .gguf file, a Hugging Face folder, or 'default'");
  p.AddString("host", &host, "ADDR", "HTTP address of the coordinator");
  p.AddInt32("port", &port, "HTTP port of the coordinator (0: any free port)");
  p.AddInt32("workers", &workers, "worker processes (each serves the whole model)");
  p.AddString("kv", &kv, "POLICY", "KV cache policy of requests that name none");
  p.AddInt32("threads", &threads, "compute threads per worker (0: the cores divided by workers)");
  p.AddString("kv-cache-memory", &kv_cache_memory, "BYTES", "KV cache size per worker (4GiB)");
  p.AddInt32("max-num-seqs", &max_num_seqs, "sequences per batch per worker (0: default)");
  p.AddInt32("max-num-batched-tokens", &max_num_batched_tokens,
             "tokens per step per worker (0: default)");
  p.AddInt32("max-model-len", &max_model_len, "tokens per request (0: the model's context)");
  p.AddStrings("served-model-name", &served_names, "NAME", "model name(s) clients use");
  p.AddString("api-key-file", &api_key_file, "PATH", "require one of these API keys");
  p.AddInt32("tensor-parallel-size", &tp, "tensor-parallel ranks per worker (only 1 for now)");
  p.AddInt32("ready-timeout-s", &ready_timeout_s, "how long to wait for /ready");
  p.AddString("cachestore-capacity", &cachestore_capacity, "BYTES",
              "memory of the cachestore's KV block tier");
  p.AddBool("no-cachestore", &no_cachestore, "do not start a cachestore");
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(cmd, s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  if (workers < 1 || workers > 64) {
    return Fail(cmd, absl::InvalidArgumentError("--workers must be in [1, 64]"), 2);
  }
  if (tp != 1) {
    return Fail(cmd, absl::InvalidArgumentError("--tensor-parallel-size: only 1 for now"), 2);
  }
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
    threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / workers);
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
  children.push_back({"coordinator", std::move(*coordinator)});
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
  std::printf("kvasir up: coordinator pid=%d http=%s rpc=%s\n", children.back().process.pid(),
              http.c_str(), rpc.c_str());
  std::fflush(stdout);

  // Cachestore: its first line is "PORT <rpc port> HTTP <http port>".
  if (!no_cachestore) {
    auto store = transport::ChildProcess::Spawn({cachestore_bin, "--host", "127.0.0.1", "--port",
                                                 "0", "--http-port", "0", "--capacity",
                                                 cachestore_capacity, "--name", "cachestore"});
    if (!store.ok()) return fail(store.status());
    children.push_back({"cachestore", std::move(*store)});
    auto store_line = children.back().process.ReadLine(absl::Seconds(60));
    std::vector<std::string> words;
    if (store_line.ok()) words = absl::StrSplit(*store_line, ' ', absl::SkipEmpty());
    if (words.size() < 4 || words[0] != "PORT" || words[2] != "HTTP") {
      return fail(absl::UnavailableError("the cachestore did not start (see its messages above)"));
    }
    std::printf("kvasir up: cachestore pid=%d rpc=127.0.0.1:%s http=127.0.0.1:%s capacity=%s\n",
                children.back().process.pid(), words[1].c_str(), words[3].c_str(),
                cachestore_capacity.c_str());
    std::fflush(stdout);
  }

  // Workers.
  const size_t first_worker = children.size();
  for (int i = 0; i < workers; ++i) {
    std::vector<std::string> w = {worker_bin,
                                  "--model",
                                  *path,
                                  "--coordinator",
                                  rpc,
                                  "--name",
                                  absl::StrCat("worker-", i),
                                  "--kv-policy",
                                  kv,
                                  "--threads",
                                  std::to_string(threads),
                                  "--host",
                                  "127.0.0.1"};
    if (!kv_cache_memory.empty()) {
      w.push_back("--kv-cache-memory");
      w.push_back(kv_cache_memory);
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
    auto worker = transport::ChildProcess::Spawn(w);
    if (!worker.ok()) return fail(worker.status());
    children.push_back({absl::StrCat("worker-", i), std::move(*worker)});
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
      if (ready != body.end() && ready->is_number_integer() && ready->get<int>() >= workers) {
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
      "kvasir up: ready: serving %s at %s/v1 (%d worker%s, KV policy %s)\n"
      "\n"
      "  curl %s/v1/chat/completions -H 'Content-Type: application/json'%s \\\n"
      "    -d '{\"model\": \"%s\", \"messages\": [{\"role\": \"user\", \"content\": \"What is "
      "the capital of France?\"}], \"max_tokens\": 64}'\n"
      "\n"
      "Ctrl-C stops every process.\n",
      model_name.c_str(), base.c_str(), workers, workers == 1 ? "" : "s", kv.c_str(), base.c_str(),
      api_key_file.empty() ? "" : " -H \"Authorization: Bearer $KEY\"", model_name.c_str());
  std::fflush(stdout);

  // Serve until a signal, or until a child dies.
  while (true) {
    timespec tick{0, 200 * 1000 * 1000};
    const int signal = sigtimedwait(&signals, nullptr, &tick);
    if (signal > 0) {
      std::printf("kvasir up: %s, stopping\n", signal == SIGINT ? "SIGINT" : "SIGTERM");
      std::fflush(stdout);
      StopAll(children, absl::Seconds(10));
      std::printf("kvasir up: stopped\n");
      std::fflush(stdout);
      return 0;
    }
    for (const Child& c : children) {
      if (Exited(c.process.pid())) {
        std::fprintf(stderr, "kvasir up: %s exited; stopping the cluster\n", c.name.c_str());
        StopAll(children, absl::Seconds(10));
        return 1;
      }
    }
  }
}

}  // namespace kvasir::cli
