// One generation request in flight (Coordinator::Generation) and the handler that starts it:
// the disaggregated two phases (prefill worker, then decode worker), retries before the first
// token, resumes after it, and the response (JSON or SSE) with its metrics.
#include <random>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/strings.h"
#include "coordinator/coordinator.h"
#include "kvcache/policy.h"
#include "kvcache/prefix_cache.h"
#include "kvcache/prefix_hash.h"
#include "transport/rpc/client.h"
#include "worker/service/worker_service.pb.h"

namespace kvasir::coordinator {

namespace http = transport::http;
namespace rpc = transport::rpc;
using json = nlohmann::json;

namespace {

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

// The canonical spec of the policy a request's kv_policy selects: the default configured one
// for "", a configured one by name, else the spec the request gave.
std::string ResolvePolicySpec(const std::string& kv_policy, const WorkerRegistry& registry) {
  const auto configured = registry.KvPolicies();
  if (kv_policy.empty()) {
    for (const auto& [name, info] : configured) {
      if (info.is_default()) return info.spec();
    }
    return "full";
  }
  auto it = configured.find(kv_policy);
  return it != configured.end() ? it->second.spec() : kv_policy;
}

// The block size of the prefix chains the router compares (the workers' default page size).
constexpr int32_t kRouterBlockTokens = kvcache::kDefaultHashBlockTokens;

// Where a prefill worker wrote a prompt's KV: its layer parts and KV-head parts (each empty: one
// part), which the decode worker looks the snapshot up by.
struct KvParts {
  std::vector<int32_t> layers, heads;
};

}  // namespace

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
  // The prefix-cache salt of the request's tenant (before the choices run).
  void SetCacheSalt(uint64_t salt) { base_.set_cache_salt(salt); }

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
    // KV-aware routing: the prompt's prefix blocks, matched against what each worker caches (for
    // the worker that computes the prompt: the prefill worker when disaggregated).
    const std::vector<int32_t> prompt(base_.prompt().begin(), base_.prompt().end());
    const std::string spec = ResolvePolicySpec(request_.kv_policy, *c_->registry_);
    const std::vector<uint64_t> chain =
        kvcache::PrefixCache::SharesSpec(spec) && prompt.size() > 1
            ? kvcache::PrefixCache::ChainOf(
                  prompt, spec, base_.cache_salt(), kRouterBlockTokens,
                  static_cast<int64_t>(prompt.size() - 1) / kRouterBlockTokens)
            : std::vector<uint64_t>();
    serving::Handoff handoff = serving::HANDOFF_NONE;
    KvParts prefilled;  // the parts the prefill wrote the KV in
    // When the prefill failed, the decode worker computes the prompt itself without asking the
    // store (which may be what failed).
    if (disaggregated && base_.prompt_size() >= 2 && RunPrefill(index, chain, prefilled)) {
      handoff = serving::HANDOFF_DECODE;
    }
    absl::flat_hash_set<uint64_t> tried;
    absl::Status status;
    int failures = 0;
    std::vector<int32_t> resume;        // tokens delivered by earlier attempts
    std::vector<int32_t> resume_heads;  // the KV-head parts of a drained worker's snapshot
    for (int attempt = 0;; ++attempt) {
      if (cancel_[index]->cancelled()) {
        status = absl::CancelledError("the request was cancelled");
        break;
      }
      int64_t matched = 0, stored = 0;
      std::optional<WorkerRegistry::Lease> lease =
          disaggregated
              ? c_->registry_->Pick(tried, "decode")
              : c_->registry_->Pick(tried, "", chain, kRouterBlockTokens, &matched, &stored);
      if (lease && !disaggregated && attempt == 0) CountRouted(chain, matched, stored);
      if (!lease) {
        status = absl::UnavailableError(tried.empty() ? "no worker is available for this model"
                                                      : "no other worker is available to retry on");
        break;
      }
      tried.insert(lease->id);
      bool migrated = false;
      std::vector<int32_t> migrated_heads;
      status = Stream(*lease, index, absl::StrCat(attempt), handoff, resume, resume_heads,
                      prefilled, [&](const serving::GenerateEvent& event) {
                        if (event.finish_reason() != "migrated") return OnEvent(index, event);
                        // The worker drains: whatever came with this event is delivered, the
                        // finish is not; the request goes on elsewhere.
                        migrated = true;
                        migrated_heads.assign(event.kv_head_bounds().begin(),
                                              event.kv_head_bounds().end());
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
      resume_heads = resume.empty() ? std::vector<int32_t>() : migrated_heads;
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
                      std::span<const int32_t> resume_heads, const KvParts& prefilled,
                      const std::function<void(const serving::GenerateEvent&)>& on_event) {
    serving::GenerateRequest call = base_;
    call.set_request_id(absl::StrCat(meta_.id, "-", index, "-", ToAbsl(attempt)));
    call.mutable_sampling()->set_seed(seed_ + static_cast<uint64_t>(index));
    call.set_handoff(handoff);
    call.mutable_resume()->Add(resume.begin(), resume.end());
    if (handoff == serving::HANDOFF_DECODE) {
      call.mutable_kv_layer_bounds()->Add(prefilled.layers.begin(), prefilled.layers.end());
      call.mutable_kv_head_bounds()->Add(prefilled.heads.begin(), prefilled.heads.end());
    }
    call.mutable_resume_kv_head_bounds()->Add(resume_heads.begin(), resume_heads.end());
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
  // writes it to the cachestore, in the layer and KV-head parts it names (`parts`). Best effort:
  // false on any failure (the decode worker then computes the prompt).
  bool RunPrefill(int index, std::span<const uint64_t> chain, KvParts& parts) {
    int64_t matched = 0, stored = 0;
    std::optional<WorkerRegistry::Lease> lease =
        c_->registry_->Pick({}, "prefill", chain, kRouterBlockTokens, &matched, &stored);
    if (lease) CountRouted(chain, matched, stored);
    if (!lease) {
      c_->metrics_->DisaggFallback("no_prefill_worker");
      return false;
    }
    bool prefilled = false;
    const absl::Status status = Stream(
        *lease, index, "prefill", serving::HANDOFF_PREFILL, {}, {}, {},
        [&](const serving::GenerateEvent& event) {
          if (event.finish_reason() != "prefilled") return;
          prefilled = true;
          parts.layers.assign(event.kv_layer_bounds().begin(), event.kv_layer_bounds().end());
          parts.heads.assign(event.kv_head_bounds().begin(), event.kv_head_bounds().end());
          c_->metrics_->kv_push_wait_seconds().Observe(event.kv_push_wait_seconds());
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

  // The router's view of one routed prompt: its cacheable blocks, those the worker held and
  // those after them that the store held.
  void CountRouted(std::span<const uint64_t> chain, int64_t matched, int64_t stored) {
    if (chain.empty()) return;
    c_->metrics_->router_prompt_blocks().Increment(static_cast<double>(chain.size()));
    c_->metrics_->router_cached_blocks().Increment(static_cast<double>(matched));
    c_->metrics_->router_stored_blocks().Increment(static_cast<double>(stored));
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
    // The metrics first: a client that reads /metrics once it has its answer sees this request.
    c_->metrics_->RequestSucceeded(
        outputs.front().finish_reason.empty() ? "length" : outputs.front().finish_reason);
    c_->metrics_->e2e_latency().Observe(absl::ToDoubleSeconds(absl::Now() - arrival_));
    c_->metrics_->prompt_tokens().Increment(static_cast<double>(usage.prompt_tokens));
    c_->metrics_->generation_tokens().Increment(static_cast<double>(usage.completion_tokens));
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

void Coordinator::CancelGenerations() {
  std::vector<std::shared_ptr<Generation>> live;
  {
    absl::MutexLock lock(&threads_mu_);
    stopping_ = true;
    for (auto& weak : live_) {
      if (auto g = weak.lock()) live.push_back(std::move(g));
    }
  }
  for (auto& g : live) g->Cancel(/*client_gone=*/false);
}

void Coordinator::HandleGeneration(const http::HttpRequest& http_request, Endpoint endpoint,
                                   uint64_t cache_salt,
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
  generation->SetCacheSalt(cache_salt);
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

}  // namespace kvasir::coordinator
