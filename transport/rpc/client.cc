// RPC client: connection state machine, call table, deadlines and cancellation (see client.h).
// Core's fields marked "I/O thread" are touched only there; CallState is shared with the calling
// thread under its mutex.
#include "transport/rpc/client.h"

#include <atomic>
#include <deque>
#include <random>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/steady_timer.hpp"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "transport/rpc/connection.h"

namespace kvasir::transport::rpc {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

// How long a caller waits past its deadline for the I/O thread's verdict before giving up on
// its own (only if the I/O thread is wedged, which is a bug).
constexpr absl::Duration kCallerGrace = absl::Seconds(2);

std::chrono::steady_clock::duration ToChrono(absl::Duration d) {
  return absl::ToChronoNanoseconds(std::max(d, absl::ZeroDuration()));
}

struct CallState {
  CallState(std::string_view m, std::string_view r, bool s, absl::Time d, bool w)
      : method(m), request(r), stream(s), deadline(d), wait_for_ready(w) {}

  const std::string method;
  const std::string request;
  const bool stream;
  const absl::Time deadline;
  const bool wait_for_ready;

  absl::Mutex mu;
  std::deque<std::string> items ABSL_GUARDED_BY(mu);      // stream messages not yet read
  std::optional<absl::Status> final ABSL_GUARDED_BY(mu);  // set once, when the call ends
  std::string response ABSL_GUARDED_BY(mu);

  // I/O thread.
  uint64_t call_id = 0;  // 0 until sent
  bool done = false;
  std::unique_ptr<asio::steady_timer> timer;
};

}  // namespace

struct RpcClient::Core : std::enable_shared_from_this<Core> {
  enum class State { kIdle, kConnecting, kReady, kBackoff, kStopped };

  explicit Core(Options o)
      : options(std::move(o)), backoff_timer(io), rng(std::random_device{}()) {}

  Options options;
  asio::io_context io{1};
  std::thread thread;

  // I/O thread.
  State state = State::kIdle;
  std::shared_ptr<Connection> conn;
  uint64_t conn_generation = 0;
  std::unique_ptr<tcp::resolver> resolver;
  std::unique_ptr<asio::steady_timer> attempt_timer;
  asio::steady_timer backoff_timer;
  absl::Duration backoff;
  std::mt19937_64 rng;
  std::deque<std::shared_ptr<CallState>> waiting;  // waiting for a connection

  // Shared with calling threads, which send unary calls themselves while the connection is ready.
  absl::Mutex calls_mu;
  uint64_t next_call_id ABSL_GUARDED_BY(calls_mu) = 1;
  // Sent, awaiting an answer.
  absl::flat_hash_map<uint64_t, std::shared_ptr<CallState>> active ABSL_GUARDED_BY(calls_mu);
  std::shared_ptr<Connection> ready_conn ABSL_GUARDED_BY(calls_mu);  // set while kReady
  absl::Status last_error = absl::UnavailableError("not connected yet");

  // Any thread.
  mutable absl::Mutex mu;
  bool connected ABSL_GUARDED_BY(mu) = false;
  bool stopped ABSL_GUARDED_BY(mu) = false;
  absl::Status refused ABSL_GUARDED_BY(mu);  // handshake refusal of the last attempt
  int64_t num_connects ABSL_GUARDED_BY(mu) = 0;
  HandshakeInfo peer ABSL_GUARDED_BY(mu);

  void SetConnected(bool up, const absl::Status& refusal) {
    absl::MutexLock lock(&mu);
    connected = up;
    refused = refusal;
    if (up) ++num_connects;
  }

  // ---- calls (I/O thread) ----

  // Ends the call with `status`. A call that the server has not answered yet (deadline,
  // cancellation) is also cancelled on the server.
  void Complete(const std::shared_ptr<CallState>& call, absl::Status status,
                bool answered = false) {
    if (call->done) return;
    call->done = true;
    if (call->timer) call->timer->cancel();
    if (call->call_id != 0) {
      {
        absl::MutexLock lock(&calls_mu);
        active.erase(call->call_id);
      }
      if (!answered && conn && !conn->closed() && state == State::kReady) {
        Frame cancel;
        cancel.set_kind(FRAME_KIND_CANCEL);
        cancel.set_call_id(call->call_id);
        (void)conn->Send(cancel);
      }
    }
    absl::MutexLock lock(&call->mu);
    call->final = std::move(status);
  }

