// Coordinator (see coordinator.h).
#include "coordinator/coordinator.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <random>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "kvcache/policy.h"
#include "kvcache/prefix_hash.h"
#include "common/process_metrics.h"
#include "transport/rpc/client.h"
#include "worker/service/worker_service.pb.h"

namespace kvasir::coordinator {

namespace http = transport::http;
namespace rpc = transport::rpc;
using json = nlohmann::json;

namespace {

http::HttpResponse JsonResponse(int status, const json& body) {
  http::HttpResponse r;
  r.status = status;
  r.body = Dump(body);
  return r;
}

// 503 service_unavailable.
ApiError ServiceUnavailable(std::string message) {
  ApiError e;
  e.http_status = 503;
  e.type = "server_error";
  e.code = "service_unavailable";
  e.message = std::move(message);
  return e;
}

// The API error for a failed call to a worker, and the failure-metric kind.
std::pair<ApiError, std::string> FromWorkerStatus(const absl::Status& status) {
  ApiError e;
  e.message = std::string(status.message());
  std::string kind;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      e.http_status = 400;
      if (absl::StrContains(status.message(), "maximum model length")) {
        e.code = "context_length_exceeded";
        kind = "context_length_exceeded";
      } else if (absl::StartsWith(status.message(), "kv_policy")) {
        e.code = "invalid_kv_policy";
        e.param = "kv_policy";
        kind = "invalid_request";
      } else {
        kind = "invalid_request";
      }
      break;
    case absl::StatusCode::kResourceExhausted:
      e.http_status = 429;
      e.type = "rate_limit_error";
      e.code = "rate_limit_exceeded";
      e.retry_after_s = 1;
      kind = "rate_limited";
      break;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
      e.http_status = 503;
      e.type = "server_error";
      e.code = "service_unavailable";
      e.retry_after_s = 1;
      e.message = absl::StrCat("The worker serving this request failed: ", e.message);
      kind = "unavailable";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      e.http_status = 503;
      e.type = "server_error";
      e.code = "timeout";
      e.message = absl::StrCat("The request did not finish within its deadline: ", e.message);
      kind = "timeout";
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
      kind = "internal";
  }
  return {e, kind};
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0;
    const unsigned char y = i < b.size() ? b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

// A request's kv_policy, checked before it reaches a worker: a configured name, or a spec of a
// known policy that names no file. The messages are fixed or quote the request's own text (never
// a file's path, size or contents: nothing is opened here or on the worker).
std::optional<ApiError> CheckKvPolicy(const std::string& kv_policy,
                                      const WorkerRegistry& registry) {
  if (kv_policy.empty()) return std::nullopt;
  auto invalid = [](std::string message) {
    return InvalidRequest(std::move(message), "kv_policy", "invalid_kv_policy");
  };
  if (kv_policy.size() > 256) return invalid("kv_policy is longer than 256 characters.");
  const auto configured = registry.KvPolicies();
  if (configured.count(kv_policy)) return std::nullopt;
  auto args = kvcache::PolicyArgs::Parse(kv_policy, kvcache::PolicySource::kRequest);
  if (!args.ok()) return invalid(std::string(args.status().message()));
  if (!kvcache::IsPolicyKind(args->name())) {
    std::string names;
    for (const auto& [name, info] : configured) {
      absl::StrAppend(&names, names.empty() ? "" : ", ", name);
    }
    return invalid(absl::StrCat("kv_policy names no configured policy and no known policy kind",
                                names.empty() ? "." : absl::StrCat(" (configured: ", names, ").")));
  }
  return std::nullopt;
}

}  // namespace

// ---- One generation request ----

class Coordinator::Generation : public std::enable_shared_from_this<Generation> {
 public:
  Generation(Coordinator* coordinator, CompletionRequest request, std::vector<int32_t> prompt,
             int32_t max_tokens, ResponseMeta meta, std::shared_ptr<http::HttpResponder> responder,
             absl::Time arrival)
      : c_(coordinator),
        request_(std::move(request)),
        prompt_tokens_(static_cast<int64_t>(prompt.size())),
        meta_(std::move(meta)),
        responder_(std::move(responder)),
        arrival_(arrival),
        deadline_(arrival + coordinator->options_.request_timeout),
        choices_(request_.n),
        remaining_(request_.n) {
    base_.mutable_prompt()->Add(prompt.begin(), prompt.end());
    serving::SamplingOptions* s = base_.mutable_sampling();
    s->set_temperature(request_.temperature);
    s->set_top_k(request_.top_k);
    s->set_top_p(request_.top_p);
    s->set_min_p(request_.min_p);
    s->set_repetition_penalty(request_.repetition_penalty);
    base_.set_max_tokens(max_tokens);
    for (const std::string& stop : request_.stop) base_.add_stop(stop);
    base_.mutable_stop_ids()->Add(request_.stop_token_ids.begin(), request_.stop_token_ids.end());
    base_.set_ignore_eos(request_.ignore_eos);
    base_.set_kv_policy(request_.kv_policy);
    base_.set_logprobs(request_.logprobs);
    seed_ = request_.seed.has_value() ? *request_.seed : std::random_device{}();
    for (int i = 0; i < request_.n; ++i) {
      cancel_.push_back(std::make_shared<rpc::CancelToken>());
    }
    c_->pending_.fetch_add(1);
  }
  ~Generation() { c_->pending_.fetch_sub(1); }

  int n() const { return request_.n; }

  // The client went away, or the coordinator stops.
  void Cancel(bool client_gone) {
    {
      absl::MutexLock lock(&mu_);
      if (client_gone) client_gone_ = true;
    }
    for (auto& token : cancel_) token->Cancel();
  }

