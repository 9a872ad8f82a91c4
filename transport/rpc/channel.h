// The client side of the control plane as an interface, so that callers can be given a real
// RpcClient, an in-test fake, or a fault-injecting decorator (transport/fault). Payloads are
// serialized protobuf messages (or any bytes); CallProto adds the typed convenience.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "google/protobuf/message_lite.h"

namespace kvasir::transport::rpc {

// Lets another thread cancel calls in flight. Share one token between the caller and whoever may
// cancel; a call started with an already-cancelled token fails with Cancelled at once.
// Safe from any thread.
class CancelToken {
 public:
  // Cancels every call registered now or later. Idempotent.
  void Cancel();
  bool cancelled() const;

  // For channel implementations: `fn` runs once, on the cancelling thread (or at once if the
  // token is already cancelled). Returns an id for Unregister, or 0 if `fn` already ran.
  uint64_t Register(std::function<void()> fn);
  void Unregister(uint64_t id);

 private:
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<std::pair<uint64_t, std::function<void()>>> callbacks_ ABSL_GUARDED_BY(mu_);
};

struct CallOptions {
  // Deadline of the whole call (a stream: until its end). Every call has one; zero or negative
  // means the channel's default.
  absl::Duration timeout = absl::ZeroDuration();
  // (optional) Cancels the call from another thread.
  std::shared_ptr<CancelToken> cancel;
  // Wait for a connection (up to the deadline) when there is none. When false, a call on a
  // channel that is not connected fails with Unavailable at once.
  bool wait_for_ready = true;
};

// A server stream being read. Not thread-safe, except Cancel(). Destroying an unfinished stream
// cancels it.
class ClientStream {
 public:
  virtual ~ClientStream() = default;
  // The next message; nullopt at the end of a stream that finished OK; the stream's error
  // (DeadlineExceeded past the call's deadline, Unavailable when the connection was lost, or the
  // server's status). Blocks up to the call's deadline.
  virtual absl::StatusOr<std::optional<std::string>> Read() = 0;
  // Ends the call; a blocked Read returns Cancelled. Safe from any thread. Idempotent.
  virtual void Cancel() = 0;
};

class RpcChannel {
 public:
  virtual ~RpcChannel() = default;

  // Sends `request` to `method` and waits for the response. Errors: DeadlineExceeded, Cancelled,
  // Unavailable (no connection, or it broke while the call was in flight), FailedPrecondition (the
  // peer refused the handshake), or the status the server's handler returned. Blocks; safe from
  // any thread except the channel's own I/O thread.
  virtual absl::StatusOr<std::string> Call(std::string_view method, std::string_view request,
                                           const CallOptions& options = {}) = 0;

  // Starts a server stream. The returned stream yields the server's messages in order.
  // Safe from any thread except the channel's own I/O thread.
  virtual absl::StatusOr<std::unique_ptr<ClientStream>> OpenStream(
      std::string_view method, std::string_view request, const CallOptions& options = {}) = 0;
};

// Typed call: serializes `request`, parses the response into `response`.
//   RendezvousGetResponse resp;
//   KVASIR_RETURN_IF_ERROR(CallProto(channel, "rendezvous.Get", req, &resp, {.timeout = ...}));
absl::Status CallProto(RpcChannel& channel, std::string_view method,
                       const google::protobuf::MessageLite& request,
                       google::protobuf::MessageLite* response, const CallOptions& options = {});

}  // namespace kvasir::transport::rpc