  void Submit(const std::shared_ptr<CallState>& call) {
    if (call->done) return;  // cancelled before it was submitted
    if (state == State::kStopped) {
      Complete(call, absl::UnavailableError("rpc client stopped"));
      return;
    }
    const absl::Duration left = call->deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      Complete(call, absl::DeadlineExceededError(absl::StrCat(call->method, ": deadline passed")));
      return;
    }
    call->timer = std::make_unique<asio::steady_timer>(io);
    call->timer->expires_after(ToChrono(left));
    std::weak_ptr<CallState> weak = call;
    call->timer->async_wait([self = shared_from_this(), weak](const boost::system::error_code& ec) {
      auto c = weak.lock();
      if (ec || !c) return;
      self->waiting.erase(std::remove(self->waiting.begin(), self->waiting.end(), c),
                          self->waiting.end());
      self->Complete(c, absl::DeadlineExceededError(
                            absl::StrCat(c->method, ": no answer within the deadline")));
    });
    if (state == State::kReady) {
      Send(call);
      return;
    }
    {
      absl::MutexLock lock(&mu);
      if (!refused.ok()) {
        Complete(call, refused);
        return;
      }
    }
    if (!call->wait_for_ready) {
      Complete(call, Annotate(last_error, "not connected"));
      return;
    }
    waiting.push_back(call);
    if (state == State::kIdle) Connect();
  }

  // Gives the call its id and enters it among those awaiting an answer.
  uint64_t RegisterLocked(const std::shared_ptr<CallState>& call)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(calls_mu) {
    const uint64_t id = next_call_id++;
    call->call_id = id;
    active.emplace(id, call);
    return id;
  }

  void Send(const std::shared_ptr<CallState>& call) {
    uint64_t id;
    {
      absl::MutexLock lock(&calls_mu);
      id = RegisterLocked(call);
    }
    absl::Status sent = conn->Send(RequestFrame(*call, id));
    if (!sent.ok()) {
      {
        absl::MutexLock lock(&calls_mu);
        active.erase(id);
      }
      call->call_id = 0;
      Complete(call, Annotate(sent, absl::StrCat(call->method, ": request not sent")));
    }
  }

  static Frame RequestFrame(const CallState& call, uint64_t call_id) {
    Frame frame;
    frame.set_kind(FRAME_KIND_REQUEST);
    frame.set_call_id(call_id);
    frame.set_method(call.method);
    frame.set_payload(call.request);
    frame.set_server_stream(call.stream);
    const absl::Duration left = call.deadline - absl::Now();
    frame.set_timeout_us(
        static_cast<uint64_t>(std::max<int64_t>(1, absl::ToInt64Microseconds(left))));
    return frame;
  }

  // A unary call sent from the calling thread, without waking the I/O thread: false when the
  // connection is not ready (the call then goes through Submit). The call's deadline is kept by
  // the caller (see RpcClient::Call), not by a timer.
  bool SendDirect(const std::shared_ptr<CallState>& call) {
    std::shared_ptr<Connection> c;
    uint64_t id;
    {
      absl::MutexLock lock(&calls_mu);
      if (ready_conn == nullptr || call->deadline <= absl::Now()) return false;
      c = ready_conn;
      id = RegisterLocked(call);
    }
    // From here the call belongs to the I/O thread (an answer may arrive at once).
    absl::Status sent = c->Send(RequestFrame(*call, id));
    if (!sent.ok()) {
      // The connection closed under us: its close handler fails the call (if it ran after the
      // call was registered); otherwise this does.
      asio::post(io, [self = shared_from_this(), call, sent] {
        self->Complete(call, Annotate(sent, absl::StrCat(call->method, ": request not sent")));
      });
    }
    return true;
  }

  void SetReadyConnection(std::shared_ptr<Connection> c) {
    absl::MutexLock lock(&calls_mu);
    ready_conn = std::move(c);
  }

  void Cancel(const std::shared_ptr<CallState>& call, absl::Status status) {
    waiting.erase(std::remove(waiting.begin(), waiting.end(), call), waiting.end());
    Complete(call, std::move(status));
  }

  // ---- connection (I/O thread) ----

  void Connect() {
    state = State::kConnecting;
    const uint64_t generation = ++conn_generation;
    attempt_timer = std::make_unique<asio::steady_timer>(io);
    attempt_timer->expires_after(ToChrono(options.connect_timeout));
    attempt_timer->async_wait(
        [self = shared_from_this(), generation](const boost::system::error_code& ec) {
          if (ec || generation != self->conn_generation || self->state != State::kConnecting) {
            return;
          }
          self->AttemptFailed(absl::DeadlineExceededError("connect/handshake timed out"));
        });
    resolver = std::make_unique<tcp::resolver>(io);
    resolver->async_resolve(
        options.host, std::to_string(options.port),
        [self = shared_from_this(), generation](const boost::system::error_code& ec,
                                                tcp::resolver::results_type results) {
          if (generation != self->conn_generation || self->state != State::kConnecting) return;
          if (ec) {
            self->AttemptFailed(absl::UnavailableError(
                absl::StrCat("resolve ", self->options.host, ": ", ec.message())));
            return;
          }
          auto socket = std::make_shared<tcp::socket>(self->io);
          asio::async_connect(
              *socket, results,
              [self, generation, socket](const boost::system::error_code& ec,
                                         const tcp::endpoint&) {
                if (generation != self->conn_generation || self->state != State::kConnecting) {
                  return;
                }
                if (ec) {
                  self->AttemptFailed(
                      absl::UnavailableError(absl::StrCat("connect ", self->options.host, ":",
                                                          self->options.port, ": ", ec.message())));
                  return;
                }
                self->StartHandshake(std::move(*socket), generation);
              });
        });
  }

  void StartHandshake(tcp::socket socket, uint64_t generation) {
    conn = std::make_shared<Connection>(std::move(socket), options.max_frame_bytes,
                                        absl::StrCat(options.host, ":", options.port));
    std::weak_ptr<Core> weak = shared_from_this();
    conn->Start(
        [weak, generation](Frame frame) {
          auto self = weak.lock();
          if (self && generation == self->conn_generation) self->OnFrame(std::move(frame));
        },
        [weak, generation](const absl::Status& reason) {
          auto self = weak.lock();
          if (self && generation == self->conn_generation) self->OnClosed(reason);
        });
    Frame hello;
    hello.set_kind(FRAME_KIND_HELLO);
    *hello.mutable_hello() = ToHello(options.handshake);
    (void)conn->Send(hello);
  }

  void OnFrame(Frame frame) {
    if (state == State::kConnecting) {
      if (frame.kind() != FRAME_KIND_HELLO_ACK) {
        conn->Close(absl::InvalidArgumentError("expected HELLO_ACK"));
        return;
      }
      absl::Status status = FrameStatus(frame);
      if (status.ok()) status = CheckPeerHello(options.handshake, frame.hello());
      if (!status.ok()) {
        status =
            absl::FailedPreconditionError(absl::StrCat("handshake refused: ", status.message()));
        KVASIR_LOG_SUBSYS(WARN, kTransport, "rpc %s:%d %s", options.host, options.port,
                          status.message());
        AttemptFailed(status);
        return;
      }
      attempt_timer->cancel();
      state = State::kReady;
      backoff = absl::ZeroDuration();
      {
        absl::MutexLock lock(&mu);
        peer =
            HandshakeInfo{frame.hello().protocol_version(), frame.hello().prefix_hash_test_vector(),
                          frame.hello().role(), frame.hello().name()};
      }
      SetConnected(true, absl::OkStatus());
      SetReadyConnection(conn);
      auto pending = std::move(waiting);
      waiting.clear();
      for (auto& call : pending) {
        if (!call->done) Send(call);
      }
      return;
    }
    std::shared_ptr<CallState> call;
    {
      absl::MutexLock lock(&calls_mu);
      auto it = active.find(frame.call_id());
      if (it == active.end()) return;  // cancelled or timed out here already
      call = it->second;
    }
    switch (frame.kind()) {
      case FRAME_KIND_RESPONSE:
        if (call->stream) break;
        {
          absl::MutexLock lock(&call->mu);
          call->response = std::move(*frame.mutable_payload());
        }
        Complete(call, FrameStatus(frame), /*answered=*/true);
        return;
      case FRAME_KIND_STREAM_MESSAGE: {
        if (!call->stream) break;
        absl::MutexLock lock(&call->mu);
        call->items.push_back(std::move(*frame.mutable_payload()));
        return;
      }
      case FRAME_KIND_STREAM_END:
        if (!call->stream) break;
        Complete(call, FrameStatus(frame), /*answered=*/true);
        return;
      default:
        break;
    }
    conn->Close(absl::InvalidArgumentError(
        absl::StrCat("unexpected frame kind ", frame.kind(), " for call ", frame.call_id())));
  }

  void OnClosed(const absl::Status& reason) {
    if (state == State::kStopped) return;
    const absl::Status lost = absl::UnavailableError(
        absl::StrCat("connection lost: ", reason.ok() ? "closed" : reason.message()));
    for (auto& [id, call] : TakeActive()) {
      call->call_id = 0;  // nothing to cancel on a dead connection
      Complete(call, Annotate(lost, call->method));
    }
    if (state == State::kReady) backoff = absl::ZeroDuration();
    AttemptFailed(lost);
  }

  // Stops direct sends and takes the calls awaiting an answer. Every way out of kReady (a lost
  // connection, Stop) passes here.
  absl::flat_hash_map<uint64_t, std::shared_ptr<CallState>> TakeActive() {
    absl::MutexLock lock(&calls_mu);
    ready_conn = nullptr;
    auto calls = std::move(active);
    active.clear();
    return calls;
  }

  void AttemptFailed(const absl::Status& status) {
    if (state == State::kStopped) return;
    last_error = status;
    ++conn_generation;  // late callbacks of this attempt are ignored
    if (conn) conn->Close(absl::OkStatus());
    conn.reset();
    if (resolver) resolver->cancel();
    if (attempt_timer) attempt_timer->cancel();
    const bool refusal = absl::IsFailedPrecondition(status);
    SetConnected(false, refusal ? status : absl::OkStatus());
    if (refusal) {
      auto pending = std::move(waiting);
      waiting.clear();
      for (auto& call : pending) Complete(call, status);
    }
    ScheduleReconnect();
  }

  void ScheduleReconnect() {
    if (state == State::kStopped || state == State::kBackoff) return;
    state = State::kBackoff;
    backoff = backoff == absl::ZeroDuration()
                  ? options.backoff_initial
                  : std::min(options.backoff_max, backoff * options.backoff_multiplier);
    std::uniform_real_distribution<double> jitter(1.0 - options.backoff_jitter,
                                                  1.0 + options.backoff_jitter);
    const absl::Duration delay = backoff * jitter(rng);
    backoff_timer.expires_after(ToChrono(delay));
    backoff_timer.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec || self->state != State::kBackoff) return;
      self->Connect();
    });
  }

  void StopOnIoThread() {
    state = State::kStopped;
    ++conn_generation;
    backoff_timer.cancel();
    if (attempt_timer) attempt_timer->cancel();
    if (resolver) resolver->cancel();
    for (auto& [id, call] : TakeActive()) {
      call->call_id = 0;
      Complete(call, absl::UnavailableError("rpc client stopped"));
    }
    auto pending = std::move(waiting);
    waiting.clear();
    for (auto& call : pending) Complete(call, absl::UnavailableError("rpc client stopped"));
    if (conn) conn->Close(absl::OkStatus());
    conn.reset();
    SetConnected(false, absl::OkStatus());
  }
};

