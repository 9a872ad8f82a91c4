// CancelToken and CallProto (see channel.h).
#include "transport/rpc/channel.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/strings.h"

namespace kvasir::transport::rpc {

void CancelToken::Cancel() {
  std::vector<std::pair<uint64_t, std::function<void()>>> callbacks;
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_) return;
    cancelled_ = true;
    callbacks.swap(callbacks_);
  }
  for (auto& [id, fn] : callbacks) fn();
}

bool CancelToken::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

uint64_t CancelToken::Register(std::function<void()> fn) {
  {
    absl::MutexLock lock(&mu_);
    if (!cancelled_) {
      const uint64_t id = next_id_++;
      callbacks_.emplace_back(id, std::move(fn));
      return id;
    }
  }
  fn();
  return 0;
}

void CancelToken::Unregister(uint64_t id) {
  absl::MutexLock lock(&mu_);
  for (auto it = callbacks_.begin(); it != callbacks_.end(); ++it) {
    if (it->first == id) {
      callbacks_.erase(it);
      return;
    }
  }
}

absl::Status CallProto(RpcChannel& channel, std::string_view method,
                       const google::protobuf::MessageLite& request,
                       google::protobuf::MessageLite* response, const CallOptions& options) {
  std::string bytes;
  if (!request.SerializeToString(&bytes)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot serialize request to ", ToAbsl(method)));
  }
  absl::StatusOr<std::string> reply = channel.Call(method, bytes, options);
  if (!reply.ok()) return reply.status();
  if (response != nullptr && !response->ParseFromString(*reply)) {
    return absl::InternalError(absl::StrCat("malformed response from ", ToAbsl(method)));
  }
  return absl::OkStatus();
}

}  // namespace kvasir::transport::rpc
