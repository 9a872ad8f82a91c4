// The blocking HTTP client (see client.h): one io_context per stream, run on the calling thread
// until the current step completes or its deadline passes (then the socket is closed).
#include "transport/http/client.h"

#include <chrono>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/write.hpp"
#include "boost/beast/core/flat_buffer.hpp"
#include "boost/beast/http/buffer_body.hpp"
#include "boost/beast/http/error.hpp"
#include "boost/beast/http/parser.hpp"
#include "boost/beast/http/read.hpp"
#include "common/status_macros.h"
#include "common/strings.h"

namespace kvasir::transport::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

namespace {

const std::string* FindHeader(const std::vector<HttpHeader>& headers, std::string_view name) {
  for (const HttpHeader& h : headers) {
    if (h.name == name) return &h.value;
  }
  return nullptr;
}

}  // namespace

const std::string* HttpClientResponse::header(std::string_view name) const {
  return FindHeader(headers, name);
}

struct HttpClientStream::Impl {
  net::io_context io;
  tcp::socket socket{io};
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::buffer_body> parser;
  std::string where;  // "host:port", for messages
  bool broken = false;

  // Runs the loop until `finished` is set or `deadline` passes; false on the deadline (the
  // socket is closed then, and the pending operation completes with an error).
  bool RunUntil(absl::Time deadline, const bool& finished) {
    io.restart();
    net::steady_timer timer(io);
    bool timed_out = false;
    timer.expires_after(
        absl::ToChronoNanoseconds(std::max(deadline - absl::Now(), absl::ZeroDuration())));
    timer.async_wait([this, &timed_out](const boost::system::error_code& ec) {
      if (ec) return;
      timed_out = true;
      boost::system::error_code ignored;
      socket.close(ignored);
    });
    while (!finished) {
      if (io.run_one() == 0) break;
    }
    timer.cancel();
    io.run();  // the timer's cancelled wait (and the aborted operation, if any)
    return !timed_out;
  }

  absl::Status TimedOut(std::string_view what) {
    broken = true;
    return absl::DeadlineExceededError(
        absl::StrCat("http ", where, ": ", ToAbsl(what), " timed out"));
  }
};

HttpClientStream::HttpClientStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpClientStream::~HttpClientStream() { Close(); }

const std::string* HttpClientStream::header(std::string_view name) const {
  return FindHeader(headers_, name);
}

