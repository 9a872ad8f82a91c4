// WorkerService (see worker_service.h).
#include "worker/service/worker_service.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "kvcache/prefix_hash.h"
#include "nlohmann/json.hpp"
#include "transport/rpc/channel.h"
#include "worker/service/worker_service.pb.h"

namespace kvasir::worker::service {

namespace rpc = transport::rpc;
namespace http = transport::http;

namespace {

serving::GenerateEvent ToEvent(const RequestOutput& out) {
  serving::GenerateEvent event;
  event.mutable_ids()->Add(out.ids.begin(), out.ids.end());
  event.set_text(out.text);
  for (const TokenLogprobs& lp : out.logprobs) {
    serving::TokenLogprob* p = event.add_logprobs();
    p->set_id(lp.id);
    p->set_logprob(lp.logprob);
    for (const auto& [id, logprob] : lp.top) {
      p->add_top_ids(id);
      p->add_top_logprobs(logprob);
    }
  }
  event.set_finish_reason(out.finish_reason);
  event.set_prompt_tokens(out.prompt_tokens);
  event.set_completion_tokens(out.completion_tokens);
  event.set_preemptions(out.preemptions);
  event.set_queue_seconds(out.queue_seconds);
  event.set_kv_source(out.kv_source);
  event.set_kv_transfer_bytes(out.kv_transfer_bytes);
  event.set_kv_transfer_seconds(out.kv_transfer_seconds);
  event.mutable_kv_layer_bounds()->Add(out.kv_layer_bounds.begin(), out.kv_layer_bounds.end());
  event.set_kv_push_wait_seconds(out.kv_push_wait_seconds);
  event.mutable_kv_head_bounds()->Add(out.kv_head_bounds.begin(), out.kv_head_bounds.end());
  return event;
}

http::HttpResponse JsonResponse(int status, const nlohmann::json& body) {
  http::HttpResponse r;
  r.status = status;
  r.body = body.dump();
  return r;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerService>> WorkerService::Start(Engine& engine,
                                                                    WorkerServiceOptions options) {
  if (options.role != "both" && options.role != "prefill" && options.role != "decode") {
    return absl::InvalidArgumentError(
        absl::StrCat("--role must be both, prefill or decode, got '", options.role, "'"));
  }
  if (options.role != "both" && options.cachestore.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--role ", options.role,
                     " hands KV over through a cachestore: give --cachestore HOST:PORT"));
  }
  if (options.name.empty()) options.name = absl::StrCat("worker-", getpid());
  if (options.advertise_host.empty()) {
    options.advertise_host =
        options.host == "0.0.0.0" || options.host == "::" ? "127.0.0.1" : options.host;
  }
  if (options.heartbeat_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the heartbeat interval must be > 0");
  }
  std::unique_ptr<WorkerService> service(new WorkerService(engine, std::move(options)));
  WorkerService& s = *service;
  if (!s.options_.coordinator.empty()) {
    KVASIR_ASSIGN_OR_RETURN(auto hp, http::ParseHostPort(s.options_.coordinator));
    s.coordinator_host_ = hp.first;
    s.coordinator_port_ = hp.second;
  }
  s.metrics_ = std::make_unique<WorkerMetrics>(s.registry_, s.options_.name);
  if (!s.options_.cachestore.empty()) {
    KVASIR_ASSIGN_OR_RETURN(auto hp, http::ParseHostPort(s.options_.cachestore));
    cachestore::ClientOptions co;
    co.host = hp.first;
    co.port = hp.second;
    co.name = s.options_.name;
    co.connect_timeout = absl::Seconds(10);
    auto store = cachestore::StoreClient::Connect(co);
    if (!store.ok()) {
      return absl::Status(store.status().code(), absl::StrCat("cachestore ", s.options_.cachestore,
                                                              ": ", store.status().message()));
    }
    s.store_ = std::move(*store);
  }
  KVASIR_ASSIGN_OR_RETURN(s.scheduler_,
                          Scheduler::Create(engine, s.options_.scheduler, s.store_.get()));