  void RunChoice(int index) {
    // Disaggregated when decode workers are registered: the prompt's KV is computed on a prefill
    // worker and moves through the cachestore to a decode worker, which recomputes it when that
    // fails (each departure from the plan is counted in kvasir_disagg_fallbacks_total).
    const bool disaggregated = c_->registry_->HasRole("decode");
    serving::Handoff handoff = serving::HANDOFF_NONE;
    // When the prefill failed, the decode worker computes the prompt itself without asking the
    // store (which may be what failed).
    if (disaggregated && base_.prompt_size() >= 2 && RunPrefill(index)) {
      handoff = serving::HANDOFF_DECODE;
    }
    absl::flat_hash_set<uint64_t> tried;
    absl::Status status;
    int failures = 0;
    std::vector<int32_t> resume;  // tokens delivered by earlier attempts
    for (int attempt = 0;; ++attempt) {
      if (cancel_[index]->cancelled()) {
        status = absl::CancelledError("the request was cancelled");
        break;
      }
      std::optional<WorkerRegistry::Lease> lease =
          c_->registry_->Pick(tried, disaggregated ? "decode" : "");
      if (!lease) {
        status = absl::UnavailableError(tried.empty() ? "no worker is available for this model"
                                                      : "no other worker is available to retry on");
        break;
      }
      tried.insert(lease->id);
      bool migrated = false;
      status = Stream(*lease, index, absl::StrCat(attempt), handoff, resume,
                      [&](const serving::GenerateEvent& event) {
                        if (event.finish_reason() != "migrated") return OnEvent(index, event);
                        // The worker drains: whatever came with this event is delivered, the
                        // finish is not; the request goes on elsewhere.
                        migrated = true;
                        serving::GenerateEvent delivered = event;
                        delivered.clear_finish_reason();
                        OnEvent(index, delivered);
                      });
      c_->registry_->Release(lease->id);
      if (cancel_[index]->cancelled()) break;
      const bool worker_lost = absl::IsUnavailable(status);
      if (worker_lost) c_->registry_->MarkDead(lease->id, status);
      if (!migrated) {
        if (status.ok()) break;
        const bool retry = (worker_lost || absl::IsResourceExhausted(status)) && ++failures <= 2 &&
                           absl::Now() < deadline_ && attempt < 16;
        if (!retry) break;
      } else if (!status.ok() || attempt >= 16 || absl::Now() >= deadline_) {
        break;
      }
      // Another worker goes on from the tokens delivered so far (none: a plain retry).
      resume = Delivered(index);
      if (!resume.empty() || migrated) {
        c_->metrics_->RequestResumed(migrated ? "drained" : "worker_lost");
      }
      KVASIR_LOG_SUBSYS(INFO, kCoordinator,
                        "request=%s choice=%d: worker %s %s; going on elsewhere after %d tokens",
                        meta_.id, index, lease->name,
                        migrated ? "drains" : absl::StrCat("failed (", status.ToString(), ")"),
                        static_cast<int>(resume.size()));
    }
    if (cancel_[index]->cancelled() && !status.ok()) {
      status = absl::CancelledError("the request was cancelled");
    }
    OnChoiceEnd(index, status);
  }

 private:
  // One worker.Generate call of choice `index` on `lease` (not released here): every event goes to
  // `on_event`. OK when the stream ended normally; the call's or the stream's error otherwise.
  absl::Status Stream(const WorkerRegistry::Lease& lease, int index, std::string_view attempt,
                      serving::Handoff handoff, std::span<const int32_t> resume,
                      const std::function<void(const serving::GenerateEvent&)>& on_event) {
    serving::GenerateRequest call = base_;
    call.set_request_id(absl::StrCat(meta_.id, "-", index, "-", ToAbsl(attempt)));
    call.mutable_sampling()->set_seed(seed_ + static_cast<uint64_t>(index));
    call.set_handoff(handoff);
    call.mutable_resume()->Add(resume.begin(), resume.end());
    rpc::CallOptions options;
    options.timeout = deadline_ - absl::Now();
    options.cancel = cancel_[index];
    options.wait_for_ready = false;
    if (options.timeout <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError("the request's deadline passed");
    }
    auto stream = lease.channel->OpenStream("worker.Generate", call.SerializeAsString(), options);
    if (!stream.ok()) return stream.status();
    while (true) {
      absl::StatusOr<std::optional<std::string>> message = (*stream)->Read();
      if (!message.ok()) return message.status();
      if (!message->has_value()) return absl::OkStatus();
      serving::GenerateEvent event;
      if (!event.ParseFromString(**message)) {
        (*stream)->Cancel();
        return absl::InternalError("malformed event from the worker");
      }
      on_event(event);
    }
  }

  // The prefill half of a disaggregated choice: a prefill worker computes the prompt's KV and
  // writes it to the cachestore. Best effort: false on any failure (the decode worker then
  // computes the prompt).
  bool RunPrefill(int index) {
    std::optional<WorkerRegistry::Lease> lease = c_->registry_->Pick({}, "prefill");
    if (!lease) {
      c_->metrics_->DisaggFallback("no_prefill_worker");
      return false;
    }
    bool prefilled = false;
    const absl::Status status =
        Stream(*lease, index, "prefill", serving::HANDOFF_PREFILL, {},
               [&](const serving::GenerateEvent& event) {
                 if (event.finish_reason() != "prefilled") return;
                 prefilled = true;
                 c_->metrics_->kv_transfer_bytes().Increment(
                     static_cast<double>(event.kv_transfer_bytes()));
                 c_->metrics_->kv_transfer_seconds().Observe(event.kv_transfer_seconds());
               });
    c_->registry_->Release(lease->id);
    if (prefilled && status.ok()) return true;
    if (cancel_[index]->cancelled()) return false;
    if (absl::IsUnavailable(status)) c_->registry_->MarkDead(lease->id, status);
    KVASIR_LOG_SUBSYS(INFO, kCoordinator,
                      "request=%s choice=%d: prefill on %s failed (%s); the decode worker "
                      "recomputes the prompt",
                      meta_.id, index, lease->name, status.ToString());
    c_->metrics_->DisaggFallback("prefill_failed");
    return false;
  }

