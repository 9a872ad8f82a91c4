// The server side of the control plane: accepts TCP connections, runs the handshake, and
// dispatches REQUEST frames to registered unary or server-stream handlers. One I/O thread owns
// every socket and timer; handlers are called on it and may finish their call later from any
// thread through the ServerCall they are given.
//
//   KVASIR_ASSIGN_OR_RETURN(auto server, RpcServer::Create({.handshake = info}));
//   server->RegisterUnary("echo", [](std::shared_ptr<ServerCall> call) {
//     call->Finish(call->request());
//   });
//   KVASIR_RETURN_IF_ERROR(server->Start());
//   ... server->port() ...
//   server->Stop();
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "transport/rpc/frame.h"
#include "transport/rpc/handshake.h"

namespace boost::asio {
class io_context;
}

namespace kvasir::transport::rpc {

class ServerConnection;

// One call being served. Handed to the handler as a shared_ptr; keep it to answer later.
// Everything here is safe from any thread.
class ServerCall : public std::enable_shared_from_this<ServerCall> {
 public:
  const std::string& method() const { return method_; }
  const std::string& request() const { return request_; }
  bool is_stream() const { return stream_; }
  // When the client stops waiting (InfiniteFuture if it sent no timeout).
  absl::Time deadline() const { return deadline_; }

  // True once the client cancelled, the deadline passed, the connection closed or the server
  // stopped. Work for a cancelled call can stop; its result is dropped.
  bool cancelled() const;

  // Runs `fn` once when the call is cancelled (on the server's I/O thread; at once, on this
  // thread, if it already is). Not run when the call finishes normally.
  void OnCancel(std::function<void()> fn);

  // Unary: sends the response or the error. Stream: ends the stream with the status (a value is
  // ignored). Only the first Finish counts.
  void Finish(absl::StatusOr<std::string> result);
  void Finish(const absl::Status& status) {
    Finish(status.ok() ? absl::StatusOr<std::string>(std::string())
                       : absl::StatusOr<std::string>(status));
  }
  void Finish(std::string response) { Finish(absl::StatusOr<std::string>(std::move(response))); }

  // Stream only: queues one message. False once the call is finished or cancelled.
  bool Write(std::string message);

  // Internal: built by the server.
  ServerCall(std::shared_ptr<boost::asio::io_context> io, std::weak_ptr<ServerConnection> conn,
             uint64_t call_id, std::string method, std::string request, bool stream,
             absl::Time deadline);

 private:
  friend class ServerConnection;
  // I/O thread: marks the call cancelled and runs the callback.
  void CancelOnIoThread();

  std::shared_ptr<boost::asio::io_context> io_;
  std::weak_ptr<ServerConnection> conn_;
  const uint64_t call_id_;
  const std::string method_;
  const std::string request_;
  const bool stream_;
  const absl::Time deadline_;
  std::atomic<bool> finished_{false};
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void()> on_cancel_ ABSL_GUARDED_BY(mu_);
};

class RpcServer {
 public:
  struct Options {
    std::string host = "127.0.0.1";  // address to bind
    uint16_t port = 0;               // 0: the OS picks one (see port())
    HandshakeInfo handshake;
    size_t max_frame_bytes = kDefaultMaxFrameBytes;
    absl::Duration handshake_timeout = absl::Seconds(5);  // first frame must arrive within it
  };
  using Handler = std::function<void(std::shared_ptr<ServerCall> call)>;

  // Binds and listens (so port() is known), without accepting yet.
  static absl::StatusOr<std::unique_ptr<RpcServer>> Create(Options options);
  ~RpcServer();  // Stop()
  RpcServer(const RpcServer&) = delete;
  RpcServer& operator=(const RpcServer&) = delete;

  // Register before Start(). Handlers are called on the I/O thread and must not block: answer at
  // once, or keep the call and finish it from another thread.
  void RegisterUnary(std::string method, Handler handler);
  void RegisterStream(std::string method, Handler handler);

  // Starts the I/O thread and accepting. FailedPrecondition if started or stopped before.
  absl::Status Start();

  // Closes the listener and every connection, cancels the calls in flight, joins the I/O thread.
  // Idempotent; safe from any thread except the I/O thread.
  void Stop();

  uint16_t port() const { return port_; }
  const Options& options() const { return options_; }

 private:
  struct Impl;
  explicit RpcServer(Options options);

  Options options_;
  uint16_t port_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvasir::transport::rpc
