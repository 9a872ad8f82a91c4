// The worker as a service (`kvasir-worker`): the engine behind the continuous-batching scheduler,
// reachable over the control plane ("worker.Generate" streams tokens, "worker.Stats"), with its
// own /health, /ready and /metrics over HTTP. It registers with the coordinator and sends
// heartbeats with its load; a coordinator that forgot it (restart, missed heartbeats) gets a new
// registration. Cancelling a Generate call (the coordinator's client went away, a deadline, a
// lost connection) cancels the request and frees its KV.
//
// Threads: the executor thread owns the engine and runs Scheduler::Step in a loop; the RPC and
// HTTP servers have their own I/O threads; the heartbeat thread talks to the coordinator.
//
//   KVASIR_ASSIGN_OR_RETURN(auto engine, Engine::Load({.model = "default"}));
//   WorkerServiceOptions options;
//   options.coordinator = "127.0.0.1:7100";
//   KVASIR_ASSIGN_OR_RETURN(auto service, WorkerService::Start(*engine, options));
//   ... service->rpc_port() ...
//   service->Stop();
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/process_metrics.h"
#include "prometheus/registry.h"
#include "transport/http/server.h"
#include "transport/rpc/client.h"
#include "transport/rpc/server.h"
#include "worker/engine.h"
#include "worker/service/metrics.h"
#include "worker/service/scheduler.h"
#include "worker/service/worker_service.pb.h"

namespace kvasir::worker::service {

struct WorkerServiceOptions {
  std::string name;                // unique worker name; "" = "worker-<pid>"
  std::string host = "127.0.0.1";  // address the RPC and HTTP servers bind
  uint16_t rpc_port = 0;           // 0: the OS picks
  uint16_t http_port = 0;          // 0: the OS picks
  std::string advertise_host;      // address the coordinator should dial ("" = host)
  std::string coordinator;         // host:port of the coordinator's RPC server; "" = standalone
  // "both"; "prefill" or "decode" (disaggregated serving) need a cachestore.
  std::string role = "both";
  std::string cachestore;  // host:port of the cachestore's RPC server; "" = none
  std::string model_name;  // reported to the coordinator
  absl::Duration heartbeat_interval = absl::Milliseconds(500);
  absl::Duration step_delay = absl::ZeroDuration();  // testing: a pause after every step
  SchedulerOptions scheduler;
};

class WorkerService {
 public:
  // Creates the scheduler, starts the servers and the threads. The engine must outlive the
  // service. InvalidArgument for bad options (an unsupported role, a malformed address).
  static absl::StatusOr<std::unique_ptr<WorkerService>> Start(Engine& engine,
                                                              WorkerServiceOptions options);
  ~WorkerService();  // Stop()
  WorkerService(const WorkerService&) = delete;
  WorkerService& operator=(const WorkerService&) = delete;

  uint16_t rpc_port() const { return rpc_->port(); }
  uint16_t http_port() const { return http_->port(); }
  const std::string& name() const { return options_.name; }
  // True once the coordinator accepted the registration (always false when standalone).
  bool registered() const { return registered_.load(); }
  SchedulerStats stats() const { return scheduler_->stats(); }
  // True once a drain (the "worker.Drain" RPC) has migrated every live request: time to exit.
  bool drained() const;

  // Refuses new requests, fails the live ones with Unavailable, stops the threads and servers.
  // Idempotent; safe from any thread except the service's own.
  void Stop();

 private:
  WorkerService(Engine& engine, WorkerServiceOptions options)
      : engine_(engine), options_(std::move(options)) {}
  void HandleGenerate(std::shared_ptr<transport::rpc::ServerCall> call);
  void HandleHttp(transport::http::HttpRequest request,
                  std::shared_ptr<transport::http::HttpResponder> responder);
  void ExecutorLoop();
  serving::WorkerLoad Load() const;
  void HeartbeatLoop();

  Engine& engine_;
  WorkerServiceOptions options_;
  std::string coordinator_host_;
  uint16_t coordinator_port_ = 0;
  prometheus::Registry registry_;                   // outlives metrics_
  std::unique_ptr<cachestore::StoreClient> store_;  // before scheduler_: it outlives it
  std::unique_ptr<WorkerMetrics> metrics_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<transport::rpc::RpcServer> rpc_;
  std::unique_ptr<transport::http::HttpServer> http_;
  std::unique_ptr<transport::rpc::RpcClient> coordinator_client_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> registered_{false};
  std::atomic<bool> fabric_ok_{true};  // the cachestore answers (heartbeat thread checks)
  std::atomic<uint64_t> request_counter_{0};
  absl::Mutex mu_;  // for the heartbeat thread's sleep
  bool stop_heartbeats_ ABSL_GUARDED_BY(mu_) = false;
  std::thread executor_;
  std::thread heartbeat_;
  absl::Mutex stop_mu_;
  bool stopped_ ABSL_GUARDED_BY(stop_mu_) = false;
};

}  // namespace kvasir::worker::service
