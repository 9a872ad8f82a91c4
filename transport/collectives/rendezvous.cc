// Rendezvous stores and service (see rendezvous.h).
#include "transport/collectives/rendezvous.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "transport/transport.pb.h"

namespace kvasir::transport::collectives {

absl::Status InMemoryRendezvousStore::Set(std::string_view key, std::string_view value) {
  absl::MutexLock lock(&mu_);
  values_[std::string(key)] = std::string(value);
  return absl::OkStatus();
}

absl::StatusOr<std::string> InMemoryRendezvousStore::Get(std::string_view key,
                                                         absl::Duration timeout) {
  const std::string k(key);
  absl::MutexLock lock(&mu_);
  auto present = [this, &k]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return values_.contains(k); };
  if (!mu_.AwaitWithTimeout(absl::Condition(&present), timeout)) {
    return absl::DeadlineExceededError(
        absl::StrCat("rendezvous key '", k, "' not set within ", absl::FormatDuration(timeout)));
  }
  return values_[k];
}

absl::Status RpcRendezvousStore::Set(std::string_view key, std::string_view value) {
  RendezvousSetRequest request;
  request.set_key(std::string(key));
  request.set_value(std::string(value));
  return rpc::CallProto(channel_, RendezvousService::kSetMethod, request, nullptr);
}

absl::StatusOr<std::string> RpcRendezvousStore::Get(std::string_view key, absl::Duration timeout) {
  RendezvousGetRequest request;
  request.set_key(std::string(key));
  RendezvousGetResponse response;
  absl::Status status = rpc::CallProto(channel_, RendezvousService::kGetMethod, request, &response,
                                       {.timeout = timeout});
  if (!status.ok()) {
    return Annotate(status, absl::StrCat("rendezvous get '", ToAbsl(key), "'"));
  }
  return std::move(*response.mutable_value());
}

void RendezvousService::Register(rpc::RpcServer& server) {
  server.RegisterUnary(std::string(kSetMethod), [this](std::shared_ptr<rpc::ServerCall> call) {
    HandleSet(std::move(call));
  });
  server.RegisterUnary(std::string(kGetMethod), [this](std::shared_ptr<rpc::ServerCall> call) {
    HandleGet(std::move(call));
  });
}

void RendezvousService::HandleSet(std::shared_ptr<rpc::ServerCall> call) {
  RendezvousSetRequest request;
  if (!request.ParseFromString(call->request()) || request.key().empty() ||
      request.key().size() > kMaxKeyBytes || request.value().size() > kMaxValueBytes) {
    call->Finish(absl::InvalidArgumentError("malformed rendezvous set"));
    return;
  }
  std::vector<std::shared_ptr<rpc::ServerCall>> waiting;
  {
    absl::MutexLock lock(&mu_);
    if (!values_.contains(request.key()) && values_.size() >= kMaxKeys) {
      call->Finish(absl::ResourceExhaustedError("rendezvous store full"));
      return;
    }
    values_[request.key()] = request.value();
    auto it = waiters_.find(request.key());
    if (it != waiters_.end()) {
      waiting = std::move(it->second);
      waiters_.erase(it);
    }
  }
  RendezvousGetResponse response;
  response.set_value(request.value());
  const std::string bytes = response.SerializeAsString();
  for (auto& waiter : waiting) waiter->Finish(bytes);
  call->Finish(std::string());
}

void RendezvousService::HandleGet(std::shared_ptr<rpc::ServerCall> call) {
  RendezvousGetRequest request;
  if (!request.ParseFromString(call->request()) || request.key().empty() ||
      request.key().size() > kMaxKeyBytes) {
    call->Finish(absl::InvalidArgumentError("malformed rendezvous get"));
    return;
  }
  const std::string key = request.key();
  {
    absl::MutexLock lock(&mu_);
    auto it = values_.find(key);
    if (it != values_.end()) {
      RendezvousGetResponse response;
      response.set_value(it->second);
      call->Finish(response.SerializeAsString());
      return;
    }
    waiters_[key].push_back(call);
  }
  // Drop the waiter when its caller gives up (deadline, cancel, disconnect).
  std::weak_ptr<rpc::ServerCall> weak = call;
  call->OnCancel([this, weak, key] {
    auto c = weak.lock();
    absl::MutexLock lock(&mu_);
    auto w = waiters_.find(key);
    if (w == waiters_.end() || c == nullptr) return;
    std::erase_if(w->second, [&](const auto& p) { return p == c; });
    if (w->second.empty()) waiters_.erase(w);
  });
}

}  // namespace kvasir::transport::collectives