  struct Choice {
    ChoiceOutput out;
    int64_t completion_tokens = 0;
    bool sent_role = false;
    bool got_token = false;
    bool counted_kv_source = false;
    absl::Time last_token;
  };

  // The tokens choice `index` has delivered so far; a resumed attempt reports where its KV came
  // from again.
  std::vector<int32_t> Delivered(int index) {
    absl::MutexLock lock(&mu_);
    choices_[index].counted_kv_source = false;
    return choices_[index].out.ids;
  }

  static std::vector<LogprobEntry> Logprobs(const serving::GenerateEvent& event) {
    std::vector<LogprobEntry> out;
    for (const serving::TokenLogprob& lp : event.logprobs()) {
      LogprobEntry e;
      e.id = lp.id();
      e.logprob = lp.logprob();
      for (int i = 0; i < lp.top_ids_size() && i < lp.top_logprobs_size(); ++i) {
        e.top.emplace_back(lp.top_ids(i), lp.top_logprobs(i));
      }
      out.push_back(std::move(e));
    }
    return out;
  }

  void StartStreamLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (stream_started_) return;
    stream_started_ = true;
    responder_->StartStream(200, "text/event-stream",
                            {{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}});
  }

  void OnEvent(int index, const serving::GenerateEvent& event) {
    const model::Tokenizer& tok = *c_->tokenizer_;
    absl::MutexLock lock(&mu_);
    if (done_) return;
    Choice& ch = choices_[index];
    const absl::Time now = absl::Now();
    const int n_new = event.ids_size();
    if (n_new > 0) {
      if (!first_token_) {
        first_token_ = true;
        c_->metrics_->time_to_first_token().Observe(absl::ToDoubleSeconds(now - arrival_));
      }
      if (ch.got_token) {
        const double gap = absl::ToDoubleSeconds(now - ch.last_token) / n_new;
        for (int i = 0; i < n_new; ++i) c_->metrics_->inter_token_latency().Observe(gap);
      }
      ch.got_token = true;
      ch.last_token = now;
      ch.out.ids.insert(ch.out.ids.end(), event.ids().begin(), event.ids().end());
    }
    std::vector<LogprobEntry> logprobs = Logprobs(event);
    ch.out.text += event.text();
    ch.out.logprobs.insert(ch.out.logprobs.end(), logprobs.begin(), logprobs.end());
    ch.completion_tokens = event.completion_tokens();
    if (event.prompt_tokens() > 0) prompt_tokens_ = event.prompt_tokens();
    if (!event.kv_source().empty() && !ch.counted_kv_source) {
      ch.counted_kv_source = true;
      if (absl::StartsWith(event.kv_source(), "recompute:")) {
        c_->metrics_->DisaggFallback(event.kv_source().substr(std::string("recompute:").size()));
      } else {
        c_->metrics_->kv_transfer_bytes().Increment(static_cast<double>(event.kv_transfer_bytes()));
        c_->metrics_->kv_transfer_seconds().Observe(event.kv_transfer_seconds());
      }
    }
    if (!event.finish_reason().empty()) ch.out.finish_reason = event.finish_reason();
    if (!request_.stream) return;
    StartStreamLocked();
    const bool chat = request_.endpoint == Endpoint::kChat;
    if (chat && !ch.sent_role) {
      ch.sent_role = true;
      responder_->Write(SseEvent(ChunkJson(request_, meta_, index, "", {}, "", true, tok)));
    }
    if (!event.text().empty() || !logprobs.empty()) {
      responder_->Write(
          SseEvent(ChunkJson(request_, meta_, index, event.text(), logprobs, "", false, tok)));
    }
    if (!event.finish_reason().empty()) {
      responder_->Write(
          SseEvent(ChunkJson(request_, meta_, index, "", {}, event.finish_reason(), false, tok)));
    }
  }

  void OnChoiceEnd(int index, const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    if (done_) return;
    if (!status.ok()) {
      done_ = true;
      for (auto& token : cancel_) token->Cancel();
      if (client_gone_) {
        c_->metrics_->RequestFailed("cancelled");
        KVASIR_LOG_SUBSYS(INFO, kCoordinator, "request=%s: the client went away; cancelled",
                          meta_.id);
        return;
      }
      auto [error, kind] = FromWorkerStatus(status);
      c_->metrics_->RequestFailed(kind);
      KVASIR_LOG_SUBSYS(WARN, kCoordinator, "request=%s failed: %s", meta_.id, status.ToString());
      if (stream_started_) {
        // Mid-stream: the error travels as an SSE data line, then the stream ends.
        responder_->Write(SseEvent(ErrorJson(error)));
        responder_->Write("data: [DONE]\n\n");
        responder_->End();
      } else {
        http::HttpResponse r = JsonResponse(error.http_status, ErrorJson(error));
        if (error.retry_after_s > 0) {
          r.headers.push_back({"Retry-After", std::to_string(error.retry_after_s)});
        }
        responder_->Send(std::move(r));
      }
      return;
    }
    if (--remaining_ > 0) return;
    done_ = true;
    Usage usage;
    usage.prompt_tokens = prompt_tokens_;
    std::vector<ChoiceOutput> outputs;
    for (const Choice& ch : choices_) {
      usage.completion_tokens += ch.completion_tokens;
      outputs.push_back(ch.out);
    }
    const model::Tokenizer& tok = *c_->tokenizer_;
    if (request_.stream) {
      StartStreamLocked();
      if (request_.include_usage)
        responder_->Write(SseEvent(UsageChunkJson(request_, meta_, usage)));
      responder_->Write("data: [DONE]\n\n");
      responder_->End();
    } else {
      responder_->Send(
          JsonResponse(200, CompletionResponseJson(request_, meta_, outputs, usage, tok)));
    }
    c_->metrics_->RequestSucceeded(
        outputs.front().finish_reason.empty() ? "length" : outputs.front().finish_reason);
    c_->metrics_->e2e_latency().Observe(absl::ToDoubleSeconds(absl::Now() - arrival_));
    c_->metrics_->prompt_tokens().Increment(static_cast<double>(usage.prompt_tokens));
    c_->metrics_->generation_tokens().Increment(static_cast<double>(usage.completion_tokens));
  }

