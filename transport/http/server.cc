// HttpServer (see server.h). Each connection is an HttpSession on its own strand: it reads a
// request with Beast's parser, hands it to the handler, and while the answer is pending keeps a
// read outstanding on the socket so that a client that hangs up is noticed (bytes that arrive
// meanwhile are kept for the next request: pipelining works). Responses are formatted here and
// written from one queue; every read and write is guarded by a timer that closes the socket.
#include "transport/http/server.h"

#include <chrono>
#include <deque>
#include <optional>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/strand.hpp"
#include "boost/asio/write.hpp"
#include "boost/beast/core/flat_buffer.hpp"
#include "boost/beast/http/error.hpp"
#include "boost/beast/http/parser.hpp"
#include "boost/beast/http/read.hpp"
#include "boost/beast/http/status.hpp"
#include "boost/beast/http/string_body.hpp"
#include "common/log.h"
#include "common/strings.h"

namespace kvasir::transport::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

namespace {

std::chrono::steady_clock::duration ToChrono(absl::Duration d) {
  return absl::ToChronoNanoseconds(d);
}

std::string ReasonPhrase(int status) {
  const auto reason = bhttp::obsolete_reason(static_cast<bhttp::status>(status));
  if (reason.empty()) return "Unknown";
  return std::string(reason.data(), reason.size());
}

std::string StatusLine(int version, int status) {
  return absl::StrCat(version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ", status, " ", ReasonPhrase(status),
                      "\r\n");
}

// Header values must not smuggle line breaks into the response.
std::string CleanHeaderValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) out.push_back(c == '\r' || c == '\n' ? ' ' : c);
  return out;
}

std::string ErrorJson(std::string_view message, std::string_view type) {
  // The messages passed here are fixed strings without characters that need escaping.
  return absl::StrCat("{\"error\":{\"message\":\"", ToAbsl(message), "\",\"type\":\"", ToAbsl(type),
                      "\",\"param\":null,\"code\":null}}");
}

using RequestParser = bhttp::request_parser<bhttp::string_body>;

void ConfigureParser(RequestParser& parser, const HttpServer::Options& options) {
  parser.header_limit(static_cast<std::uint32_t>(options.max_header_bytes));
  parser.body_limit(options.max_body_bytes);
}

// The answer to a request the parser refused: 413, 431 or 400; 0 when the connection just
// closes (the peer closed, a timeout closed the socket, or a network error).
int ParseErrorStatus(const boost::system::error_code& ec) {
  if (ec == bhttp::error::body_limit) return 413;
  if (ec == bhttp::error::header_limit) return 431;
  if (ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message ||
      ec.category() != bhttp::make_error_code(bhttp::error::bad_method).category()) {
    return 0;
  }
  return 400;
}

// What a handler sees of a parsed request.
HttpRequest RequestFromMessage(bhttp::request<bhttp::string_body>&& message, std::string peer) {
  HttpRequest request;
  request.method = std::string(message.method_string().data(), message.method_string().size());
  request.target = std::string(message.target().data(), message.target().size());
  const size_t q = request.target.find('?');
  request.path = request.target.substr(0, q);
  if (q != std::string::npos) request.query = request.target.substr(q + 1);
  for (const auto& field : message) {
    HttpHeader h;
    h.name = absl::AsciiStrToLower(
        absl::string_view(field.name_string().data(), field.name_string().size()));
    h.value = std::string(field.value().data(), field.value().size());
    request.headers.push_back(std::move(h));
  }
  request.body = std::move(message.body());
  request.peer = std::move(peer);
  request.version = message.version() == 10 ? 10 : 11;
  return request;
}

}  // namespace

const std::string* HttpRequest::header(std::string_view name) const {
  for (const HttpHeader& h : headers) {
    if (h.name == name) return &h.value;
  }
  return nullptr;
}

bool IsLoopbackHost(std::string_view host) {
  if (host == "localhost" || host == "::1" || host == "[::1]") return true;
  boost::system::error_code ec;
  const net::ip::address address = net::ip::make_address(std::string(host), ec);
  return !ec && address.is_loopback();
}

