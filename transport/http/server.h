// A small HTTP/1.1 server on Boost.Beast, shared by every Kvasir service (coordinator API, worker
// and cachestore /health and /metrics). It parses requests with Beast's parser under header and
// body limits, keeps connections alive, enforces read/idle/write timeouts, answers malformed
// requests with 400 (413 and 431 for oversized bodies and headers) and never crashes on input.
// Handlers answer at once or later from any thread, with one complete response or a stream.
//
//   HttpServer::Options options;
//   options.port = 0;  // the OS picks; see port()
//   KVASIR_ASSIGN_OR_RETURN(auto server, HttpServer::Start(options,
//       [](HttpRequest request, std::shared_ptr<HttpResponder> responder) {
//         if (request.path == "/health") {
//           responder->Send({.status = 200, .body = "{\"status\":\"ok\"}"});
//         } else {
//           responder->Send({.status = 404, .body = "{}"});
//         }
//       }));
//   ... server->port() ...
//   server->Stop();
//
// Streaming (server-sent events): StartStream, then Write pieces (each goes out as one chunk on
// HTTP/1.1), then End. While a request is being answered the server keeps reading the socket, so
// a client that goes away is noticed at once: closed() turns true, Write returns false and the
// OnClose callback runs (the coordinator cancels the generation there).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace kvasir::transport::http {

struct HttpHeader {
  std::string name;  // lowercase in requests; as given in responses
  std::string value;
};

struct HttpRequest {
  std::string method;               // "GET", "POST", ... as sent
  std::string target;               // the request target as sent: "/v1/models?x=1"
  std::string path;                 // target up to '?'
  std::string query;                // after '?' (without it); "" if none
  std::vector<HttpHeader> headers;  // names lowercased, in the order sent
  std::string body;
  std::string peer;  // "127.0.0.1:41234"
  int version = 11;  // 10 or 11
  // The first header called `name` (give it lowercase), or nullptr.
  const std::string* header(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::vector<HttpHeader> headers;  // extra headers (Retry-After, ...)
  std::string body;
};

class HttpSession;

// Answers one request. Handed to the handler as a shared_ptr: keep it to answer later. Every
// method is safe from any thread and never blocks. Dropping the last reference without answering
// sends a 500.
class HttpResponder {
 public:
  ~HttpResponder();
  HttpResponder(const HttpResponder&) = delete;
  HttpResponder& operator=(const HttpResponder&) = delete;

  // Sends a complete response. Only the first Send or StartStream counts: later ones return
  // false, as does a call after the connection closed.
  bool Send(HttpResponse response);
  // Starts a streamed response: chunked on HTTP/1.1, ended by closing the connection on HTTP/1.0.
  bool StartStream(int status, std::string content_type, std::vector<HttpHeader> headers = {});
  // Queues one piece of the stream (empty pieces are skipped). False once the connection is gone,
  // the stream ended, or no stream was started.
  bool Write(std::string data);
  // Ends the stream. Idempotent.
  void End();

  // True once the connection is gone before the response completed (the client went away, a
  // timeout, the server stopping).
  bool closed() const { return closed_.load(); }
  // Runs `fn` once when the connection goes away before the response completed: on a server
  // thread, or at once on this thread if it already has. Never runs after a complete response.
  // A later call replaces an earlier callback that has not run.
  void OnClose(std::function<void()> fn);

  const std::string& peer() const { return peer_; }

 private:
  friend class HttpSession;
  HttpResponder(std::weak_ptr<HttpSession> session, uint64_t sequence, std::string peer)
      : session_(std::move(session)), sequence_(sequence), peer_(std::move(peer)) {}
  // From the session: the connection went away before the response completed.
  void NotifyClosed();
  // From the session: the response is complete; OnClose will not run.
  void NotifyCompleted();

  const std::weak_ptr<HttpSession> session_;
  const uint64_t sequence_;  // the request's number on its connection
  const std::string peer_;
  std::atomic<bool> answered_{false};  // Send or StartStream happened
  std::atomic<bool> streaming_{false};
  std::atomic<bool> ended_{false};
  std::atomic<bool> closed_{false};
  absl::Mutex mu_;
  bool completed_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void()> on_close_ ABSL_GUARDED_BY(mu_);
};

// Called on a server thread for every complete request. Must not block: answer at once, or keep
// the responder and answer from another thread.
using HttpHandler =
    std::function<void(HttpRequest request, std::shared_ptr<HttpResponder> responder)>;

class HttpServer {
 public:
  struct Options {
    std::string host = "127.0.0.1";                    // address or name to bind
    uint16_t port = 0;                                 // 0: the OS picks one (see port())
    size_t max_header_bytes = 16 << 10;                // larger: 431 and close
    size_t max_body_bytes = 4 << 20;                   // larger: 413 and close
    absl::Duration read_timeout = absl::Seconds(30);   // to receive a whole request
    absl::Duration idle_timeout = absl::Seconds(60);   // keep-alive: wait for the next request
    absl::Duration write_timeout = absl::Seconds(30);  // for each write to make progress
    int threads = 1;                                   // I/O threads
    size_t max_connections = 4096;                     // more are accepted and closed at once
    size_t max_queued_bytes = 16 << 20;  // unsent response bytes per connection; more: close
  };

  // Binds, listens and starts the I/O threads. InvalidArgument for a bad host or option,
  // Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(Options options, HttpHandler handler);
  ~HttpServer();  // Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const { return port_; }
  const Options& options() const { return options_; }

  // Stops accepting, closes every connection (pending responders see closed() and their OnClose
  // runs), and joins the I/O threads. Idempotent; safe from any thread except the server's own
  // (not from a handler).
  void Stop();

  struct Impl;  // internal

 private:
  HttpServer(Options options) : options_(std::move(options)) {}

  Options options_;
  uint16_t port_ = 0;
  std::shared_ptr<Impl> impl_;
};

// "127.0.0.1", "::1", "localhost" and the rest of 127.0.0.0/8.
bool IsLoopbackHost(std::string_view host);

// "host:port" (or "[v6]:port") -> host and port. InvalidArgument when malformed or port 0.
absl::StatusOr<std::pair<std::string, uint16_t>> ParseHostPort(std::string_view address);

// Reads one request from `bytes` as a connection of the server does (Beast's parser under the
// header and body limits of `options`), without a socket: the fuzz target's way in. On success
// `consumed` (if not null) is the request's length; a pipelined request may follow. Errors name
// what the server does: InvalidArgument (it answers 400), ResourceExhausted (413 or 431),
// Unavailable (the bytes end mid-request: it waits for more, or closes when the client does).
absl::StatusOr<HttpRequest> ParseHttpRequest(std::string_view bytes,
                                             const HttpServer::Options& options,
                                             size_t* consumed = nullptr);

}  // namespace kvasir::transport::http