  Coordinator* const c_;
  const CompletionRequest request_;
  serving::GenerateRequest base_;
  uint64_t seed_ = 0;
  std::vector<std::shared_ptr<rpc::CancelToken>> cancel_;  // one per choice
  absl::Mutex mu_;
  int64_t prompt_tokens_ ABSL_GUARDED_BY(mu_);
  const ResponseMeta meta_;
  const std::shared_ptr<http::HttpResponder> responder_;
  const absl::Time arrival_;
  const absl::Time deadline_;
  std::vector<Choice> choices_ ABSL_GUARDED_BY(mu_);
  int remaining_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool stream_started_ ABSL_GUARDED_BY(mu_) = false;
  bool first_token_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
};

// ---- The service ----

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(CoordinatorOptions options) {
  if (options.api_keys.empty() && !http::IsLoopbackHost(options.host) &&
      !options.allow_unauthenticated) {
    return absl::InvalidArgumentError(absl::StrCat(
        "refusing to serve ", options.host,
        " without API keys: pass --api-key or --api-key-file (or --allow-unauthenticated)"));
  }
  for (const std::string& key : options.api_keys) {
    if (key.empty()) return absl::InvalidArgumentError("an API key is empty");
  }
  if (options.max_pending_requests < 1 || options.http_threads < 1) {
    return absl::InvalidArgumentError("max pending requests and HTTP threads must be >= 1");
  }
  if (options.request_timeout <= absl::ZeroDuration() ||
      options.worker_timeout <= absl::ZeroDuration() ||
      options.heartbeat_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeouts and intervals must be > 0");
  }
  std::unique_ptr<Coordinator> c(new Coordinator(std::move(options)));
  const CoordinatorOptions& o = c->options_;
  KVASIR_ASSIGN_OR_RETURN(std::string path, model::ResolveModelPath(o.model));
  KVASIR_ASSIGN_OR_RETURN(c->files_, model::ModelFiles::Open(path));
  if (c->files_->gguf() != nullptr) {
    KVASIR_ASSIGN_OR_RETURN(c->tokenizer_, model::Tokenizer::FromGguf(*c->files_->gguf()));
  } else {
    KVASIR_ASSIGN_OR_RETURN(c->tokenizer_, model::Tokenizer::FromHfDir(path));
  }
  const int32_t context = c->files_->config().context_length;
  if (o.max_model_len > context) {
    return absl::InvalidArgumentError(absl::StrCat("--max-model-len ", o.max_model_len,
                                                   " exceeds the model's context of ", context));
  }
  c->max_model_len_ = o.max_model_len > 0 ? o.max_model_len : context;
  const std::string stem = std::filesystem::path(path).stem().string();
  c->served_names_ = o.served_model_names;
  if (c->served_names_.empty()) c->served_names_.push_back(stem);
  c->chat_kind_ = model::DetectChatTemplate(*c->tokenizer_);
  c->started_unix_ = absl::ToUnixSeconds(absl::Now());
  c->id_salt_ = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();

  c->metrics_ = std::make_unique<CoordinatorMetrics>(c->metrics_registry_);
  rpc::HandshakeInfo handshake;
  handshake.prefix_hash_test_vector = kvcache::PrefixHashTestVector();
  handshake.role = "coordinator";
  handshake.name = absl::StrCat("coordinator-", getpid());
  const absl::Duration request_timeout = o.request_timeout;
  c->registry_ = std::make_unique<WorkerRegistry>(
      WorkerRegistry::Options{.heartbeat_timeout = o.worker_timeout,
                              .model = stem,
                              .n_vocab = c->tokenizer_->n_vocab()},
      [handshake, request_timeout](const std::string& host,
                                   uint16_t port) -> absl::StatusOr<WorkerChannel> {
        rpc::RpcClient::Options client_options;
        client_options.host = host;
        client_options.port = port;
        client_options.handshake = handshake;
        client_options.default_timeout = request_timeout;
        client_options.connect_timeout = absl::Seconds(1);
        client_options.backoff_max = absl::Milliseconds(500);
        KVASIR_ASSIGN_OR_RETURN(std::unique_ptr<rpc::RpcClient> client,
                                rpc::RpcClient::Create(client_options));
        std::shared_ptr<rpc::RpcClient> shared = std::move(client);
        return WorkerChannel{shared, [shared] { return shared->connected(); }};
      });

  rpc::RpcServer::Options rpc_options;
  rpc_options.host = o.rpc_host;
  rpc_options.port = o.rpc_port;
  rpc_options.handshake = handshake;
  KVASIR_ASSIGN_OR_RETURN(c->rpc_, rpc::RpcServer::Create(rpc_options));
  Coordinator* self = c.get();
  c->rpc_->RegisterUnary("coordinator.Register", [self](std::shared_ptr<rpc::ServerCall> call) {
    serving::RegisterRequest request;
    if (!request.ParseFromString(call->request())) {
      call->Finish(absl::InvalidArgumentError("malformed coordinator.Register request"));
      return;
    }
    absl::StatusOr<uint64_t> id = self->registry_->Register(request.info());
    if (!id.ok()) {
      KVASIR_LOG_SUBSYS(WARN, kCoordinator, "registration of %s refused: %s", request.info().name(),
                        id.status().ToString());
      call->Finish(id.status());
      return;
    }
    serving::RegisterResponse response;
    response.set_worker_id(*id);
    response.set_heartbeat_interval_ms(
        static_cast<uint32_t>(absl::ToInt64Milliseconds(self->options_.heartbeat_interval)));
    call->Finish(response.SerializeAsString());
  });
  c->rpc_->RegisterUnary("coordinator.Heartbeat", [self](std::shared_ptr<rpc::ServerCall> call) {
    serving::HeartbeatRequest request;
    if (!request.ParseFromString(call->request())) {
      call->Finish(absl::InvalidArgumentError("malformed coordinator.Heartbeat request"));
      return;
    }
    serving::HeartbeatResponse response;
    response.set_known(
        self->registry_->Heartbeat(request.worker_id(), request.name(), request.load()));
    call->Finish(response.SerializeAsString());
  });
  c->rpc_->RegisterUnary("coordinator.ProcessRestarts", [self](
                                                            std::shared_ptr<rpc::ServerCall> call) {
    serving::ProcessRestartsRequest request;
    if (!request.ParseFromString(call->request()) || request.processes_size() > 256) {
      call->Finish(absl::InvalidArgumentError("malformed coordinator.ProcessRestarts request"));
      return;
    }
    for (const serving::ProcessRestarts& p : request.processes()) {
      // Label values stay short and printable (a process name such as "worker-3").
      const bool printable = std::all_of(p.process().begin(), p.process().end(), [](char ch) {
        return absl::ascii_isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_';
      });
      if (p.process().empty() || p.process().size() > 64 || !printable || p.restarts_total() < 0) {
        call->Finish(absl::InvalidArgumentError("coordinator.ProcessRestarts: bad entry"));
        return;
      }
    }
    for (const serving::ProcessRestarts& p : request.processes()) {
      self->metrics_->SetProcessRestarts(p.process(), p.restarts_total());
    }
    call->Finish(serving::ProcessRestartsResponse().SerializeAsString());
  });
  KVASIR_RETURN_IF_ERROR(c->rpc_->Start());

  http::HttpServer::Options http_options;
  http_options.host = o.host;
  http_options.port = o.port;
  http_options.max_body_bytes = o.max_body_bytes;
  http_options.threads = o.http_threads;
  KVASIR_ASSIGN_OR_RETURN(
      c->http_,
      http::HttpServer::Start(http_options, [self](http::HttpRequest request,
                                                   std::shared_ptr<http::HttpResponder> responder) {
        self->HandleHttp(std::move(request), std::move(responder));
      }));
  c->sweeper_ = std::thread([self] { self->SweepLoop(); });
  KVASIR_LOG_SUBSYS(INFO, kCoordinator, "coordinator serving %s on http=%s:%d rpc=%s:%d",
                    c->served_names_.front(), o.host, c->http_->port(), o.rpc_host,
                    c->rpc_->port());
  return c;
}

