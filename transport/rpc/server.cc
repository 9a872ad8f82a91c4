// RPC server: accept loop, handshake, dispatch and call bookkeeping (see server.h). Every member
// of Impl and ServerConnection is touched only on the I/O thread.
#include "transport/rpc/server.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/steady_timer.hpp"
#include "common/base/check.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "transport/rpc/connection.h"

namespace kvasir::transport::rpc {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

struct HandlerEntry {
  RpcServer::Handler handler;
  bool stream = false;
};
using HandlerMap = absl::flat_hash_map<std::string, HandlerEntry>;

std::chrono::steady_clock::duration ToChrono(absl::Duration d) {
  return absl::ToChronoNanoseconds(d);
}

}  // namespace

// Server-side state of one accepted connection.
class ServerConnection : public std::enable_shared_from_this<ServerConnection> {
 public:
  ServerConnection(std::shared_ptr<asio::io_context> io, std::shared_ptr<Connection> conn,
                   std::shared_ptr<const HandlerMap> handlers, const RpcServer::Options& options)
      : io_(std::move(io)),
        conn_(std::move(conn)),
        handlers_(std::move(handlers)),
        handshake_(options.handshake),
        handshake_timer_(*io_) {
    handshake_timer_.expires_after(ToChrono(options.handshake_timeout));
  }

  void Start(std::function<void()> on_closed) {
    on_closed_ = std::move(on_closed);
    std::weak_ptr<ServerConnection> weak = shared_from_this();
    handshake_timer_.async_wait([weak](const boost::system::error_code& ec) {
      auto self = weak.lock();
      if (ec || !self || self->handshaken_) return;
      self->conn_->Close(absl::DeadlineExceededError("no handshake within the timeout"));
    });
    conn_->Start(
        [weak](Frame frame) {
          if (auto self = weak.lock()) self->OnFrame(std::move(frame));
        },
        [weak](const absl::Status& reason) {
          if (auto self = weak.lock()) self->OnClosed(reason);
        });
  }

  void Close(const absl::Status& reason) { conn_->Close(reason); }

  // Sends a call's frame if the call is still registered; drops it from the table on `last`.
  void SendForCall(uint64_t call_id, Frame frame, bool last) {
    auto it = calls_.find(call_id);
    if (it == calls_.end() || conn_->closed()) return;
    absl::Status sent = conn_->Send(frame);
    if (!sent.ok() && absl::IsResourceExhausted(sent)) {
      // The response is over the frame limit: tell the client instead of going silent.
      Frame error;
      error.set_kind(frame.kind() == FRAME_KIND_STREAM_MESSAGE ? FRAME_KIND_STREAM_END
                                                               : frame.kind());
      error.set_call_id(call_id);
      SetFrameStatus(sent, &error);
      (void)conn_->Send(error);
      last = true;
    }
    if (last) calls_.erase(call_id);
  }

 private:
  void OnFrame(Frame frame) {
    if (!handshaken_) {
      OnHello(frame);
      return;
    }
    switch (frame.kind()) {
      case FRAME_KIND_REQUEST:
        OnRequest(std::move(frame));
        return;
      case FRAME_KIND_CANCEL: {
        auto it = calls_.find(frame.call_id());
        if (it == calls_.end()) return;  // already finished: the cancel crossed the response
        std::shared_ptr<ServerCall> call = std::move(it->second.call);
        calls_.erase(it);
        call->CancelOnIoThread();
        return;
      }
      default:
        conn_->Close(absl::InvalidArgumentError(
            absl::StrCat("unexpected frame kind ", frame.kind(), " from a client")));
    }
  }

  void OnHello(const Frame& frame) {
    if (frame.kind() != FRAME_KIND_HELLO) {
      conn_->Close(absl::InvalidArgumentError(
          absl::StrCat("expected HELLO as the first frame, got kind ", frame.kind())));
      return;
    }
    handshake_timer_.cancel();
    Frame ack;
    ack.set_kind(FRAME_KIND_HELLO_ACK);
    *ack.mutable_hello() = ToHello(handshake_);
    absl::Status check = CheckPeerHello(handshake_, frame.hello());
    if (!check.ok()) {
      SetFrameStatus(check, &ack);
      (void)conn_->Send(ack);
      conn_->CloseAfterFlush(Annotate(check, "handshake refused"));
      return;
    }
    handshaken_ = true;
    (void)conn_->Send(ack);
  }