  rpc::HandshakeInfo handshake;
  handshake.prefix_hash_test_vector = kvcache::PrefixHashTestVector();
  handshake.role = "worker";
  handshake.name = s.options_.name;
  rpc::RpcServer::Options rpc_options;
  rpc_options.host = s.options_.host;
  rpc_options.port = s.options_.rpc_port;
  rpc_options.handshake = handshake;
  KVASIR_ASSIGN_OR_RETURN(s.rpc_, rpc::RpcServer::Create(rpc_options));
  WorkerService* self = service.get();
  s.rpc_->RegisterStream("worker.Generate", [self](std::shared_ptr<rpc::ServerCall> call) {
    self->HandleGenerate(std::move(call));
  });
  s.rpc_->RegisterUnary("worker.Stats", [self](std::shared_ptr<rpc::ServerCall> call) {
    call->Finish(self->Load().SerializeAsString());
  });
  s.rpc_->RegisterUnary("worker.Drain", [self](std::shared_ptr<rpc::ServerCall> call) {
    serving::DrainResponse response;
    response.set_live_requests(self->scheduler_->Drain());
    KVASIR_LOG_SUBSYS(INFO, kWorker, "worker %s drains: %d live requests migrate",
                      self->options_.name, response.live_requests());
    call->Finish(response.SerializeAsString());
  });