Coordinator::~Coordinator() { Stop(); }

void Coordinator::Stop() {
  {
    absl::MutexLock lock(&stop_mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  std::vector<std::shared_ptr<Generation>> live;
  {
    absl::MutexLock lock(&threads_mu_);
    stopping_ = true;
    for (auto& weak : live_) {
      if (auto g = weak.lock()) live.push_back(std::move(g));
    }
  }
  for (auto& g : live) g->Cancel(/*client_gone=*/false);
  live.clear();
  if (http_) http_->Stop();
  std::vector<std::pair<uint64_t, std::thread>> threads;
  {
    absl::MutexLock lock(&threads_mu_);
    threads.swap(threads_);
  }
  for (auto& [id, t] : threads) t.join();
  {
    absl::MutexLock lock(&sweep_mu_);
    stop_sweep_ = true;
  }
  if (sweeper_.joinable()) sweeper_.join();
  if (rpc_) rpc_->Stop();
  if (registry_) registry_->Clear();
}

bool Coordinator::Spawn(std::function<void()> fn) {
  ReapThreads();
  absl::MutexLock lock(&threads_mu_);
  if (stopping_) return false;
  const uint64_t id = next_thread_++;
  threads_.emplace_back(id, std::thread([this, id, fn = std::move(fn)] {
                          fn();
                          absl::MutexLock lock(&threads_mu_);
                          finished_threads_.push_back(id);
                        }));
  return true;
}

void Coordinator::ReapThreads() {
  std::vector<std::thread> done;
  {
    absl::MutexLock lock(&threads_mu_);
    for (uint64_t id : finished_threads_) {
      for (auto it = threads_.begin(); it != threads_.end(); ++it) {
        if (it->first == id) {
          done.push_back(std::move(it->second));
          threads_.erase(it);
          break;
        }
      }
    }
    finished_threads_.clear();
    live_.erase(std::remove_if(live_.begin(), live_.end(),
                               [](const std::weak_ptr<Generation>& g) { return g.expired(); }),
                live_.end());
  }
  for (std::thread& t : done) t.join();  // they have finished their work
}

void Coordinator::SweepLoop() {
  const absl::Duration period = std::min(absl::Milliseconds(200), options_.worker_timeout / 4);
  absl::MutexLock lock(&sweep_mu_);
  while (!stop_sweep_) {
    sweep_mu_.AwaitWithTimeout(absl::Condition(&stop_sweep_), period);
    if (stop_sweep_) break;
    sweep_mu_.Unlock();
    registry_->Sweep(absl::Now());
    sweep_mu_.Lock();
  }
}

bool Coordinator::Authorized(const http::HttpRequest& request) const {
  if (options_.api_keys.empty()) return true;
  const std::string* header = request.header("authorization");
  if (header == nullptr) return false;
  std::string_view value = *header;
  if (value.size() < 7 || !absl::EqualsIgnoreCase(ToAbsl(value.substr(0, 7)), "bearer ")) {
    return false;
  }
  value.remove_prefix(7);
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  bool match = false;
  for (const std::string& key : options_.api_keys) match |= ConstantTimeEquals(value, key);
  return match;
}

void Coordinator::SendError(http::HttpResponder& responder, const ApiError& error,
                            const std::string& metric_reason) {
  if (!metric_reason.empty()) metrics_->RequestFailed(metric_reason);
  http::HttpResponse r = JsonResponse(error.http_status, ErrorJson(error));
  if (error.retry_after_s > 0) {
    r.headers.push_back({"Retry-After", std::to_string(error.retry_after_s)});
  }
  if (error.http_status == 401) r.headers.push_back({"WWW-Authenticate", "Bearer"});
  responder.Send(std::move(r));
}

void Coordinator::HandleHttp(http::HttpRequest request,
                             std::shared_ptr<http::HttpResponder> responder) {
  const std::string& path = request.path;
  const std::string& method = request.method;
  const bool get = method == "GET" || method == "HEAD";
  const bool post = method == "POST";
  auto wrong_method = [&] {
    ApiError e = InvalidRequest(absl::StrCat("Method ", method, " is not allowed for ", path, "."));
    e.http_status = 405;
    SendError(*responder, e, "");
  };
  const bool api = absl::StartsWith(path, "/v1/") || path == "/tokenize" || path == "/detokenize" ||
                   absl::StartsWith(path, "/admin/");
  if (api && !Authorized(request)) {
    const bool missing = request.header("authorization") == nullptr;
    ApiError e;
    e.http_status = 401;
    e.code = "invalid_api_key";
    e.message = missing ? "You didn't provide an API key. Provide it in the Authorization "
                          "header (Authorization: Bearer YOUR_KEY)."
                        : "Incorrect API key provided.";
    SendError(*responder, e, "unauthorized");
    return;
  }
  if (path == "/health") {
    if (!get) return wrong_method();
    responder->Send(JsonResponse(200, {{"status", "ok"}}));
  } else if (path == "/ready") {
    if (!get) return wrong_method();
    HandleReady(std::move(responder));
  } else if (path == "/metrics") {
    if (!get) return wrong_method();
    metrics_->UpdateWorkers(registry_->Snapshot(), registry_->deaths());
    http::HttpResponse r;
    r.content_type = "text/plain; version=0.0.4";
    r.body = MetricsText(metrics_registry_, "coordinator");
    responder->Send(std::move(r));
  } else if (path == "/v1/models" || absl::StartsWith(path, "/v1/models/")) {
    if (!get) return wrong_method();
    // Extension: the KV policies a request's kv_policy can name (file paths never shown).
    json policies = json::array();
    for (const auto& [name, p] : registry_->KvPolicies()) {
      policies.push_back(
          {{"name", name}, {"kind", p.kind()}, {"spec", p.spec()}, {"default", p.is_default()}});
    }
    auto model_json = [&](const std::string& name) {
      return json{{"id", name},
                  {"object", "model"},
                  {"created", started_unix_},
                  {"owned_by", "kvasir"},
                  {"max_model_len", max_model_len_},
                  {"kv_policies", policies}};
    };
    if (path == "/v1/models") {
      json data = json::array();
      for (const std::string& name : served_names_) data.push_back(model_json(name));
      responder->Send(JsonResponse(200, {{"object", "list"}, {"data", data}}));
      return;
    }
    const std::string name = path.substr(std::string("/v1/models/").size());
    if (std::find(served_names_.begin(), served_names_.end(), name) == served_names_.end()) {
      ApiError e = InvalidRequest(absl::StrCat("The model `", name, "` does not exist."), "model",
                                  "model_not_found");
      e.http_status = 404;
      SendError(*responder, e, "model_not_found");
      return;
    }
    responder->Send(JsonResponse(200, model_json(name)));
  } else if (path == "/v1/completions") {
    if (!post) return wrong_method();
    HandleGeneration(request, Endpoint::kCompletions, std::move(responder));
  } else if (path == "/v1/chat/completions") {
    if (!post) return wrong_method();
    HandleGeneration(request, Endpoint::kChat, std::move(responder));
  } else if (path == "/admin/drain") {
    if (!post) return wrong_method();
    HandleDrain(request, std::move(responder));
  } else if (path == "/tokenize") {
    if (!post) return wrong_method();
    HandleTokenize(request, std::move(responder));
  } else if (path == "/detokenize") {
    if (!post) return wrong_method();
    HandleDetokenize(request, std::move(responder));
  } else {
    ApiError e = InvalidRequest(absl::StrCat("Unknown request URL: ", method, " ", path, "."), "",
                                "unknown_url");
    e.http_status = 404;
    SendError(*responder, e, "");
  }
}

void Coordinator::HandleDrain(const http::HttpRequest& request,
                              std::shared_ptr<http::HttpResponder> responder) {
  const json body = json::parse(request.body, nullptr, false);
  if (!body.is_object() || !body.contains("worker") || !body["worker"].is_string()) {
    SendError(*responder,
              InvalidRequest("The body must be a JSON object with the worker's name: "
                             "{\"worker\": \"decode-0\"}.",
                             "worker"),
              "invalid_request");
    return;
  }
  const std::string name = body["worker"].get<std::string>();
  std::optional<WorkerRegistry::Lease> lease = registry_->BeginDrain(name);
  if (!lease) {
    ApiError e = InvalidRequest("No registered worker has this name.", "worker", "not_found");
    e.http_status = 404;
    SendError(*responder, e, "not_found");
    return;
  }
  // The worker migrates its requests (each one's generation resumes elsewhere), then exits.
  const bool spawned = Spawn([this, lease = *lease, responder] {
    serving::DrainResponse response;
    const absl::Status status =
        rpc::CallProto(*lease.channel, "worker.Drain", serving::DrainRequest(), &response,
                       rpc::CallOptions{.timeout = absl::Seconds(5)});
    registry_->Release(lease.id);
    if (!status.ok()) {
      KVASIR_LOG_SUBSYS(WARN, kCoordinator, "drain of worker %s failed: %s", lease.name,
                        status.ToString());
      SendError(*responder,
                ServiceUnavailable(
                    "The worker did not take the drain request; it takes no new requests."),
                "drain_failed");
      return;
    }
    KVASIR_LOG_SUBSYS(INFO, kCoordinator, "worker %s drains (%d live requests)", lease.name,
                      response.live_requests());
    responder->Send(JsonResponse(
        200,
        {{"worker", lease.name}, {"draining", true}, {"live_requests", response.live_requests()}}));
  });
  if (!spawned)
    SendError(*responder, ServiceUnavailable("The server is shutting down."), "unavailable");
}

void Coordinator::HandleReady(std::shared_ptr<http::HttpResponder> responder) {
  // Ready to serve: a ready worker of role both, or a ready prefill and a ready decode worker.
  // A worker is ready when connected, not draining, with KV room, and (prefill and decode ones)
  // reaching their cachestore (their heartbeats say so).
  const std::vector<WorkerView> workers = registry_->Snapshot();
  int ready = 0;
  std::map<std::string, int> ready_by_role;
  double min_kv_usage = 1.0;
  json list = json::array();
  for (const WorkerView& w : workers) {
    const bool headroom = w.load.kv_usage() < 0.99;
    const bool ok = w.connected && headroom && !w.draining && w.load.fabric_ok();
    if (ok) {
      ++ready;
      ++ready_by_role[w.role];
      min_kv_usage = std::min(min_kv_usage, w.load.kv_usage());
    }
    list.push_back({{"name", w.name},
                    {"role", w.role},
                    {"connected", w.connected},
                    {"draining", w.draining},
                    {"cachestore_reachable", w.load.fabric_ok()},
                    {"running", w.load.running()},
                    {"waiting", w.load.waiting()},
                    {"kv_cache_usage", w.load.kv_usage()}});
  }
  const bool disaggregated = ready_by_role["prefill"] > 0 && ready_by_role["decode"] > 0;
  const bool serving = ready_by_role["both"] > 0 || disaggregated;
  json body;
  body["status"] = serving ? "ready" : "not ready";
  body["model"] = served_names_.front();
  body["workers_ready"] = ready;
  body["workers"] = list;
  body["kv_headroom"] = ready > 0 ? 1.0 - min_kv_usage : 0.0;
  body["disaggregated"] = disaggregated;
  if (!serving) {
    body["reason"] = workers.empty()                ? "no worker registered"
                     : ready == 0                   ? "no ready worker (connected, KV room, "
                                                      "cachestore reachable)"
                     : ready_by_role["decode"] == 0 ? "no ready decode worker"
                                                    : "no ready prefill worker";
  }
  http::HttpResponse r = JsonResponse(serving ? 200 : 503, body);
  if (!serving) r.headers.push_back({"Retry-After", "1"});
  responder->Send(std::move(r));
}

void Coordinator::HandleGeneration(const http::HttpRequest& http_request, Endpoint endpoint,
                                   std::shared_ptr<http::HttpResponder> responder) {
  const absl::Time arrival = absl::Now();
  CompletionRequest request;
  if (auto error = ParseCompletionRequest(http_request.body, endpoint, &request)) {
    SendError(*responder, *error, "invalid_request");
    return;
  }
  if (!request.model.empty() &&
      std::find(served_names_.begin(), served_names_.end(), request.model) == served_names_.end()) {
    ApiError e = InvalidRequest(absl::StrCat("The model `", request.model, "` does not exist."),
                                "model", "model_not_found");
    e.http_status = 404;
    SendError(*responder, e, "model_not_found");
    return;
  }
  if (auto e = CheckKvPolicy(request.kv_policy, *registry_)) {
    SendError(*responder, *e, "invalid_request");
    return;
  }
  const bool chat = endpoint == Endpoint::kChat;
  std::vector<int32_t> prompt;
  if (chat) {
    if (!chat_kind_.ok()) {
      SendError(*responder,
                InvalidRequest(absl::StrCat("This model has no chat template: ",
                                            chat_kind_.status().message()),
                               "messages"),
                "invalid_request");
      return;
    }
    // Like llama.cpp's built-in ChatML and `kvasir generate --chat`: no implicit system message.
    const std::string text = model::RenderChat(*chat_kind_, request.messages, true);
    prompt = tokenizer_->Encode(text, /*add_special=*/false, /*parse_special=*/true);
  } else if (request.prompt_text.has_value()) {
    prompt = tokenizer_->Encode(*request.prompt_text, /*add_special=*/true,
                                /*parse_special=*/false);
  } else {
    prompt = request.prompt_ids;
    for (int32_t id : prompt) {
      if (id >= tokenizer_->n_vocab()) {
        SendError(*responder,
                  InvalidRequest(absl::StrCat("Token id ", id, " is outside the vocabulary of ",
                                              tokenizer_->n_vocab(), " tokens."),
                                 "prompt", "invalid_value"),
                  "invalid_request");
        return;
      }
    }
  }
  if (prompt.empty()) {
    SendError(*responder, InvalidRequest("The prompt is empty.", chat ? "messages" : "prompt"),
              "invalid_request");
    return;
  }
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  const int64_t max_tokens = request.max_tokens.has_value()
                                 ? *request.max_tokens
                                 : (chat ? std::max<int64_t>(max_model_len_ - prompt_len, 1) : 16);
  if (prompt_len + max_tokens > max_model_len_) {
    SendError(
        *responder,
        InvalidRequest(
            absl::StrCat("This model's maximum context length is ", max_model_len_,
                         " tokens. However, you requested ", prompt_len + max_tokens, " tokens (",
                         prompt_len, " in the ", chat ? "messages" : "prompt", ", ", max_tokens,
                         " in the completion). Please reduce the "
                         "length of the ",
                         chat ? "messages" : "prompt", " or completion."),
            chat ? "messages" : "prompt", "context_length_exceeded"),
        "context_length_exceeded");
    return;
  }
  if (pending_.load() >= options_.max_pending_requests) {
    ApiError e;
    e.http_status = 429;
    e.type = "rate_limit_error";
    e.code = "rate_limit_exceeded";
    e.message = absl::StrCat("The server is busy (", options_.max_pending_requests,
                             " requests in flight). Retry shortly.");
    e.retry_after_s = 1;
    SendError(*responder, e, "rate_limited");
    return;
  }
  ResponseMeta meta;
  meta.id = absl::StrCat(chat ? "chatcmpl-" : "cmpl-", absl::Hex(id_salt_, absl::kZeroPad16),
                         absl::Hex(request_counter_.fetch_add(1) + 1, absl::kZeroPad8));
  meta.created = absl::ToUnixSeconds(arrival);
  meta.model = request.model.empty() ? served_names_.front() : request.model;
  auto generation =
      std::make_shared<Generation>(this, std::move(request), std::move(prompt),
                                   static_cast<int32_t>(max_tokens), meta, responder, arrival);
  {
    absl::MutexLock lock(&threads_mu_);
    live_.push_back(generation);
  }
  std::weak_ptr<Generation> weak = generation;
  responder->OnClose([weak] {
    if (auto g = weak.lock()) g->Cancel(/*client_gone=*/true);
  });
  for (int i = 0; i < generation->n(); ++i) {
    if (!Spawn([generation, i] { generation->RunChoice(i); })) {
      generation->Cancel(/*client_gone=*/false);
      SendError(*responder, ServiceUnavailable("The server is shutting down."), "unavailable");
      return;
    }
  }
}

void Coordinator::HandleTokenize(const http::HttpRequest& request,
                                 std::shared_ptr<http::HttpResponder> responder) {
  const json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    SendError(*responder, InvalidRequest("The body must be a JSON object."), "invalid_request");
    return;
  }
  auto model = body.find("model");
  if (model != body.end() && !model->is_null()) {
    if (!model->is_string() || std::find(served_names_.begin(), served_names_.end(),
                                         model->get<std::string>()) == served_names_.end()) {
      ApiError e = InvalidRequest("The model does not exist.", "model", "model_not_found");
      e.http_status = 404;
      SendError(*responder, e, "model_not_found");
      return;
    }
  }
  std::vector<int32_t> ids;
  if (body.contains("messages")) {
    CompletionRequest chat;
    if (auto e = ParseCompletionRequest(request.body, Endpoint::kChat, &chat)) {
      SendError(*responder, *e, "invalid_request");
      return;
    }
    if (!chat_kind_.ok()) {
      SendError(*responder, InvalidRequest("This model has no chat template.", "messages"),
                "invalid_request");
      return;
    }
    bool generation_prompt = true;
    auto agp = body.find("add_generation_prompt");
    if (agp != body.end() && agp->is_boolean()) generation_prompt = agp->get<bool>();
    ids = tokenizer_->Encode(model::RenderChat(*chat_kind_, chat.messages, generation_prompt),
                             false, true);
  } else {
    auto prompt = body.find("prompt");
    if (prompt == body.end() || !prompt->is_string()) {
      SendError(*responder,
                InvalidRequest("'prompt' (a string) or 'messages' is required.", "prompt"),
                "invalid_request");
      return;
    }
    bool add_special = true;
    auto ast = body.find("add_special_tokens");
    if (ast != body.end() && !ast->is_null()) {
      if (!ast->is_boolean()) {
        SendError(*responder,
                  InvalidRequest("'add_special_tokens' must be a boolean.", "add_special_tokens"),
                  "invalid_request");
        return;
      }
      add_special = ast->get<bool>();
    }
    ids = tokenizer_->Encode(prompt->get<std::string>(), add_special, false);
  }
  responder->Send(JsonResponse(
      200, {{"count", ids.size()}, {"max_model_len", max_model_len_}, {"tokens", ids}}));
}

void Coordinator::HandleDetokenize(const http::HttpRequest& request,
                                   std::shared_ptr<http::HttpResponder> responder) {
  const json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    SendError(*responder, InvalidRequest("The body must be a JSON object."), "invalid_request");
    return;
  }
  auto tokens = body.find("tokens");
  if (tokens == body.end() || !tokens->is_array()) {
    SendError(*responder, InvalidRequest("'tokens' (an array of token ids) is required.", "tokens"),
              "invalid_request");
    return;
  }
  std::vector<int32_t> ids;
  for (const json& t : *tokens) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 ||
        t.get<int64_t>() >= tokenizer_->n_vocab()) {
      SendError(*responder,
                InvalidRequest(absl::StrCat("'tokens' must hold token ids in [0, ",
                                            tokenizer_->n_vocab(), ")."),
                               "tokens", "invalid_value"),
                "invalid_request");
      return;
    }
    ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
  responder->Send(JsonResponse(200, {{"prompt", tokenizer_->Decode(ids)}}));
}

}  // namespace kvasir::coordinator
