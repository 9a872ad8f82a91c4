// `kvasir-worker`: loads the engine and serves it (worker/service/worker_service.h) until SIGINT
// or SIGTERM. Prints one line to stdout once serving, for scripts and `kvasir up`:
//   kvasir-worker: name=worker-0 rpc=127.0.0.1:40123 http=127.0.0.1:40124
#include <signal.h>

#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "cli/args.h"
#include "cli/common.h"
#include "common/units.h"
#include "model/model_files.h"
#include "worker/adapter.h"
#include "worker/service/worker_service.h"

namespace {

using kvasir::cli::Fail;

int Main(int argc, char** argv) {
  const std::string cmd = "kvasir-worker";
  kvasir::cli::ArgParser p(
      "kvasir-worker [options]",
      "Serves a model with continuous batching: registers with the coordinator, takes requests "
      "over RPC, streams tokens back. /health, /ready and /metrics on --http-port.");
  kvasir::cli::EngineFlags engine_flags;
  kvasir::worker::service::WorkerServiceOptions options;
  kvasir::worker::service::SchedulerOptions& sched = options.scheduler;
  int32_t port = 0, http_port = 0, heartbeat_ms = 500, step_delay_ms = 0;
  kvasir::cli::TpFlags tp;
  engine_flags.Register(p);
  tp.Register(p);
  p.AddString("host", &options.host, "ADDR", "address to bind the RPC and HTTP servers");
  p.AddInt32("port", &port, "RPC port for the coordinator (0: any free port)");
  p.AddInt32("http-port", &http_port, "HTTP port for /health, /ready, /metrics (0: any)");
  p.AddString("advertise-host", &options.advertise_host, "ADDR",
              "address the coordinator should dial (default: --host)");
  p.AddString("coordinator", &options.coordinator, "HOST:PORT",
              "the coordinator's RPC address (empty: standalone)");
  p.AddString("name", &options.name, "NAME", "unique worker name (default: worker-<pid>)");
  p.AddString("role", &options.role, "ROLE",
              "both (prefill and decode here), or prefill / decode (disaggregated serving: the "
              "KV moves through the cachestore)");
  p.AddString("cachestore", &options.cachestore, "HOST:PORT",
              "the cachestore's RPC address (needed by --role prefill and decode; with prefix "
              "caching it is also the prefix cache's second tier)");
  p.AddInt32("max-model-len", &sched.max_model_len,
             "tokens of one sequence at most, prompt included (0: the model's context)");
  p.AddInt32("max-num-seqs", &sched.max_num_seqs, "sequences in one batch at most");
  p.AddInt32("max-num-batched-tokens", &sched.max_num_batched_tokens,
             "tokens in one forward step at most (decode tokens plus prefill chunks)");
  p.AddInt32("prefill-chunk", &sched.prefill_chunk, "prompt tokens of one sequence per step");
  int32_t target_itl_ms = -1;
  p.AddInt32("target-itl-ms", &target_itl_ms,
             "inter-token latency target: while sequences decode, steps take only the prefill "
             "tokens a model of this machine's step time predicts to fit (-1: 2x a step of "
             "--max-num-seqs decodes, measured at start-up; 0: none)");
  p.AddInt32("max-waiting", &sched.max_waiting, "queued requests at most (then refused)");
  std::vector<std::string> kv_policies;
  p.AddStrings("kv-policy", &kv_policies, "[NAME=]SPEC",
               "a KV policy this worker offers (see kvasir generate --help). Files "
               "(groups=, weights=) are named only here: requests select the policy by NAME");
  p.AddString("default-kv-policy", &sched.default_kv_policy, "NAME|SPEC",
              "KV policy of requests that name none (default: the first --kv-policy, or full)");
  int32_t transfer_timeout_ms = 3000;
  p.AddInt32("kv-transfer-timeout-ms", &transfer_timeout_ms,
             "deadline of one KV push or pull to the cachestore (then: recompute)");
  p.AddInt32("kv-stream-layers", &sched.kv_stream_layers,
             "--role prefill: write the KV in parts of this many layers, each as soon as its "
             "layers are computed, while the later ones compute (0: all at the end)");
  bool no_prefix_caching = false;
  p.AddBool("no-prefix-caching", &no_prefix_caching,
            "do not share the KV of common prompt prefixes between requests");
  bool no_prefix_store = false;
  p.AddBool("no-prefix-store", &no_prefix_store,
            "keep prefix-cache blocks in this worker only: do not write them to the cachestore "
            "nor look them up there");
  p.AddInt32("heartbeat-interval-ms", &heartbeat_ms, "heartbeat period to the coordinator");
  p.AddInt32("debug-step-delay-ms", &step_delay_ms,
             "testing: sleep this long after every step (simulates a slow model)");
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(cmd, s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  if (absl::Status s = tp.Check(); !s.ok()) return Fail(cmd, s, 2);
  if (port < 0 || port > 65535 || http_port < 0 || http_port > 65535 || heartbeat_ms <= 0 ||
      step_delay_ms < 0 || transfer_timeout_ms <= 0) {
    return Fail(cmd, absl::InvalidArgumentError("a port, interval or delay is out of range"), 2);
  }
  for (const std::string& v : kv_policies) {
    sched.kv_policies.push_back(kvasir::worker::ParsePolicyConfig(v));
    // A policy with a retrofit adapter: the engine merges it (one model per worker, so every
    // configured policy must name the same adapter; the registry checks that).
    auto adapter = kvasir::worker::AdapterOfSpec(sched.kv_policies.back().spec);
    if (!adapter.ok()) return Fail(cmd, adapter.status(), 2);
    if (!adapter->empty() && engine_flags.adapter.empty()) engine_flags.adapter = *adapter;
  }
  if (tp.follower()) {
    // Ranks 1..N-1 of a group: the steps of rank 0, with the same configured policies.
    return kvasir::cli::RunFollower(
        cmd, engine_flags, tp, [&sched](kvasir::worker::Engine& engine) {
          auto registry = std::shared_ptr<kvasir::worker::PolicyRegistry>(
              kvasir::worker::PolicyRegistry::Create(
                  engine.cache().geometry(), sched.kv_policies, sched.default_kv_policy,
                  [&engine](const kvasir::kvcache::KvPolicy& p) { return engine.CheckAdapter(p); })
                  .value_or(nullptr));
          return kvasir::worker::PolicyResolver(
              [registry, &engine](std::string_view spec)
                  -> absl::StatusOr<std::shared_ptr<const kvasir::kvcache::KvPolicy>> {
                if (registry == nullptr) return engine.Policy(spec);
                return registry->ResolveSpec(spec);
              });
        });
  }
  sched.kv_transfer_timeout = absl::Milliseconds(transfer_timeout_ms);
  if (target_itl_ms < -1 || target_itl_ms > 600000) {
    return Fail(cmd, absl::InvalidArgumentError("--target-itl-ms must be in [-1, 600000]"), 2);
  }
  sched.target_itl = absl::Milliseconds(target_itl_ms);  // -1 ms: calibrated
  sched.enable_prefix_caching = !no_prefix_caching;
  sched.enable_prefix_store = !no_prefix_store;
  options.rpc_port = static_cast<uint16_t>(port);
  options.http_port = static_cast<uint16_t>(http_port);
  options.heartbeat_interval = absl::Milliseconds(heartbeat_ms);
  options.step_delay = absl::Milliseconds(step_delay_ms);

  // Signals are taken by sigwait below; block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto path = kvasir::model::ResolveModelPath(engine_flags.model);
  if (!path.ok()) return Fail(cmd, path.status());
  options.model_name = std::filesystem::path(*path).stem().string();
  auto ranks = kvasir::cli::LoadRankEngine(engine_flags, tp,
                                           std::vector<std::string>(argv + 1, argv + argc));
  if (!ranks.ok()) return Fail(cmd, ranks.status());
  auto service = kvasir::worker::service::WorkerService::Start(*ranks->engine, options);
  if (!service.ok()) return Fail(cmd, service.status());
  std::printf("kvasir-worker: name=%s rpc=%s:%d http=%s:%d\n", (*service)->name().c_str(),
              options.host.c_str(), (*service)->rpc_port(), options.host.c_str(),
              (*service)->http_port());
  std::fflush(stdout);

  // Until a signal, or until a drain (the coordinator's POST /admin/drain) is complete.
  const timespec poll{.tv_sec = 0, .tv_nsec = 200'000'000};
  while (true) {
    const int signal = sigtimedwait(&signals, nullptr, &poll);
    if (signal == SIGINT || signal == SIGTERM) {
      std::fprintf(stderr, "kvasir-worker: %s, stopping\n",
                   signal == SIGINT ? "SIGINT" : "SIGTERM");
      break;
    }
    if ((*service)->drained()) {
      std::fprintf(stderr, "kvasir-worker: drained, stopping\n");
      break;
    }
    if (ranks->leader != nullptr && ranks->leader->lost()) {
      // A rank died or hung: the group serves no more (the coordinator sees this worker go, and
      // `kvasir up` starts the group again).
      std::fprintf(stderr, "kvasir-worker: the tensor-parallel group is lost, stopping\n");
      (*service)->Stop();
      return 1;
    }
  }
  (*service)->Stop();
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