  void OnRequest(Frame frame) {
    const uint64_t call_id = frame.call_id();
    if (calls_.contains(call_id)) {
      conn_->Close(absl::InvalidArgumentError(absl::StrCat("call id ", call_id, " reused")));
      return;
    }
    auto found = handlers_->find(frame.method());
    absl::Status error;
    if (found == handlers_->end()) {
      error = absl::UnimplementedError(absl::StrCat("no method ", frame.method()));
    } else if (found->second.stream != frame.server_stream()) {
      error = absl::InvalidArgumentError(absl::StrCat(
          frame.method(), found->second.stream ? " is a server stream" : " is a unary method"));
    }
    if (!error.ok()) {
      Frame reply;
      reply.set_kind(frame.server_stream() ? FRAME_KIND_STREAM_END : FRAME_KIND_RESPONSE);
      reply.set_call_id(call_id);
      SetFrameStatus(error, &reply);
      (void)conn_->Send(reply);
      return;
    }
    const absl::Time deadline = frame.timeout_us() > 0
                                    ? absl::Now() + absl::Microseconds(frame.timeout_us())
                                    : absl::InfiniteFuture();
    auto call = std::make_shared<ServerCall>(
        io_, weak_from_this(), call_id, std::move(*frame.mutable_method()),
        std::move(*frame.mutable_payload()), frame.server_stream(), deadline);
    CallEntry& entry = calls_[call_id];
    entry.call = call;
    if (deadline != absl::InfiniteFuture()) {
      entry.timer = std::make_unique<asio::steady_timer>(*io_);
      entry.timer->expires_after(ToChrono(deadline - absl::Now()));
      std::weak_ptr<ServerConnection> weak = weak_from_this();
      entry.timer->async_wait([weak, call_id](const boost::system::error_code& ec) {
        auto self = weak.lock();
        if (ec || !self) return;
        auto it = self->calls_.find(call_id);
        if (it == self->calls_.end()) return;
        std::shared_ptr<ServerCall> expired = std::move(it->second.call);
        self->calls_.erase(it);
        expired->CancelOnIoThread();
      });
    }
    found->second.handler(call);
  }

  void OnClosed(const absl::Status&) {
    handshake_timer_.cancel();
    auto calls = std::move(calls_);
    calls_.clear();
    for (auto& [id, entry] : calls) entry.call->CancelOnIoThread();
    if (on_closed_) {
      auto fn = std::move(on_closed_);
      on_closed_ = nullptr;
      fn();
    }
  }

  std::shared_ptr<asio::io_context> io_;
  std::shared_ptr<Connection> conn_;
  std::shared_ptr<const HandlerMap> handlers_;
  HandshakeInfo handshake_;
  asio::steady_timer handshake_timer_;
  bool handshaken_ = false;
  struct CallEntry {
    std::shared_ptr<ServerCall> call;
    std::unique_ptr<asio::steady_timer> timer;  // the call's deadline, if it has one
  };
  absl::flat_hash_map<uint64_t, CallEntry> calls_;
  std::function<void()> on_closed_;
};

ServerCall::ServerCall(std::shared_ptr<asio::io_context> io, std::weak_ptr<ServerConnection> conn,
                       uint64_t call_id, std::string method, std::string request, bool stream,
                       absl::Time deadline)
    : io_(std::move(io)),
      conn_(std::move(conn)),
      call_id_(call_id),
      method_(std::move(method)),
      request_(std::move(request)),
      stream_(stream),
      deadline_(deadline) {}

bool ServerCall::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

void ServerCall::OnCancel(std::function<void()> fn) {
  {
    absl::MutexLock lock(&mu_);
    if (!cancelled_) {
      on_cancel_ = std::move(fn);
      return;
    }
  }
  fn();
}

void ServerCall::CancelOnIoThread() {
  std::function<void()> fn;
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_) return;
    cancelled_ = true;
    fn = std::move(on_cancel_);
    on_cancel_ = nullptr;
  }
  finished_.store(true);
  if (fn) fn();
}

void ServerCall::Finish(absl::StatusOr<std::string> result) {
  if (finished_.exchange(true)) return;
  {
    absl::MutexLock lock(&mu_);
    on_cancel_ = nullptr;
  }
  Frame frame;
  frame.set_kind(stream_ ? FRAME_KIND_STREAM_END : FRAME_KIND_RESPONSE);
  frame.set_call_id(call_id_);
  if (result.ok()) {
    if (!stream_) frame.set_payload(*std::move(result));
  } else {
    SetFrameStatus(result.status(), &frame);
  }
  asio::post(*io_, [conn = conn_, id = call_id_, frame = std::move(frame)]() mutable {
    if (auto c = conn.lock()) c->SendForCall(id, std::move(frame), /*last=*/true);
  });
}

bool ServerCall::Write(std::string message) {
  if (!stream_ || finished_.load()) return false;
  Frame frame;
  frame.set_kind(FRAME_KIND_STREAM_MESSAGE);
  frame.set_call_id(call_id_);
  frame.set_payload(std::move(message));
  asio::post(*io_, [conn = conn_, id = call_id_, frame = std::move(frame)]() mutable {
    if (auto c = conn.lock()) c->SendForCall(id, std::move(frame), /*last=*/false);
  });
  return true;
}