  http::HttpServer::Options http_options;
  http_options.host = s.options_.host;
  http_options.port = s.options_.http_port;
  http_options.max_body_bytes = 64 << 10;
  KVASIR_ASSIGN_OR_RETURN(
      s.http_,
      http::HttpServer::Start(
          http_options, [self](http::HttpRequest request, std::shared_ptr<http::HttpResponder> r) {
            self->HandleHttp(std::move(request), std::move(r));
          }));
  KVASIR_RETURN_IF_ERROR(s.rpc_->Start());
  s.executor_ = std::thread([self] { self->ExecutorLoop(); });
  if (!s.options_.coordinator.empty()) {
    rpc::RpcClient::Options client_options;
    client_options.host = s.coordinator_host_;
    client_options.port = s.coordinator_port_;
    client_options.handshake = handshake;
    client_options.default_timeout = absl::Seconds(2);
    KVASIR_ASSIGN_OR_RETURN(s.coordinator_client_, rpc::RpcClient::Create(client_options));
    s.heartbeat_ = std::thread([self] { self->HeartbeatLoop(); });
  }
  KVASIR_LOG_SUBSYS(INFO, kWorker, "worker %s serving rpc=%s:%d http=%s:%d role=%s",
                    s.options_.name, s.options_.host, s.rpc_->port(), s.options_.host,
                    s.http_->port(), s.options_.role);
  return service;
}

WorkerService::~WorkerService() { Stop(); }

void WorkerService::Stop() {
  {
    absl::MutexLock lock(&stop_mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  stopping_.store(true);
  {
    absl::MutexLock lock(&mu_);
    stop_heartbeats_ = true;
  }
  if (heartbeat_.joinable()) heartbeat_.join();
  if (coordinator_client_) coordinator_client_->Stop();
  if (scheduler_) scheduler_->Wake();
  if (executor_.joinable()) executor_.join();  // fails what is live with Unavailable
  if (rpc_) rpc_->Stop();
  if (http_) http_->Stop();
}

void WorkerService::HandleGenerate(std::shared_ptr<rpc::ServerCall> call) {
  serving::GenerateRequest request;
  if (!request.ParseFromString(call->request())) {
    call->Finish(absl::InvalidArgumentError("malformed worker.Generate request"));
    return;
  }
  if (stopping_.load()) {
    call->Finish(absl::UnavailableError("the worker is shutting down"));
    return;
  }
  SchedulerRequest r;
  r.id = request.request_id().empty()
             ? absl::StrCat(options_.name, "-", request_counter_.fetch_add(1) + 1)
             : request.request_id();
  r.prompt.assign(request.prompt().begin(), request.prompt().end());
  if (request.has_sampling()) {
    const serving::SamplingOptions& so = request.sampling();
    r.sampling.temperature = so.temperature();
    r.sampling.top_k = so.top_k();
    r.sampling.top_p = so.top_p();
    r.sampling.min_p = so.min_p();
    r.sampling.repetition_penalty = so.repetition_penalty();
    r.sampling.seed = so.seed();
  }
  r.max_tokens = request.max_tokens();
  r.stop.assign(request.stop().begin(), request.stop().end());
  r.stop_ids.assign(request.stop_ids().begin(), request.stop_ids().end());
  r.ignore_eos = request.ignore_eos();
  r.kv_policy = request.kv_policy();
  r.logprobs = request.logprobs();
  r.handoff = request.handoff() == serving::HANDOFF_PREFILL  ? KvHandoff::kPrefill
              : request.handoff() == serving::HANDOFF_DECODE ? KvHandoff::kDecode
                                                             : KvHandoff::kNone;
  r.resume.assign(request.resume().begin(), request.resume().end());
  r.kv_layer_bounds.assign(request.kv_layer_bounds().begin(), request.kv_layer_bounds().end());
  r.kv_head_bounds.assign(request.kv_head_bounds().begin(), request.kv_head_bounds().end());
  r.resume_kv_head_bounds.assign(request.resume_kv_head_bounds().begin(),
                                 request.resume_kv_head_bounds().end());
  r.cache_salt = request.cache_salt();
  const std::string id = r.id;
  absl::Status submitted = scheduler_->Submit(std::move(r), [call](const RequestOutput& out) {
    if (out.finished && !out.status.ok()) {
      call->Finish(out.status);
      return;
    }
    if (!out.ids.empty() || !out.text.empty() || out.finished) {
      call->Write(ToEvent(out).SerializeAsString());
    }
    if (out.finished) call->Finish(absl::OkStatus());
  });
  if (!submitted.ok()) {
    call->Finish(submitted);
    return;
  }
  Scheduler* scheduler = scheduler_.get();
  call->OnCancel([scheduler, id] { scheduler->Cancel(id); });
}

void WorkerService::HandleHttp(http::HttpRequest request,
                               std::shared_ptr<http::HttpResponder> responder) {
  if (request.path == "/health") {
    responder->Send(JsonResponse(200, {{"status", "ok"}}));
  } else if (request.path == "/ready") {
    const bool registered = options_.coordinator.empty() || registered_.load();
    const bool fabric = fabric_ok_.load();
    const bool ready = registered && fabric;
    responder->Send(JsonResponse(
        ready ? 200 : 503, {{"status", ready     ? "ready"
                                       : !fabric ? "cachestore unreachable"
                                                 : "not registered"},
                            {"worker", options_.name},
                            {"role", options_.role},
                            {"cachestore", store_ ? store_->data_path() : std::string("none")}}));
  } else if (request.path == "/metrics") {
    metrics_->Update(scheduler_->stats());
    http::HttpResponse r;
    r.content_type = "text/plain; version=0.0.4";
    r.body = MetricsText(registry_, "worker");
    responder->Send(std::move(r));
  } else {
    responder->Send(JsonResponse(404, {{"error",
                                        {{"message", "not found"},
                                         {"type", "invalid_request_error"},
                                         {"param", nullptr},
                                         {"code", nullptr}}}}));
  }
}

void WorkerService::ExecutorLoop() {
  while (!stopping_.load()) {
    if (!scheduler_->Step()) {
      scheduler_->WaitForWork(absl::Milliseconds(200));
      continue;
    }
    if (options_.step_delay > absl::ZeroDuration()) absl::SleepFor(options_.step_delay);
  }
  scheduler_->CancelAll(absl::UnavailableError("the worker is shutting down"));
}

serving::WorkerLoad WorkerService::Load() const {
  const SchedulerStats st = scheduler_->stats();
  serving::WorkerLoad load;
  load.set_running(st.running);
  load.set_waiting(st.waiting);
  load.set_kv_usage(st.kv_usage());
  load.set_kv_pages_used(st.kv_pages_used);
  load.set_kv_pages_total(st.kv_pages_total);
  load.set_preemptions_total(st.preemptions_total);
  load.set_draining(scheduler_->draining());
  load.set_fabric_ok(fabric_ok_.load());
  return load;
}

bool WorkerService::drained() const { return scheduler_->drained(); }

void WorkerService::HeartbeatLoop() {
  uint64_t worker_id = 0;
  absl::Duration interval = options_.heartbeat_interval;
  bool warned = false;
  const rpc::CallOptions call_options{.timeout = absl::Seconds(2)};
  absl::Time next_store_check = absl::InfinitePast();
  while (true) {
    bool retry_now = false;
    if (store_ != nullptr && absl::Now() >= next_store_check) {
      // The fabric: the store answers a call (its client re-connects, handshake included, after
      // a restart of the store).
      next_store_check = absl::Now() + absl::Seconds(1);
      const bool ok = store_->Stats(absl::Milliseconds(500)).ok();
      if (ok != fabric_ok_.exchange(ok)) {
        KVASIR_LOG_SUBSYS(WARN, kWorker, "worker %s: cachestore %s %s", options_.name,
                          options_.cachestore, ok ? "answers again" : "does not answer");
      }
    }
    if (!registered_.load()) {
      serving::RegisterRequest request;
      serving::WorkerInfo* info = request.mutable_info();
      info->set_name(options_.name);
      info->set_rpc_address(absl::StrCat(options_.advertise_host, ":", rpc_->port()));
      info->set_http_address(absl::StrCat(options_.advertise_host, ":", http_->port()));
      info->set_model(options_.model_name);
      info->set_n_vocab(engine_.tokenizer().n_vocab());
      info->set_context_length(scheduler_->max_model_len());
      info->set_role(options_.role);
      info->set_max_num_seqs(scheduler_->options().max_num_seqs);
      const kvcache::PagePool& pool = engine_.cache().pool();
      info->set_kv_capacity_bytes(static_cast<int64_t>(pool.capacity_pages()) *
                                  static_cast<int64_t>(pool.page_bytes()));
      info->set_prefix_block_tokens(scheduler_->prefix_block_tokens());
      info->set_prefix_store(scheduler_->prefix_store());
      for (const PolicyListing& l : scheduler_->policies().listing()) {
        serving::KvPolicyInfo* p = info->add_kv_policies();
        p->set_name(l.name);
        p->set_kind(l.kind);
        p->set_spec(l.spec);
        p->set_is_default(l.is_default);
      }
      serving::RegisterResponse response;
      absl::Status status = rpc::CallProto(*coordinator_client_, "coordinator.Register", request,
                                           &response, call_options);
      if (status.ok()) {
        worker_id = response.worker_id();
        if (response.heartbeat_interval_ms() > 0) {
          interval = absl::Milliseconds(response.heartbeat_interval_ms());
        }
        registered_.store(true);
        scheduler_->ResyncPrefixEvents();  // the coordinator learns every cached block anew
        warned = false;
        KVASIR_LOG_SUBSYS(INFO, kWorker, "worker %s registered with coordinator %s (id %d)",
                          options_.name, options_.coordinator, worker_id);
      } else if (!warned) {
        KVASIR_LOG_SUBSYS(WARN, kWorker, "worker %s cannot register with coordinator %s: %s",
                          options_.name, options_.coordinator, status.ToString());
        warned = true;
      }
    } else {
      serving::HeartbeatRequest request;
      request.set_worker_id(worker_id);
      request.set_name(options_.name);
      *request.mutable_load() = Load();
      const kvcache::PrefixCache::Events events = scheduler_->TakePrefixEvents();
      serving::PrefixCacheEvents* prefix = request.mutable_prefix_cache();
      prefix->set_reset(events.reset);
      prefix->mutable_added()->Add(events.added.begin(), events.added.end());
      prefix->mutable_removed()->Add(events.removed.begin(), events.removed.end());
      prefix->mutable_stored()->Add(events.stored.begin(), events.stored.end());
      serving::HeartbeatResponse response;
      absl::Status status = rpc::CallProto(*coordinator_client_, "coordinator.Heartbeat", request,
                                           &response, call_options);
      // Events the coordinator may not have seen: send everything next time.
      if (!status.ok()) scheduler_->ResyncPrefixEvents();
      if (status.ok() && !response.known()) {
        KVASIR_LOG_SUBSYS(INFO, kWorker, "coordinator %s forgot worker %s; registering again",
                          options_.coordinator, options_.name);
        registered_.store(false);
        retry_now = true;
      } else if (!status.ok() && !warned) {
        KVASIR_LOG_SUBSYS(WARN, kWorker, "worker %s: heartbeat to %s failed: %s", options_.name,
                          options_.coordinator, status.ToString());
        warned = true;
      } else if (status.ok()) {
        warned = false;
      }
    }
    absl::MutexLock lock(&mu_);
    if (stop_heartbeats_) return;
    if (retry_now) continue;
    mu_.AwaitWithTimeout(absl::Condition(&stop_heartbeats_),
                         registered_.load() ? interval : absl::Milliseconds(200));
    if (stop_heartbeats_) return;
  }
}

}  // namespace kvasir::worker::service