absl::StatusOr<std::unique_ptr<HttpClientStream>> HttpClientStream::Open(
    std::string_view host_view, uint16_t port, const HttpClientRequest& request,
    absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  auto impl = std::make_unique<Impl>();
  std::string host(host_view);
  impl->where = absl::StrCat(host, ":", port);
  impl->parser.body_limit(std::uint64_t{1} << 34);
  impl->parser.header_limit(64 << 10);

  boost::system::error_code ec;
  net::ip::address address = net::ip::make_address(host, ec);
  if (ec) {
    tcp::resolver resolver(impl->io);
    auto results = resolver.resolve(host, std::to_string(port), ec);
    if (ec || results.empty()) {
      return absl::UnavailableError(absl::StrCat("http: cannot resolve '", host, "'"));
    }
    address = results.begin()->endpoint().address();
  }

  // Connect.
  bool done = false;
  boost::system::error_code op_ec;
  impl->socket.async_connect(tcp::endpoint(address, port), [&](const boost::system::error_code& e) {
    op_ec = e;
    done = true;
  });
  if (!impl->RunUntil(deadline, done)) return impl->TimedOut("connect");
  if (op_ec) {
    return absl::UnavailableError(
        absl::StrCat("http: cannot connect to ", impl->where, ": ", op_ec.message()));
  }

  // Send.
  std::string out = absl::StrCat(request.method, " ", request.target, " HTTP/1.1\r\nHost: ", host,
                                 ":", port, "\r\n");
  for (const HttpHeader& h : request.headers) absl::StrAppend(&out, h.name, ": ", h.value, "\r\n");
  if (!request.body.empty()) absl::StrAppend(&out, "Content-Type: ", request.content_type, "\r\n");
  if (!request.body.empty() || request.method == "POST" || request.method == "PUT") {
    absl::StrAppend(&out, "Content-Length: ", request.body.size(), "\r\n");
  }
  absl::StrAppend(&out, "\r\n", request.body);
  done = false;
  net::async_write(impl->socket, net::buffer(out), [&](const boost::system::error_code& e, size_t) {
    op_ec = e;
    done = true;
  });
  if (!impl->RunUntil(deadline, done)) return impl->TimedOut("send");
  if (op_ec) {
    return absl::UnavailableError(
        absl::StrCat("http: sending to ", impl->where, " failed: ", op_ec.message()));
  }

  // Response header.
  done = false;
  bhttp::async_read_header(impl->socket, impl->buffer, impl->parser,
                           [&](const boost::system::error_code& e, size_t) {
                             op_ec = e;
                             done = true;
                           });
  if (!impl->RunUntil(deadline, done)) return impl->TimedOut("reading the response header");
  if (op_ec) {
    return absl::UnavailableError(
        absl::StrCat("http: no response header from ", impl->where, ": ", op_ec.message()));
  }
  std::unique_ptr<HttpClientStream> stream(new HttpClientStream(std::move(impl)));
  const auto& message = stream->impl_->parser.get();
  stream->status_ = static_cast<int>(message.result_int());
  for (const auto& field : message) {
    HttpHeader h;
    h.name = absl::AsciiStrToLower(
        absl::string_view(field.name_string().data(), field.name_string().size()));
    h.value = std::string(field.value().data(), field.value().size());
    stream->headers_.push_back(std::move(h));
  }
  return stream;
}

absl::StatusOr<std::optional<std::string>> HttpClientStream::Read(absl::Duration timeout) {
  Impl& impl = *impl_;
  if (impl.broken) return absl::FailedPreconditionError("http: the stream is closed");
  const absl::Time deadline = absl::Now() + timeout;
  char chunk[16384];
  while (true) {
    if (impl.parser.is_done()) return std::optional<std::string>();
    auto& body = impl.parser.get().body();
    body.data = chunk;
    body.size = sizeof(chunk);
    bool done = false;
    boost::system::error_code op_ec;
    bhttp::async_read_some(impl.socket, impl.buffer, impl.parser,
                           [&](const boost::system::error_code& e, size_t) {
                             op_ec = e;
                             done = true;
                           });
    if (!impl.RunUntil(deadline, done)) return impl.TimedOut("reading the body");
    if (op_ec == bhttp::error::need_buffer) op_ec = {};
    if (op_ec) {
      impl.broken = true;
      return absl::UnavailableError(
          absl::StrCat("http: reading from ", impl.where, " failed: ", op_ec.message()));
    }
    const size_t n = sizeof(chunk) - body.size;
    if (n > 0) return std::optional<std::string>(std::string(chunk, n));
  }
}

absl::StatusOr<std::string> HttpClientStream::ReadAll(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string all;
  while (true) {
    KVASIR_ASSIGN_OR_RETURN(std::optional<std::string> piece, Read(deadline - absl::Now()));
    if (!piece.has_value()) return all;
    all += *piece;
  }
}

void HttpClientStream::Close() {
  if (!impl_) return;
  impl_->broken = true;
  boost::system::error_code ignored;
  impl_->socket.close(ignored);
}

absl::StatusOr<HttpClientResponse> HttpFetch(std::string_view host, uint16_t port,
                                             const HttpClientRequest& request,
                                             absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  KVASIR_ASSIGN_OR_RETURN(auto stream, HttpClientStream::Open(host, port, request, timeout));
  HttpClientResponse response;
  response.status = stream->status();
  response.headers = stream->headers();
  if (request.method != "HEAD") {
    KVASIR_ASSIGN_OR_RETURN(response.body, stream->ReadAll(deadline - absl::Now()));
  }
  return response;
}

}  // namespace kvasir::transport::http
