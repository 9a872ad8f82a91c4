// Coordinator (see coordinator.h).
#include "coordinator/coordinator.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/process_metrics.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "kvcache/prefix_hash.h"
#include "transport/rpc/client.h"
#include "worker/service/worker_service.pb.h"

namespace kvasir::coordinator {

namespace http = transport::http;
namespace rpc = transport::rpc;
using json = nlohmann::json;

namespace {

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

}  // namespace

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
  if (options.api_key_tenants.size() > options.api_keys.size()) {
    return absl::InvalidArgumentError("more API key tenants than API keys");
  }
  if (options.routing != "kv" && options.routing != "load") {
    return absl::InvalidArgumentError("routing must be kv or load");
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
                              .n_vocab = c->tokenizer_->n_vocab(),
                              .kv_routing = o.routing == "kv"},
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
    response.set_known(self->registry_->Heartbeat(request.worker_id(), request.name(),
                                                  request.load(), &request.prefix_cache()));
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
  CancelGenerations();
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

std::optional<size_t> Coordinator::MatchKey(const http::HttpRequest& request) const {
  const std::string* header = request.header("authorization");
  if (header == nullptr) return std::nullopt;
  std::string_view value = *header;
  if (value.size() < 7 || !absl::EqualsIgnoreCase(ToAbsl(value.substr(0, 7)), "bearer ")) {
    return std::nullopt;
  }
  value.remove_prefix(7);
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  // Every key is compared in full, whichever matches: the time does not tell which.
  std::optional<size_t> match;
  for (size_t i = 0; i < options_.api_keys.size(); ++i) {
    if (ConstantTimeEquals(value, options_.api_keys[i])) match = i;
  }
  return match;
}

uint64_t Coordinator::CacheSalt(std::optional<size_t> key) const {
  if (!key.has_value() || *key >= options_.api_key_tenants.size()) return 0;
  const std::string& tenant = options_.api_key_tenants[*key];
  return tenant.empty() ? 0 : Xxh3(tenant, 0x6b7673616c74ULL) | 1;  // never the default's 0
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
  // The key is matched once: it authorizes the request and names its tenant.
  const std::optional<size_t> key = options_.api_keys.empty() ? std::nullopt : MatchKey(request);
  if (api && !options_.api_keys.empty() && !key.has_value()) {
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
    HandleGeneration(request, Endpoint::kCompletions, CacheSalt(key), std::move(responder));
  } else if (path == "/v1/chat/completions") {
    if (!post) return wrong_method();
    HandleGeneration(request, Endpoint::kChat, CacheSalt(key), std::move(responder));
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