struct RpcServer::Impl {
  std::shared_ptr<asio::io_context> io = std::make_shared<asio::io_context>(1);
  tcp::acceptor acceptor{*io};
  HandlerMap handlers;
  std::shared_ptr<const HandlerMap> frozen_handlers;
  absl::flat_hash_map<ServerConnection*, std::shared_ptr<ServerConnection>> connections;
  std::thread thread;
  bool started = false;
  bool stopped = false;
  absl::Mutex stop_mu;

  void Accept(const Options& options) {
    acceptor.async_accept([this, &options](const boost::system::error_code& ec,
                                           tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
      if (!ec) {
        boost::system::error_code peer_ec;
        tcp::endpoint peer = socket.remote_endpoint(peer_ec);
        std::string name =
            peer_ec ? "?" : absl::StrCat(peer.address().to_string(), ":", peer.port());
        auto conn = std::make_shared<Connection>(std::move(socket), options.max_frame_bytes,
                                                 std::move(name));
        auto server_conn = std::make_shared<ServerConnection>(io, conn, frozen_handlers, options);
        ServerConnection* key = server_conn.get();
        connections.emplace(key, server_conn);
        server_conn->Start([this, key] {
          // Deferred: the connection is inside its own close path here.
          asio::post(*io, [this, key] { connections.erase(key); });
        });
      } else {
        KVASIR_LOG_SUBSYS(WARN, kTransport, "rpc accept: %s", ec.message());
      }
      Accept(options);
    });
  }
};

RpcServer::RpcServer(Options options) : options_(std::move(options)), impl_(new Impl) {}

absl::StatusOr<std::unique_ptr<RpcServer>> RpcServer::Create(Options options) {
  std::unique_ptr<RpcServer> server(new RpcServer(std::move(options)));
  boost::system::error_code ec;
  asio::ip::address address = asio::ip::make_address(server->options_.host, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("rpc server: bad address '", server->options_.host, "': ", ec.message()));
  }
  tcp::endpoint endpoint(address, server->options_.port);
  tcp::acceptor& acceptor = server->impl_->acceptor;
  if (acceptor.open(endpoint.protocol(), ec); ec) {
    return absl::UnavailableError(absl::StrCat("rpc server: open: ", ec.message()));
  }
  acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (acceptor.bind(endpoint, ec); ec) {
    return absl::UnavailableError(absl::StrCat("rpc server: bind ", server->options_.host, ":",
                                               server->options_.port, ": ", ec.message()));
  }
  if (acceptor.listen(asio::socket_base::max_listen_connections, ec); ec) {
    return absl::UnavailableError(absl::StrCat("rpc server: listen: ", ec.message()));
  }
  server->port_ = acceptor.local_endpoint(ec).port();
  return server;
}

RpcServer::~RpcServer() { Stop(); }

void RpcServer::RegisterUnary(std::string method, Handler handler) {
  KVASIR_CHECK_MSG(!impl_->started, "register handlers before Start()");
  impl_->handlers[std::move(method)] = HandlerEntry{std::move(handler), false};
}

void RpcServer::RegisterStream(std::string method, Handler handler) {
  KVASIR_CHECK_MSG(!impl_->started, "register handlers before Start()");
  impl_->handlers[std::move(method)] = HandlerEntry{std::move(handler), true};
}

absl::Status RpcServer::Start() {
  absl::MutexLock lock(&impl_->stop_mu);
  if (impl_->started || impl_->stopped) {
    return absl::FailedPreconditionError("rpc server already started or stopped");
  }
  impl_->started = true;
  impl_->frozen_handlers = std::make_shared<const HandlerMap>(impl_->handlers);
  impl_->Accept(options_);
  impl_->thread = std::thread([io = impl_->io] {
    auto guard = asio::make_work_guard(*io);
    io->run();
  });
  return absl::OkStatus();
}

void RpcServer::Stop() {
  absl::MutexLock lock(&impl_->stop_mu);
  if (impl_->stopped) return;
  impl_->stopped = true;
  if (!impl_->started) {
    boost::system::error_code ec;
    impl_->acceptor.close(ec);
    return;
  }
  Impl* impl = impl_.get();
  asio::post(*impl->io, [impl] {
    boost::system::error_code ec;
    impl->acceptor.close(ec);
    std::vector<std::shared_ptr<ServerConnection>> conns;
    for (auto& [key, conn] : impl->connections) conns.push_back(conn);
    for (auto& conn : conns) conn->Close(absl::UnavailableError("server stopping"));
    impl->connections.clear();
    impl->io->stop();
  });
  impl->thread.join();
}

}  // namespace kvasir::transport::rpc