namespace {

bool HasFinal(CallState* call) ABSL_NO_THREAD_SAFETY_ANALYSIS { return call->final.has_value(); }

// Blocks until the call has ended (or, defensively, well past its deadline).
void AwaitFinal(CallState& call) ABSL_EXCLUSIVE_LOCKS_REQUIRED(call.mu) {
  call.mu.AwaitWithDeadline(absl::Condition(&HasFinal, &call), call.deadline + kCallerGrace);
}

class RpcClientStream final : public ClientStream {
 public:
  RpcClientStream(std::shared_ptr<CallState> call, std::weak_ptr<RpcClient::Core> core,
                  std::shared_ptr<CancelToken> token, uint64_t token_id);
  ~RpcClientStream() override;
  absl::StatusOr<std::optional<std::string>> Read() override;
  void Cancel() override;

 private:
  std::shared_ptr<CallState> call_;
  std::weak_ptr<RpcClient::Core> core_;
  std::shared_ptr<CancelToken> token_;
  uint64_t token_id_;
};

}  // namespace

RpcClient::RpcClient(std::shared_ptr<Core> core) : core_(std::move(core)) {}

absl::StatusOr<std::unique_ptr<RpcClient>> RpcClient::Create(Options options) {
  if (options.port == 0) return absl::InvalidArgumentError("rpc client: no port");
  if (options.backoff_initial <= absl::ZeroDuration() || options.backoff_multiplier < 1.0 ||
      options.backoff_jitter < 0 || options.backoff_jitter >= 1.0) {
    return absl::InvalidArgumentError("rpc client: bad backoff settings");
  }
  auto core = std::make_shared<Core>(std::move(options));
  core->thread = std::thread([core_ptr = core.get()] {
    auto guard = asio::make_work_guard(core_ptr->io);
    core_ptr->io.run();
  });
  asio::post(core->io, [core] { core->Connect(); });
  return std::unique_ptr<RpcClient>(new RpcClient(std::move(core)));
}

