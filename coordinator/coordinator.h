// The coordinator service (`kvasir-coordinator`): the OpenAI-compatible HTTP API in front of the
// workers. It authenticates (API keys), validates and tokenizes requests (chat requests through
// the model's chat template), routes each choice of a request to the least-loaded live worker
// over the control plane, and streams the tokens back (server-sent events) or answers with the
// whole completion. It keeps the worker registry (registration and heartbeats over RPC, dead
// workers dropped), serves /health, /ready and /metrics, and cancels the generation on the
// worker when the client goes away.
//
// Endpoints (docs/serving.md): POST /v1/completions, POST /v1/chat/completions,
// GET /v1/models, POST /tokenize, POST /detokenize, GET /health, GET /ready, GET /metrics.
//
// Failure policy: a choice whose worker is lost or refuses before producing any token is retried
// once on another worker; after the first token, the request fails with a clean error (a JSON
// error, or an SSE data line with the error object in a stream). Every call to a worker carries
// the request's deadline.
//
// Threads: the HTTP server's I/O threads run the handlers; each choice of a generation runs on
// its own thread (it blocks reading the worker's stream); the RPC server has its I/O thread; a
// sweeper thread drops workers whose heartbeats stopped.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/api.h"
#include "coordinator/metrics.h"
#include "coordinator/registry.h"
#include "model/model_files.h"
#include "model/tokenizer/tokenizer.h"
#include "prometheus/registry.h"
#include "transport/http/server.h"
#include "transport/rpc/server.h"

namespace kvasir::coordinator {

struct CoordinatorOptions {
  std::string model = "default";  // .gguf, Hugging Face folder or "default": the tokenizer
  std::vector<std::string> served_model_names;  // names clients use; empty: the model file stem
  std::string host = "127.0.0.1";               // HTTP address
  uint16_t port = 8000;                         // HTTP port (0: any)
  std::string rpc_host = "127.0.0.1";           // where workers register
  uint16_t rpc_port = 0;                        // (0: any)
  std::vector<std::string> api_keys;            // empty: no authentication
  // The tenant of api_keys[i] (missing or "": the shared default tenant). A tenant's requests
  // share cached KV only among themselves: its name salts the workers' prefix cache.
  std::vector<std::string> api_key_tenants;
  bool allow_unauthenticated = false;  // serve a non-loopback address without API keys
  int32_t max_model_len = 0;           // 0: the model's context length
  size_t max_body_bytes = 4 << 20;     // larger request bodies get 413
  int32_t max_pending_requests = 256;  // generations in flight at most; more get 429
  absl::Duration request_timeout = absl::Seconds(600);          // deadline of one generation
  absl::Duration heartbeat_interval = absl::Milliseconds(500);  // asked of workers
  absl::Duration worker_timeout = absl::Seconds(3);             // no heartbeat for this long: dead
  int http_threads = 2;
  // "kv": route each request by its prompt's blocks cached on each worker against the worker's
  // load (KV-aware routing); "load": by load alone.
  std::string routing = "kv";
};

class Coordinator {
 public:
  // Loads the tokenizer, starts the HTTP and RPC servers and the sweeper. InvalidArgument for
  // bad options (including a non-loopback host without API keys, unless allowed).
  static absl::StatusOr<std::unique_ptr<Coordinator>> Start(CoordinatorOptions options);
  ~Coordinator();  // Stop()
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  uint16_t http_port() const { return http_->port(); }
  uint16_t rpc_port() const { return rpc_->port(); }
  const std::string& model_name() const { return served_names_.front(); }
  int32_t max_model_len() const { return max_model_len_; }
  WorkerRegistry& registry() { return *registry_; }

  // Stops accepting, cancels the generations in flight (their clients get an error or a closed
  // connection), joins every thread. Idempotent; not from a handler.
  void Stop();

  class Generation;  // one generation request in flight (generation.cc)
  // Stops new generations and cancels those in flight (Stop).
  void CancelGenerations();

 private:
  explicit Coordinator(CoordinatorOptions options) : options_(std::move(options)) {}
  void HandleHttp(transport::http::HttpRequest request,
                  std::shared_ptr<transport::http::HttpResponder> responder);
  // `cache_salt`: the prefix-cache salt of the request's tenant (CacheSalt).
  void HandleGeneration(const transport::http::HttpRequest& request, Endpoint endpoint,
                        uint64_t cache_salt,
                        std::shared_ptr<transport::http::HttpResponder> responder);
  void HandleTokenize(const transport::http::HttpRequest& request,
                      std::shared_ptr<transport::http::HttpResponder> responder);
  void HandleDetokenize(const transport::http::HttpRequest& request,
                        std::shared_ptr<transport::http::HttpResponder> responder);
  void HandleReady(std::shared_ptr<transport::http::HttpResponder> responder);
  // POST /admin/drain {"worker": NAME}: the worker's requests resume on others, then it exits.
  void HandleDrain(const transport::http::HttpRequest& request,
                   std::shared_ptr<transport::http::HttpResponder> responder);
  void SendError(transport::http::HttpResponder& responder, const ApiError& error,
                 const std::string& metric_reason);
  // The index in options_.api_keys of the request's bearer key, if one matches.
  std::optional<size_t> MatchKey(const transport::http::HttpRequest& request) const;
  // The prefix-cache salt of the tenant of api_keys[key] (0: the default tenant, or no key).
  uint64_t CacheSalt(std::optional<size_t> key) const;
  void SweepLoop();
  // Runs `fn` on a thread of its own; false after Stop.
  bool Spawn(std::function<void()> fn);
  void ReapThreads();

  CoordinatorOptions options_;
  std::vector<std::string> served_names_;
  std::unique_ptr<model::ModelFiles> files_;  // outlives tokenizer_
  std::unique_ptr<model::Tokenizer> tokenizer_;
  absl::StatusOr<model::ChatTemplateKind> chat_kind_ = absl::UnknownError("unset");
  int32_t max_model_len_ = 0;
  int64_t started_unix_ = 0;

  prometheus::Registry metrics_registry_;  // outlives metrics_
  std::unique_ptr<CoordinatorMetrics> metrics_;
  std::unique_ptr<WorkerRegistry> registry_;
  std::unique_ptr<transport::rpc::RpcServer> rpc_;
  std::unique_ptr<transport::http::HttpServer> http_;

  std::atomic<int32_t> pending_{0};  // generations in flight
  std::atomic<uint64_t> request_counter_{0};
  uint64_t id_salt_ = 0;

  absl::Mutex threads_mu_;
  bool stopping_ ABSL_GUARDED_BY(threads_mu_) = false;
  uint64_t next_thread_ ABSL_GUARDED_BY(threads_mu_) = 0;
  std::vector<std::pair<uint64_t, std::thread>> threads_ ABSL_GUARDED_BY(threads_mu_);
  std::vector<uint64_t> finished_threads_ ABSL_GUARDED_BY(threads_mu_);
  std::vector<std::weak_ptr<Generation>> live_ ABSL_GUARDED_BY(threads_mu_);

  absl::Mutex sweep_mu_;
  bool stop_sweep_ ABSL_GUARDED_BY(sweep_mu_) = false;
  std::thread sweeper_;
  absl::Mutex stop_mu_;
  bool stopped_ ABSL_GUARDED_BY(stop_mu_) = false;
};

}  // namespace kvasir::coordinator
