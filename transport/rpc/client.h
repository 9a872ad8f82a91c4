// The client side of the control plane: one TCP connection to one server, kept up in the
// background (connect, handshake, reconnect with exponential backoff and jitter), carrying any
// number of concurrent unary calls and server streams. Calls block the calling thread; the
// connection lives on the client's own I/O thread.
//
//   KVASIR_ASSIGN_OR_RETURN(auto client,
//                           RpcClient::Create({.host = "10.0.0.7", .port = 7000, .handshake = h}));
//   KVASIR_ASSIGN_OR_RETURN(std::string reply,
//                           client->Call("echo", "hi", {.timeout = absl::Milliseconds(200)}));
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/rpc/channel.h"
#include "transport/rpc/frame.h"
#include "transport/rpc/handshake.h"

namespace kvasir::transport::rpc {

class RpcClient final : public RpcChannel {
 public:
  struct Options {
    std::string host = "127.0.0.1";  // name or address of the server
    uint16_t port = 0;
    HandshakeInfo handshake;
    size_t max_frame_bytes = kDefaultMaxFrameBytes;
    absl::Duration default_timeout = absl::Seconds(10);  // for calls that set none
    absl::Duration connect_timeout = absl::Seconds(2);   // one connect + handshake attempt
    // Reconnect delays: initial, then times multiplier per failure up to max, each +-jitter.
    absl::Duration backoff_initial = absl::Milliseconds(20);
    absl::Duration backoff_max = absl::Seconds(1);
    double backoff_multiplier = 2.0;
    double backoff_jitter = 0.2;
  };

  // Starts the I/O thread and the first connection attempt; does not wait for it.
  static absl::StatusOr<std::unique_ptr<RpcClient>> Create(Options options);
  ~RpcClient() override;  // Stop()
  RpcClient(const RpcClient&) = delete;
  RpcClient& operator=(const RpcClient&) = delete;

  absl::StatusOr<std::string> Call(std::string_view method, std::string_view request,
                                   const CallOptions& options = {}) override;
  absl::StatusOr<std::unique_ptr<ClientStream>> OpenStream(
      std::string_view method, std::string_view request, const CallOptions& options = {}) override;

  // Waits until the handshake has succeeded. DeadlineExceeded after `timeout`, or the
  // handshake refusal (FailedPrecondition). Safe from any thread.
  absl::Status WaitConnected(absl::Duration timeout);

  // True while a connection is up and past the handshake. Safe from any thread.
  bool connected() const;
  // Handshakes completed so far (1 + reconnects). Safe from any thread.
  int64_t num_connects() const;
  // The server's handshake of the current or last connection.
  HandshakeInfo peer() const;

  // Fails the calls in flight with Unavailable, closes the connection and joins the I/O thread.
  // Idempotent; safe from any thread except the I/O thread.
  void Stop();

  struct Core;  // internal: the I/O thread's state, shared with calls in flight

 private:
  explicit RpcClient(std::shared_ptr<Core> core);

  std::shared_ptr<Core> core_;
};

}  // namespace kvasir::transport::rpc