absl::StatusOr<std::pair<std::string, uint16_t>> ParseHostPort(std::string_view address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(absl::StrCat("'", ToAbsl(address), "' is not host:port"));
  }
  std::string host(address.substr(0, colon));
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  uint32_t port = 0;
  if (!absl::SimpleAtoi(ToAbsl(address.substr(colon + 1)), &port) || port == 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", ToAbsl(address), "' has no valid port (1-65535)"));
  }
  return std::make_pair(host, static_cast<uint16_t>(port));
}

absl::StatusOr<HttpRequest> ParseHttpRequest(std::string_view bytes,
                                             const HttpServer::Options& options, size_t* consumed) {
  RequestParser parser;
  ConfigureParser(parser, options);
  parser.eager(true);
  boost::system::error_code ec;
  size_t used = 0;
  while (!parser.is_done()) {
    const size_t n = parser.put(net::const_buffer(bytes.data() + used, bytes.size() - used), ec);
    used += n;
    if (!ec && n == 0 && !parser.is_done()) ec = bhttp::error::need_more;  // never spin
    if (ec == bhttp::error::need_more) {
      if (n > 0 && used < bytes.size()) continue;
      // No more bytes will come: what the server sees when the client closes mid-request.
      ec = {};
      parser.put_eof(ec);
      if (!ec && !parser.is_done()) ec = bhttp::error::partial_message;
    }
    if (ec) break;
  }
  if (ec) {
    const int status = ParseErrorStatus(ec);
    const std::string what = absl::StrCat(
        ec.message(), " (the server ",
        status == 0 ? std::string("closes the connection") : absl::StrCat("answers ", status), ")");
    if (status == 0) return absl::UnavailableError(what);
    if (status == 400) return absl::InvalidArgumentError(what);
    return absl::ResourceExhaustedError(what);
  }
  if (consumed != nullptr) *consumed = used;
  return RequestFromMessage(parser.release(), "");
}

// State shared by the server object, its sessions and its threads.
struct HttpServer::Impl {
  Options options;
  HttpHandler handler;
  net::io_context io;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  tcp::acceptor acceptor{io};
  std::vector<std::thread> threads;

  absl::Mutex mu;
  bool stopped ABSL_GUARDED_BY(mu) = false;
  // Responders post onto session strands from other threads; after Stop() has drained the loop
  // nothing may be posted any more (it would never run, and would keep its session alive).
  absl::Mutex post_mu;
  bool posts_closed ABSL_GUARDED_BY(post_mu) = false;
  absl::flat_hash_map<HttpSession*, std::weak_ptr<HttpSession>> sessions ABSL_GUARDED_BY(mu);

  void Accept(std::shared_ptr<Impl> self);
};