RpcClient::~RpcClient() { Stop(); }

void RpcClient::Stop() {
  {
    absl::MutexLock lock(&core_->mu);
    if (core_->stopped) return;
    core_->stopped = true;
  }
  asio::post(core_->io, [core = core_] {
    core->StopOnIoThread();
    core->io.stop();
  });
  core_->thread.join();
}

bool RpcClient::connected() const {
  absl::MutexLock lock(&core_->mu);
  return core_->connected;
}

int64_t RpcClient::num_connects() const {
  absl::MutexLock lock(&core_->mu);
  return core_->num_connects;
}

HandshakeInfo RpcClient::peer() const {
  absl::MutexLock lock(&core_->mu);
  return core_->peer;
}

absl::Status RpcClient::WaitConnected(absl::Duration timeout) {
  absl::MutexLock lock(&core_->mu);
  auto ready = [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return core_->connected || !core_->refused.ok() || core_->stopped;
  };
  if (!core_->mu.AwaitWithTimeout(absl::Condition(&ready), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat("not connected to ", core_->options.host, ":",
                                                    core_->options.port, " within ",
                                                    absl::FormatDuration(timeout)));
  }
  if (core_->connected) return absl::OkStatus();
  if (!core_->refused.ok()) return core_->refused;
  return absl::UnavailableError("rpc client stopped");
}

