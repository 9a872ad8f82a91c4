// A tiny blocking HTTP/1.1 client on Boost.Beast for tests, health polling (`kvasir up` waits
// for /ready) and small tools. One connection per request; every step has a deadline.
//
//   HttpClientRequest get;
//   get.target = "/ready";
//   KVASIR_ASSIGN_OR_RETURN(HttpClientResponse r,
//                           HttpFetch("127.0.0.1", 8000, get, absl::Seconds(2)));
//   if (r.status == 200) ...
//
// HttpClientStream reads a response body piece by piece as it arrives (server-sent events), and
// can hang up in the middle, as a client that goes away would.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/http/server.h"

namespace kvasir::transport::http {

struct HttpClientRequest {
  std::string method = "GET";
  std::string target = "/";
  std::vector<HttpHeader> headers;  // Host, Content-Length and Content-Type are added
  std::string body;
  std::string content_type = "application/json";  // sent when the body is not empty
};

struct HttpClientResponse {
  int status = 0;
  std::vector<HttpHeader> headers;  // names lowercased
  std::string body;
  // The first header called `name` (lowercase), or nullptr.
  const std::string* header(std::string_view name) const;
};

// Sends the request and reads the whole response. Unavailable when the connection fails,
// DeadlineExceeded past `timeout` (for everything together), InvalidArgument for a response
// that is not HTTP.
absl::StatusOr<HttpClientResponse> HttpFetch(std::string_view host, uint16_t port,
                                             const HttpClientRequest& request,
                                             absl::Duration timeout);

class HttpClientStream {
 public:
  // Connects, sends the request and reads the response header, all within `timeout`.
  static absl::StatusOr<std::unique_ptr<HttpClientStream>> Open(std::string_view host,
                                                                uint16_t port,
                                                                const HttpClientRequest& request,
                                                                absl::Duration timeout);
  ~HttpClientStream();
  HttpClientStream(const HttpClientStream&) = delete;
  HttpClientStream& operator=(const HttpClientStream&) = delete;

  int status() const { return status_; }
  const std::vector<HttpHeader>& headers() const { return headers_; }
  const std::string* header(std::string_view name) const;

  // The next piece of the body as it arrives (chunk framing removed); nullopt at its end.
  // DeadlineExceeded when nothing arrives within `timeout` (the stream is unusable afterwards),
  // Unavailable when the connection breaks.
  absl::StatusOr<std::optional<std::string>> Read(absl::Duration timeout);
  // Reads the rest of the body.
  absl::StatusOr<std::string> ReadAll(absl::Duration timeout);

  // Hangs up (a client that goes away). Idempotent.
  void Close();

  struct Impl;

 private:
  explicit HttpClientStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  int status_ = 0;
  std::vector<HttpHeader> headers_;
};

}  // namespace kvasir::transport::http
