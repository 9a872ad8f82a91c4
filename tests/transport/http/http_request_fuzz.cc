// Fuzz target for HTTP request parsing (transport/http/server.cc): the bytes a client sends on one
// connection go through ParseHttpRequest, the same parser setup, limits, error mapping and
// conversion to HttpRequest that every connection of HttpServer uses, request after request
// (pipelining), under small header and body limits so that 413 and 431 are reachable. A parsed
// request must be self-consistent; an error must say what the server answers. The first line
// also goes through ParseHostPort and IsLoopbackHost (addresses from flags and config).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "transport/http/server.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvasir::transport::http;  // NOLINT
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);

  const std::string_view first_line = bytes.substr(0, bytes.find('\n'));
  absl::StatusOr<std::pair<std::string, uint16_t>> host_port = ParseHostPort(first_line);
  if (host_port.ok()) {
    if (host_port->second == 0) __builtin_trap();
    (void)IsLoopbackHost(host_port->first);
  }
  (void)IsLoopbackHost(first_line);

  HttpServer::Options options;
  options.max_header_bytes = 1024;
  options.max_body_bytes = 512;
  size_t at = 0;
  for (int requests = 0; requests < 16 && at < bytes.size(); ++requests) {
    size_t consumed = 0;
    absl::StatusOr<HttpRequest> request = ParseHttpRequest(bytes.substr(at), options, &consumed);
    if (!request.ok()) {
      const absl::StatusCode code = request.status().code();
      if (code != absl::StatusCode::kInvalidArgument &&
          code != absl::StatusCode::kResourceExhausted && code != absl::StatusCode::kUnavailable) {
        __builtin_trap();
      }
      break;
    }
    if (consumed == 0 || consumed > bytes.size() - at) __builtin_trap();
    at += consumed;
    const HttpRequest& r = *request;
    if (r.method.empty() || r.target.empty()) __builtin_trap();
    if (r.target.compare(0, r.path.size(), r.path) != 0) __builtin_trap();
    if (r.path.find('?') != std::string::npos) __builtin_trap();
    if (r.path.size() < r.target.size() && r.target.substr(r.path.size() + 1) != r.query) {
      __builtin_trap();
    }
    if (r.body.size() > options.max_body_bytes) __builtin_trap();
    if (r.version != 10 && r.version != 11) __builtin_trap();
    for (const HttpHeader& h : r.headers) {
      for (char c : h.name) {
        if (c >= 'A' && c <= 'Z') __builtin_trap();  // names are lowercased
      }
      if (r.header(h.name) == nullptr) __builtin_trap();
    }
    (void)r.header("content-length");
  }
  return 0;
}