namespace {

// Creates the call and ties it to its cancel token; sending is the caller's next step.
std::shared_ptr<CallState> StartCall(const std::shared_ptr<RpcClient::Core>& core,
                                     std::string_view method, std::string_view request,
                                     const CallOptions& options, bool stream,
                                     const RpcClient::Options& client_options, uint64_t* token_id) {
  const absl::Duration timeout =
      options.timeout > absl::ZeroDuration() ? options.timeout : client_options.default_timeout;
  auto call = std::make_shared<CallState>(method, request, stream, absl::Now() + timeout,
                                          options.wait_for_ready);
  *token_id = 0;
  if (options.cancel) {
    std::weak_ptr<RpcClient::Core> weak_core = core;
    std::weak_ptr<CallState> weak_call = call;
    *token_id = options.cancel->Register([weak_core, weak_call] {
      auto c = weak_core.lock();
      if (!c) return;
      asio::post(c->io, [c, weak_call] {
        if (auto call = weak_call.lock()) c->Cancel(call, absl::CancelledError("call cancelled"));
      });
    });
  }
  return call;
}

// Sends the call through the I/O thread (it waits for a connection and keeps the deadline).
void SubmitOnIoThread(const std::shared_ptr<RpcClient::Core>& core,
                      const std::shared_ptr<CallState>& call) {
  asio::post(core->io, [core, call] { core->Submit(call); });
}

}  // namespace