class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(tcp::socket socket, std::shared_ptr<HttpServer::Impl> server, std::string peer)
      : socket_(std::move(socket)),
        server_(std::move(server)),
        options_(server_->options),
        peer_(std::move(peer)),
        read_timer_(socket_.get_executor()),
        write_timer_(socket_.get_executor()) {}

  ~HttpSession() {
    absl::MutexLock lock(&server_->mu);
    server_->sessions.erase(this);
  }

  void Start() {
    PostToStrand([self = shared_from_this()] { self->ReadHeader(); });
  }

  // Safe from any thread.
  void PostClose() {
    PostToStrand([self = shared_from_this()] { self->Close(); });
  }

  // The responder's operations, posted onto the strand.
  void PostSend(uint64_t sequence, HttpResponse response) {
    PostToStrand([self = shared_from_this(), sequence, r = std::move(response)]() mutable {
      self->DoSend(sequence, std::move(r));
    });
  }
  void PostStartStream(uint64_t sequence, int status, std::string content_type,
                       std::vector<HttpHeader> headers) {
    PostToStrand([self = shared_from_this(), sequence, status, ct = std::move(content_type),
                  h = std::move(headers)]() mutable {
      self->DoStartStream(sequence, status, std::move(ct), std::move(h));
    });
  }
  void PostWrite(uint64_t sequence, std::string data) {
    PostToStrand([self = shared_from_this(), sequence, d = std::move(data)]() mutable {
      self->DoWrite(sequence, std::move(d));
    });
  }
  void PostEnd(uint64_t sequence) {
    PostToStrand([self = shared_from_this(), sequence] { self->DoEnd(sequence); });
  }

 private:
  template <typename F>
  void PostToStrand(F&& fn) {
    absl::MutexLock lock(&server_->post_mu);
    if (server_->posts_closed) return;
    net::post(socket_.get_executor(), std::forward<F>(fn));
  }

  // Waiting for (or parsing) a request, or answering one.
  enum class Phase { kRequest, kAnswering, kLingering, kClosed };

  void ArmReadTimer(absl::Duration timeout) {
    const uint64_t generation = ++read_timer_generation_;
    read_timer_.expires_after(ToChrono(timeout));
    read_timer_.async_wait(
        [self = shared_from_this(), generation](const boost::system::error_code& ec) {
          if (ec || generation != self->read_timer_generation_) return;
          self->Close();
        });
  }
  void DisarmReadTimer() {
    ++read_timer_generation_;
    read_timer_.cancel();
  }

  void ReadHeader() {
    if (phase_ == Phase::kClosed) return;
    phase_ = Phase::kRequest;
    parser_.emplace();
    ConfigureParser(*parser_, options_);
    // The first request gets the read timeout; a kept-alive connection waits the idle timeout.
    ArmReadTimer(requests_ == 0 ? options_.read_timeout : options_.idle_timeout);
    reading_ = true;
    bhttp::async_read_header(socket_, buffer_, *parser_,
                             [self = shared_from_this()](const boost::system::error_code& ec,
                                                         size_t) { self->OnHeader(ec); });
  }

  void OnHeader(const boost::system::error_code& ec) {
    reading_ = false;
    if (phase_ == Phase::kClosed) return;
    if (ec) {
      OnReadError(ec);
      return;
    }
    ArmReadTimer(options_.read_timeout);
    const auto& header = parser_->get();
    auto expect = header.find(bhttp::field::expect);
    if (expect != header.end() && !parser_->is_done() &&
        absl::EqualsIgnoreCase(absl::string_view(expect->value().data(), expect->value().size()),
                               "100-continue")) {
      Queue(absl::StrCat(StatusLine(header.version() == 10 ? 10 : 11, 100), "\r\n"));
    }
    if (parser_->is_done()) {
      OnRequest();
      return;
    }
    reading_ = true;
    bhttp::async_read(socket_, buffer_, *parser_,
                      [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                        self->reading_ = false;
                        if (self->phase_ == Phase::kClosed) return;
                        if (ec) {
                          self->OnReadError(ec);
                          return;
                        }
                        self->OnRequest();
                      });
  }

  void OnReadError(const boost::system::error_code& ec) {
    DisarmReadTimer();
    switch (ParseErrorStatus(ec)) {
      case 413:
        SendErrorAndClose(413, "request body over the size limit", "invalid_request_error");
        return;
      case 431:
        SendErrorAndClose(431, "request header over the size limit", "invalid_request_error");
        return;
      case 0:
        Close();  // the peer closed, a timeout closed the socket, or a network error
        return;
      default:
        SendErrorAndClose(400, "malformed HTTP request", "invalid_request_error");
    }
  }

  void SendErrorAndClose(int status, std::string_view message, std::string_view type) {
    version_ = 11;
    head_ = false;
    keep_alive_ = false;
    phase_ = Phase::kAnswering;
    const std::string body = ErrorJson(message, type);
    Queue(absl::StrCat(StatusLine(11, status), "Content-Type: application/json\r\n",
                       "Content-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body));
    ResponseComplete();
  }

  void OnRequest() {
    DisarmReadTimer();
    bhttp::request<bhttp::string_body> message = parser_->release();
    parser_.reset();
    ++requests_;
    keep_alive_ = message.keep_alive();
    HttpRequest request = RequestFromMessage(std::move(message), peer_);
    version_ = request.version;
    head_ = request.method == "HEAD";
    phase_ = Phase::kAnswering;
    streaming_ = false;
    chunked_ = false;
    answered_ = false;
    ++sequence_;
    std::shared_ptr<HttpResponder> responder(new HttpResponder(weak_from_this(), sequence_, peer_));
    responder_ = responder;
    Watch();
    server_->handler(std::move(request), std::move(responder));
  }

  // While a request is answered, keeps one read outstanding: an error means the client is gone;
  // data is the next (pipelined) request and stays in buffer_. Once such data is buffered the
  // watch stops (a pending read could not be cancelled without cancelling the response's
  // writes), so a pipelining client's departure is noticed at the next write instead.
  void Watch() {
    if (reading_ || phase_ == Phase::kClosed || buffer_.size() > 0) return;
    reading_ = true;
    socket_.async_read_some(
        buffer_.prepare(4096),
        [self = shared_from_this()](const boost::system::error_code& ec, size_t n) {
          self->reading_ = false;
          if (self->phase_ == Phase::kClosed) return;
          if (ec) {
            // While lingering, the client's end of stream is expected; finish writing first.
            if (self->phase_ == Phase::kLingering && self->writing_) return;
            self->Close();  // the client went away (or reset the connection)
            return;
          }
          self->buffer_.commit(n);
          if (self->phase_ == Phase::kAnswering) {
            self->Watch();
          } else if (self->phase_ == Phase::kRequest) {
            self->ReadHeader();
          } else if (self->phase_ == Phase::kLingering) {
            self->buffer_.consume(self->buffer_.size());
            self->Watch();
          }
        });
  }

  void DoSend(uint64_t sequence, HttpResponse response) {
    if (sequence != sequence_ || phase_ != Phase::kAnswering || answered_) return;
    answered_ = true;
    std::string out = StatusLine(version_, response.status);
    absl::StrAppend(&out, "Content-Type: ", CleanHeaderValue(response.content_type), "\r\n");
    for (const HttpHeader& h : response.headers) {
      absl::StrAppend(&out, h.name, ": ", CleanHeaderValue(h.value), "\r\n");
    }
    absl::StrAppend(&out, "Content-Length: ", response.body.size(), "\r\n",
                    keep_alive_ ? "" : "Connection: close\r\n", "\r\n");
    if (!head_) out += response.body;  // HEAD: the header says how long the body would be
    Queue(std::move(out));
    ResponseComplete();
  }

  void DoStartStream(uint64_t sequence, int status, std::string content_type,
                     std::vector<HttpHeader> headers) {
    if (sequence != sequence_ || phase_ != Phase::kAnswering || answered_) return;
    answered_ = true;
    streaming_ = true;
    chunked_ = version_ == 11;
    if (!chunked_) keep_alive_ = false;
    std::string out = StatusLine(version_, status);
    absl::StrAppend(&out, "Content-Type: ", CleanHeaderValue(content_type), "\r\n");
    for (const HttpHeader& h : headers) {
      absl::StrAppend(&out, h.name, ": ", CleanHeaderValue(h.value), "\r\n");
    }
    absl::StrAppend(&out, chunked_ ? "Transfer-Encoding: chunked\r\n" : "",
                    keep_alive_ ? "" : "Connection: close\r\n", "\r\n");
    Queue(std::move(out));
  }

  void DoWrite(uint64_t sequence, std::string data) {
    if (sequence != sequence_ || phase_ != Phase::kAnswering || !streaming_ || data.empty()) {
      return;
    }
    if (chunked_) {
      Queue(absl::StrCat(absl::Hex(data.size()), "\r\n", data, "\r\n"));
    } else {
      Queue(std::move(data));
    }
  }

  void DoEnd(uint64_t sequence) {
    if (sequence != sequence_ || phase_ != Phase::kAnswering || !streaming_) return;
    if (chunked_) Queue("0\r\n\r\n");
    ResponseComplete();
  }

  // The whole response is queued: read the next request, or close once it is written.
  void ResponseComplete() {
    if (auto responder = responder_.lock()) responder->NotifyCompleted();
    responder_.reset();
    if (phase_ == Phase::kClosed) return;
    if (!keep_alive_) {
      close_after_write_ = true;
      phase_ = Phase::kLingering;
      if (!writing_) ShutdownAndLinger();
      return;
    }
    phase_ = Phase::kRequest;
    if (reading_) {
      ArmReadTimer(options_.idle_timeout);  // Watch() continues with ReadHeader
    } else {
      ReadHeader();
    }
  }

  void Queue(std::string bytes) {
    if (phase_ == Phase::kClosed) return;
    queued_bytes_ += bytes.size();
    if (queued_bytes_ > options_.max_queued_bytes) {
      KVASIR_LOG_SUBSYS(WARN, kTransport, "http: closing %s: client reads too slowly", peer_);
      Close();
      return;
    }
    write_queue_.push_back(std::move(bytes));
    if (!writing_) WriteNext();
  }

  void WriteNext() {
    if (phase_ == Phase::kClosed) return;
    if (write_queue_.empty()) {
      writing_ = false;
      ++write_timer_generation_;
      write_timer_.cancel();
      if (close_after_write_) ShutdownAndLinger();
      return;
    }
    writing_ = true;
    const uint64_t generation = ++write_timer_generation_;
    write_timer_.expires_after(ToChrono(options_.write_timeout));
    write_timer_.async_wait(
        [self = shared_from_this(), generation](const boost::system::error_code& ec) {
          if (ec || generation != self->write_timer_generation_) return;
          self->Close();
        });
    net::async_write(socket_, net::buffer(write_queue_.front()),
                     [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                       if (self->phase_ == Phase::kClosed) return;
                       if (ec) {
                         self->Close();
                         return;
                       }
                       self->queued_bytes_ -= self->write_queue_.front().size();
                       self->write_queue_.pop_front();
                       self->WriteNext();
                     });
  }

  // After the last response on a connection: half-close, then read and drop whatever the client
  // still sends (an unread request body would make the kernel reset the connection and the
  // client could lose the response), for up to a second.
  void ShutdownAndLinger() {
    if (phase_ == Phase::kClosed) return;
    phase_ = Phase::kLingering;
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    ArmReadTimer(absl::Seconds(1));
    buffer_.consume(buffer_.size());
    Watch();
  }

  void Close() {
    if (phase_ == Phase::kClosed) return;
    phase_ = Phase::kClosed;
    ++read_timer_generation_;
    ++write_timer_generation_;
    read_timer_.cancel();
    write_timer_.cancel();
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    write_queue_.clear();
    if (auto responder = responder_.lock()) responder->NotifyClosed();
    responder_.reset();
  }

  tcp::socket socket_;
  std::shared_ptr<HttpServer::Impl> server_;
  const HttpServer::Options& options_;  // lives in server_
  const std::string peer_;
  net::steady_timer read_timer_;
  net::steady_timer write_timer_;
  uint64_t read_timer_generation_ = 0;
  uint64_t write_timer_generation_ = 0;

  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  Phase phase_ = Phase::kRequest;
  bool reading_ = false;
  uint64_t requests_ = 0;

  // The request being answered.
  uint64_t sequence_ = 0;
  std::weak_ptr<HttpResponder> responder_;
  int version_ = 11;
  bool head_ = false;
  bool keep_alive_ = true;
  bool answered_ = false;
  bool streaming_ = false;
  bool chunked_ = false;

  std::deque<std::string> write_queue_;
  size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool close_after_write_ = false;
};

// ---- HttpResponder ----

HttpResponder::~HttpResponder() {
  if (!answered_.load() && !closed_.load()) {
    if (auto session = session_.lock()) {
      HttpResponse r;
      r.status = 500;
      r.body = ErrorJson("the handler sent no response", "server_error");
      session->PostSend(sequence_, std::move(r));
    }
  }
}

bool HttpResponder::Send(HttpResponse response) {
  if (closed_.load() || answered_.exchange(true)) return false;
  auto session = session_.lock();
  if (!session) return false;
  session->PostSend(sequence_, std::move(response));
  return true;
}

bool HttpResponder::StartStream(int status, std::string content_type,
                                std::vector<HttpHeader> headers) {
  if (closed_.load() || answered_.exchange(true)) return false;
  auto session = session_.lock();
  if (!session) return false;
  streaming_.store(true);
  session->PostStartStream(sequence_, status, std::move(content_type), std::move(headers));
  return true;
}

bool HttpResponder::Write(std::string data) {
  if (!streaming_.load() || ended_.load() || closed_.load()) return false;
  if (data.empty()) return true;
  auto session = session_.lock();
  if (!session) return false;
  session->PostWrite(sequence_, std::move(data));
  return true;
}

void HttpResponder::End() {
  if (!streaming_.load() || ended_.exchange(true) || closed_.load()) return;
  if (auto session = session_.lock()) session->PostEnd(sequence_);
}

void HttpResponder::OnClose(std::function<void()> fn) {
  {
    absl::MutexLock lock(&mu_);
    if (completed_) return;
    if (!closed_.load()) {
      on_close_ = std::move(fn);
      return;
    }
  }
  if (fn) fn();
}

void HttpResponder::NotifyClosed() {
  std::function<void()> fn;
  {
    absl::MutexLock lock(&mu_);
    if (completed_) return;
    closed_.store(true);
    fn = std::move(on_close_);
    on_close_ = nullptr;
  }
  if (fn) fn();
}

void HttpResponder::NotifyCompleted() {
  absl::MutexLock lock(&mu_);
  completed_ = true;
  on_close_ = nullptr;
}

// ---- HttpServer ----

void HttpServer::Impl::Accept(std::shared_ptr<Impl> self) {
  acceptor.async_accept(net::make_strand(io), [self](const boost::system::error_code& ec,
                                                     tcp::socket socket) {
    if (ec == net::error::operation_aborted || !self->acceptor.is_open()) return;
    if (!ec) {
      boost::system::error_code peer_ec;
      const tcp::endpoint remote = socket.remote_endpoint(peer_ec);
      std::string peer = peer_ec ? std::string("?")
                                 : absl::StrCat(remote.address().to_string(), ":", remote.port());
      std::shared_ptr<HttpSession> session;
      {
        absl::MutexLock lock(&self->mu);
        if (!self->stopped && self->sessions.size() < self->options.max_connections) {
          session = std::make_shared<HttpSession>(std::move(socket), self, std::move(peer));
          self->sessions[session.get()] = session;
        }
      }
      if (session) {
        session->Start();
      } else {
        boost::system::error_code ignored;
        socket.close(ignored);
      }
    } else {
      KVASIR_LOG_SUBSYS(WARN, kTransport, "http: accept failed: %s", ec.message());
    }
    self->Accept(self);
  });
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(Options options,
                                                              HttpHandler handler) {
  if (!handler) return absl::InvalidArgumentError("http server: no handler");
  if (options.threads < 1 || options.threads > 256) {
    return absl::InvalidArgumentError("http server: threads must be in [1, 256]");
  }
  if (options.max_header_bytes < 256 || options.max_body_bytes < 1) {
    return absl::InvalidArgumentError("http server: header limit >= 256 and body limit >= 1");
  }
  std::unique_ptr<HttpServer> server(new HttpServer(options));
  auto impl = std::make_shared<Impl>();
  impl->options = options;
  impl->handler = std::move(handler);

  boost::system::error_code ec;
  std::string host = options.host;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  net::ip::address address = net::ip::make_address(host, ec);
  if (ec) {
    tcp::resolver resolver(impl->io);
    auto results = resolver.resolve(host, std::to_string(options.port), ec);
    if (ec || results.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("http server: cannot resolve host '", options.host, "'"));
    }
    address = results.begin()->endpoint().address();
  }
  const tcp::endpoint endpoint(address, options.port);
  impl->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl->acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(endpoint, ec);
  if (!ec) impl->acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("http server: cannot listen on ", options.host, ":",
                                               options.port, ": ", ec.message()));
  }
  server->port_ = impl->acceptor.local_endpoint(ec).port();
  impl->work.emplace(impl->io.get_executor());
  impl->Accept(impl);
  for (int i = 0; i < options.threads; ++i) {
    impl->threads.emplace_back([io = &impl->io] { io->run(); });
  }
  server->impl_ = std::move(impl);
  return server;
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Stop() {
  if (!impl_) return;
  std::vector<std::shared_ptr<HttpSession>> sessions;
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->stopped) return;
    impl_->stopped = true;
    for (auto& [key, weak] : impl_->sessions) {
      if (auto s = weak.lock()) sessions.push_back(std::move(s));
    }
  }
  net::post(impl_->io, [impl = impl_] {
    boost::system::error_code ignored;
    impl->acceptor.close(ignored);
  });
  for (auto& s : sessions) s->PostClose();
  sessions.clear();
  // Let the closes run (they notify pending responders), then stop the loop.
  const absl::Time give_up = absl::Now() + absl::Seconds(2);
  while (absl::Now() < give_up) {
    {
      absl::MutexLock lock(&impl_->mu);
      if (impl_->sessions.empty()) break;
    }
    absl::SleepFor(absl::Milliseconds(2));
  }
  impl_->work.reset();
  impl_->io.stop();
  for (std::thread& t : impl_->threads) t.join();
  impl_->threads.clear();
  // Nothing can be posted from now on; run what is left so that every session is released.
  {
    absl::MutexLock lock(&impl_->post_mu);
    impl_->posts_closed = true;
  }
  impl_->io.restart();
  for (int i = 0; i < 100000 && impl_->io.poll() > 0; ++i) {
  }
}

}  // namespace kvasir::transport::http