absl::StatusOr<std::string> RpcClient::Call(std::string_view method, std::string_view request,
                                            const CallOptions& options) {
  uint64_t token_id = 0;
  std::shared_ptr<CallState> call =
      StartCall(core_, method, request, options, /*stream=*/false, core_->options, &token_id);
  // On a ready connection this thread sends the call and keeps its deadline. A call whose token
  // is cancelled already is ended by the Cancel that StartCall posted, never sent.
  const bool direct = !(options.cancel && options.cancel->cancelled()) && core_->SendDirect(call);
  if (!direct) SubmitOnIoThread(core_, call);
  absl::Status status;
  std::string response;
  {
    absl::MutexLock lock(&call->mu);
    if (direct &&
        !call->mu.AwaitWithDeadline(absl::Condition(&HasFinal, call.get()), call->deadline)) {
      // No answer within the deadline: the I/O thread ends the call (and cancels it on the
      // server); its verdict comes at once.
      call->mu.Unlock();
      asio::post(core_->io, [core = core_, call] {
        core->Cancel(call, absl::DeadlineExceededError(
                               absl::StrCat(call->method, ": no answer within the deadline")));
      });
      call->mu.Lock();
    }
    AwaitFinal(*call);
    if (!call->final.has_value()) {
      status = absl::DeadlineExceededError(absl::StrCat(call->method, ": no verdict"));
    } else {
      status = *call->final;
      response = std::move(call->response);
    }
  }
  if (options.cancel && token_id != 0) options.cancel->Unregister(token_id);
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<std::unique_ptr<ClientStream>> RpcClient::OpenStream(std::string_view method,
                                                                    std::string_view request,
                                                                    const CallOptions& options) {
  uint64_t token_id = 0;
  std::shared_ptr<CallState> call =
      StartCall(core_, method, request, options, /*stream=*/true, core_->options, &token_id);
  SubmitOnIoThread(core_, call);
  return std::unique_ptr<ClientStream>(
      new RpcClientStream(std::move(call), core_, options.cancel, token_id));
}

namespace {

RpcClientStream::RpcClientStream(std::shared_ptr<CallState> call,
                                 std::weak_ptr<RpcClient::Core> core,
                                 std::shared_ptr<CancelToken> token, uint64_t token_id)
    : call_(std::move(call)),
      core_(std::move(core)),
      token_(std::move(token)),
      token_id_(token_id) {}

RpcClientStream::~RpcClientStream() {
  Cancel();
  if (token_ && token_id_ != 0) token_->Unregister(token_id_);
}

absl::StatusOr<std::optional<std::string>> RpcClientStream::Read() {
  absl::MutexLock lock(&call_->mu);
  call_->mu.AwaitWithDeadline(absl::Condition(
                                  +[](CallState* c) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                    return !c->items.empty() || c->final.has_value();
                                  },
                                  call_.get()),
                              call_->deadline + kCallerGrace);
  if (!call_->items.empty()) {
    std::string item = std::move(call_->items.front());
    call_->items.pop_front();
    return std::optional<std::string>(std::move(item));
  }
  if (!call_->final.has_value()) {
    return absl::DeadlineExceededError(absl::StrCat(call_->method, ": no verdict"));
  }
  if (!call_->final->ok()) return *call_->final;
  return std::optional<std::string>();
}

void RpcClientStream::Cancel() {
  {
    absl::MutexLock lock(&call_->mu);
    if (call_->final.has_value()) return;
  }
  auto core = core_.lock();
  if (!core) return;
  asio::post(core->io, [core, call = call_] {
    core->Cancel(call, absl::CancelledError("stream cancelled"));
  });
}

}  // namespace

}  // namespace kvasir::transport::rpc
