// UcxTransport (see ucx_transport.h). Everything in Impl below "I/O thread state" is touched only
// on the I/O thread; callers reach it through RunOnIo (post + wait).
#include "transport/ucx/ucx_transport.h"

#include <cstring>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "boost/asio/executor_work_guard.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/posix/stream_descriptor.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/steady_timer.hpp"
#include "common/hash.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "transport/ucx/handles.h"
#include "transport/ucx/ucs_status.h"

namespace kvasir::transport::ucx {

namespace asio = boost::asio;

namespace {

constexpr char kAddressMagic[4] = {'K', 'V', 'U', 'A'};
constexpr char kKeyMagic[4] = {'K', 'V', 'R', 'K'};
constexpr size_t kEnvelopeHeader = 4 + 8;
// How long a caller waits past its timeout for the I/O thread's verdict (which the I/O thread
// guarantees by force-closing the endpoint); only a wedged UCX would exhaust it.
constexpr absl::Duration kCallerGrace = absl::Seconds(5);

std::string Seal(const char (&magic)[4], std::string_view body) {
  std::string out(magic, 4);
  const uint64_t h = Xxh3(body);
  out.append(reinterpret_cast<const char*>(&h), sizeof h);
  out.append(body.data(), body.size());
  return out;
}

absl::StatusOr<std::string_view> Open(const char (&magic)[4], std::string_view sealed,
                                      std::string_view what) {
  if (sealed.size() <= kEnvelopeHeader || std::memcmp(sealed.data(), magic, 4) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("not a UCX ", ToAbsl(what)));
  }
  uint64_t h = 0;
  std::memcpy(&h, sealed.data() + 4, sizeof h);
  std::string_view body = sealed.substr(kEnvelopeHeader);
  if (Xxh3(body) != h) {
    return absl::InvalidArgumentError(absl::StrCat("corrupt UCX ", ToAbsl(what)));
  }
  return body;
}

std::chrono::steady_clock::duration ToChrono(absl::Duration d) {
  return absl::ToChronoNanoseconds(std::max(d, absl::ZeroDuration()));
}

// One blocking operation (put/get batch, message send) shared by the caller and the I/O thread.
struct Op {
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  absl::Status status ABSL_GUARDED_BY(mu);

  // I/O thread.
  PeerId peer = 0;
  absl::Status first_error;  // e.g. DeadlineExceeded, reported even if UCX says "canceled"
  std::unique_ptr<asio::steady_timer> timer;
  std::string header, payload;  // message copies, alive until the send completes

  void Finish(absl::Status s) {
    if (timer) timer->cancel();
    absl::MutexLock lock(&mu);
    if (done) return;
    done = true;
    status = first_error.ok() ? std::move(s) : first_error;
  }
};

struct RndvReceive {
  uint16_t id;
  std::string header;
  std::string payload;
};

}  // namespace

struct UcxTransport::Impl {
  struct Peer {
    std::unique_ptr<UcxEndpoint> ep;  // declared first: destroyed after its remote keys
    absl::flat_hash_map<std::string, std::unique_ptr<UcxRemoteKey>> rkeys;  // by packed key
    absl::Status failed;  // set when the peer failed or was closed after a timeout
  };
  struct HandlerSlot {
    Impl* impl;
    uint16_t id;
    MessageHandler handler;
  };
  struct DeferredRndv {
    HandlerSlot* slot;
    std::string header;
    void* desc;
    size_t length;
  };

  // Members in the order they must be built; the I/O thread tears the UCX ones down in Stop.
  asio::io_context io{1};
  std::thread thread;
  std::unique_ptr<UcxContext> context;
  std::unique_ptr<UcxWorker> worker;
  std::string sealed_address;
  std::string tls;
  PeerErrorHandling peer_errors = PeerErrorHandling::kAuto;
  bool busy_poll = false;

  absl::Mutex stop_mu;
  bool stopped ABSL_GUARDED_BY(stop_mu) = false;

  // I/O thread state.
  std::unique_ptr<asio::posix::stream_descriptor> efd;
  bool fd_wait_pending = false;
  bool poll_scheduled = false;
  bool stopping = false;
  PeerId next_peer = 1;
  RegionId next_region = 1;
  absl::flat_hash_map<PeerId, Peer> peers;
  absl::flat_hash_map<RegionId, std::unique_ptr<UcxMemory>> regions;
  absl::flat_hash_map<uint16_t, std::unique_ptr<HandlerSlot>> handlers;
  absl::flat_hash_map<Op*, std::shared_ptr<Op>> inflight;  // ops with a UCX request pending
  absl::flat_hash_map<RndvReceive*, std::unique_ptr<RndvReceive>> rndv_inflight;
  std::vector<DeferredRndv> deferred;

  // Runs fn on the I/O thread and returns its result (a Status or StatusOr).
  template <typename F>
  auto RunOnIo(F&& fn) -> decltype(fn()) {
    using R = decltype(fn());
    std::optional<R> result;
    absl::Notification done;
    if (!Post([&] {
          result.emplace(fn());
          done.Notify();
        })) {
      return R(absl::FailedPreconditionError("ucx transport stopped"));
    }
    done.WaitForNotification();
    return *std::move(result);
  }

  // Posts fn to the I/O thread unless the transport is stopped. Posting under stop_mu orders it
  // before Stop's teardown.
  template <typename F>
  bool Post(F&& fn) {
    absl::MutexLock lock(&stop_mu);
    if (stopped) return false;
    asio::post(io, std::forward<F>(fn));
    return true;
  }

  // ---- progress ----

  void SchedulePoll() {
    if (poll_scheduled || stopping) return;
    poll_scheduled = true;
    asio::post(io, [this] { Poll(); });
  }

  void Poll() {
    poll_scheduled = false;
    if (stopping) return;
    while (worker->Progress() > 0) {
    }
    ProcessDeferred();
    if (busy_poll || !inflight.empty() || !rndv_inflight.empty() || !deferred.empty()) {
      SchedulePoll();  // busy-poll while work is outstanding; other handlers run in between
      return;
    }
    absl::StatusOr<bool> armed = worker->Arm();
    if (!armed.ok()) {
      KVASIR_LOG_SUBSYS(WARN, kTransport, "ucx: %s", armed.status().ToString());
      SchedulePoll();
      return;
    }
    if (!*armed) {
      SchedulePoll();
      return;
    }
    if (!fd_wait_pending) {
      fd_wait_pending = true;
      efd->async_wait(asio::posix::stream_descriptor::wait_read,
                      [this](const boost::system::error_code& ec) {
                        fd_wait_pending = false;
                        if (ec || stopping) return;
                        Poll();
                      });
    }
  }

  // ---- peers ----

  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
    auto* impl = static_cast<Impl*>(arg);
    for (auto& [id, peer] : impl->peers) {
      if (peer.ep && peer.ep->get() == ep) {
        peer.failed = UcsStatus(status, absl::StrCat("ucx peer ", id, " failed"));
        KVASIR_LOG_SUBSYS(INFO, kTransport, "%s", peer.failed.ToString());
        const PeerId failed_id = id;
        // Close outside of UCX's callback.
        asio::post(impl->io, [impl, failed_id] { impl->ClosePeer(failed_id, /*force=*/true); });
        return;
      }
    }
  }

  void ClosePeer(PeerId id, bool force) {
    auto it = peers.find(id);
    if (it == peers.end() || !it->second.ep) return;
    it->second.ep->Close(force);  // completes outstanding requests (canceled when forced)
    it->second.rkeys.clear();
    it->second.ep.reset();
    if (it->second.failed.ok()) it->second.failed = absl::UnavailableError("ucx peer disconnected");
  }

  absl::StatusOr<Peer*> LivePeer(PeerId id) {
    auto it = peers.find(id);
    if (it == peers.end()) return absl::NotFoundError(absl::StrCat("no ucx peer ", id));
    if (!it->second.failed.ok()) {
      return absl::UnavailableError(
          absl::StrCat("ucx peer ", id, ": ", it->second.failed.message()));
    }
    return &it->second;
  }

  absl::StatusOr<ucp_rkey_h> RemoteKey(Peer& peer, const RemoteRegion& remote) {
    auto found = peer.rkeys.find(remote.key);
    if (found != peer.rkeys.end()) return found->second->get();
    KVASIR_ASSIGN_OR_RETURN(std::string_view packed, Open(kKeyMagic, remote.key, "remote key"));
    KVASIR_ASSIGN_OR_RETURN(auto rkey, UcxRemoteKey::Unpack(*peer.ep, packed));
    ucp_rkey_h handle = rkey->get();
    peer.rkeys.emplace(remote.key, std::move(rkey));
    return handle;
  }

  ucp_mem_h FindMemh(const std::byte* p, size_t size) const {
    for (const auto& [id, mem] : regions) {
      const std::span<std::byte> m = mem->memory();
      if (p >= m.data() && p + size <= m.data() + m.size()) return mem->get();
    }
    return nullptr;
  }

  // ---- operations ----

  static void OnRequestDone(void* request, ucs_status_t status, void* user_data) {
    auto* op = static_cast<Op*>(user_data);
    // The Impl is reachable through the op's registration; find it via the global-free path:
    // the callback runs inside Progress on the I/O thread, so `current` is set.
    Impl* impl = current_;
    auto it = impl->inflight.find(op);
    if (it != impl->inflight.end()) {
      std::shared_ptr<Op> keep = std::move(it->second);
      impl->inflight.erase(it);
      keep->Finish(UcsStatus(status, "ucx operation"));
    }
    ucp_request_free(request);
  }

  // Tracks a UCX request returned for `op`, or finishes the op when there is none.
  void Track(const std::shared_ptr<Op>& op, ucs_status_ptr_t request, std::string_view what) {
    if (request == nullptr) {
      op->Finish(absl::OkStatus());
    } else if (UCS_PTR_IS_ERR(request)) {
      op->Finish(UcsStatus(UCS_PTR_STATUS(request), what));
    } else {
      inflight.emplace(op.get(), op);
      SchedulePoll();
    }
  }

  void StartTimer(const std::shared_ptr<Op>& op, absl::Duration timeout) {
    op->timer = std::make_unique<asio::steady_timer>(io);
    op->timer->expires_after(ToChrono(timeout));
    std::weak_ptr<Op> weak = op;
    op->timer->async_wait([this, weak, timeout](const boost::system::error_code& ec) {
      auto o = weak.lock();
      if (ec || !o || !inflight.contains(o.get())) return;
      o->first_error = absl::DeadlineExceededError(
          absl::StrCat("ucx peer ", o->peer, " did not complete within ",
                       absl::FormatDuration(timeout), "; connection closed"));
      auto it = peers.find(o->peer);
      if (it != peers.end()) it->second.failed = o->first_error;
      current_ = this;
      ClosePeer(o->peer, /*force=*/true);  // cancels the request: OnRequestDone finishes the op
      if (inflight.contains(o.get())) {    // UCX kept it: give up on it
        inflight.erase(o.get());
        o->Finish(o->first_error);
      }
    });
  }

  // I/O thread: issues the ops and a flush whose completion ends the op.
  void StartRma(const std::shared_ptr<Op>& op, bool put, const RemoteRegion& remote,
                std::span<const RmaOp> ops, absl::Duration timeout) {
    absl::StatusOr<Peer*> peer = LivePeer(op->peer);
    if (!peer.ok()) return op->Finish(peer.status());
    absl::StatusOr<ucp_rkey_h> rkey = RemoteKey(**peer, remote);
    if (!rkey.ok()) return op->Finish(rkey.status());
    ucp_ep_h ep = (*peer)->ep->get();
    current_ = this;
    for (const RmaOp& r : ops) {
      if (r.local.empty()) continue;
      ucp_request_param_t param{};
      if (ucp_mem_h memh = FindMemh(r.local.data(), r.local.size())) {
        param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        param.memh = memh;
      }
      const uint64_t raddr = remote.address + r.remote_offset;
      ucs_status_ptr_t request =
          put ? ucp_put_nbx(ep, r.local.data(), r.local.size(), raddr, *rkey, &param)
              : ucp_get_nbx(ep, r.local.data(), r.local.size(), raddr, *rkey, &param);
      if (UCS_PTR_IS_ERR(request)) {
        return op->Finish(UcsStatus(UCS_PTR_STATUS(request), put ? "ucp_put_nbx" : "ucp_get_nbx"));
      }
      if (request != nullptr) ucp_request_free(request);  // the flush below covers completion
    }
    ucp_request_param_t flush{};
    flush.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    flush.cb.send = &OnRequestDone;
    flush.user_data = op.get();
    StartTimer(op, timeout);
    Track(op, ucp_ep_flush_nbx(ep, &flush), "ucp_ep_flush_nbx");
  }

  void StartSend(const std::shared_ptr<Op>& op, uint16_t id, absl::Duration timeout) {
    absl::StatusOr<Peer*> peer = LivePeer(op->peer);
    if (!peer.ok()) return op->Finish(peer.status());
    current_ = this;
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = &OnRequestDone;
    param.user_data = op.get();
    StartTimer(op, timeout);
    Track(op,
          ucp_am_send_nbx((*peer)->ep->get(), id, op->header.data(), op->header.size(),
                          op->payload.data(), op->payload.size(), &param),
          "ucp_am_send_nbx");
  }

  // ---- active messages ----

  static ucs_status_t OnAm(void* arg, const void* header, size_t header_length, void* data,
                           size_t length, const ucp_am_recv_param_t* param) {
    auto* slot = static_cast<HandlerSlot*>(arg);
    std::string head(static_cast<const char*>(header), header_length);
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
      // Receive the payload after progress returns (not from inside UCX's callback).
      slot->impl->deferred.push_back(DeferredRndv{slot, std::move(head), data, length});
      return UCS_INPROGRESS;
    }
    std::string payload(static_cast<const char*>(data), length);
    if (slot->handler) slot->handler(head, std::move(payload));
    return UCS_OK;
  }

  static void OnRndvDone(void* request, ucs_status_t status, size_t, void* user_data) {
    Impl* impl = current_;
    auto* recv = static_cast<RndvReceive*>(user_data);
    auto it = impl->rndv_inflight.find(recv);
    if (it != impl->rndv_inflight.end()) {
      std::unique_ptr<RndvReceive> owned = std::move(it->second);
      impl->rndv_inflight.erase(it);
      impl->Deliver(*owned, status);
    }
    if (request != nullptr) ucp_request_free(request);
  }

  void Deliver(RndvReceive& recv, ucs_status_t status) {
    if (status != UCS_OK) {
      KVASIR_LOG_SUBSYS(WARN, kTransport, "ucx message %d lost: %s", recv.id,
                        ucs_status_string(status));
      return;
    }
    auto it = handlers.find(recv.id);
    if (it != handlers.end() && it->second->handler) {
      it->second->handler(recv.header, std::move(recv.payload));
    }
  }

  void ProcessDeferred() {
    current_ = this;
    while (!deferred.empty()) {
      DeferredRndv d = std::move(deferred.back());
      deferred.pop_back();
      auto recv = std::make_unique<RndvReceive>(RndvReceive{d.slot->id, std::move(d.header), {}});
      recv->payload.resize(d.length);
      ucp_request_param_t param{};
      param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      param.cb.recv_am = &OnRndvDone;
      param.user_data = recv.get();
      ucs_status_ptr_t request =
          ucp_am_recv_data_nbx(worker->get(), d.desc, recv->payload.data(), d.length, &param);
      if (request == nullptr) {
        Deliver(*recv, UCS_OK);
      } else if (UCS_PTR_IS_ERR(request)) {
        Deliver(*recv, UCS_PTR_STATUS(request));
      } else {
        RndvReceive* key = recv.get();
        rndv_inflight.emplace(key, std::move(recv));
      }
    }
  }

  absl::Status RegisterHandler(uint16_t id, MessageHandler handler) {
    auto slot = std::make_unique<HandlerSlot>(HandlerSlot{this, id, std::move(handler)});
    ucp_am_handler_param_t param{};
    param.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                       UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
    param.id = id;
    param.cb = &OnAm;
    param.arg = slot.get();
    param.flags = UCP_AM_FLAG_WHOLE_MSG;
    KVASIR_RETURN_IF_ERROR(
        UcsStatus(ucp_worker_set_am_recv_handler(worker->get(), &param), "set am handler"));
    handlers[id] = std::move(slot);  // the old slot (if any) is no longer referenced by UCX
    return absl::OkStatus();
  }

  void StopOnIo() {
    stopping = true;
    current_ = this;
    for (auto& [op, keep] : inflight)
      keep->first_error = absl::CancelledError("ucx transport stopped");
    for (auto& [id, peer] : peers) ClosePeer(id, /*force=*/true);
    auto ops = std::move(inflight);
    inflight.clear();
    for (auto& [op, keep] : ops) keep->Finish(absl::CancelledError("ucx transport stopped"));
    peers.clear();
    rndv_inflight.clear();
    for (auto& d : deferred) ucp_am_data_release(worker->get(), d.desc);
    deferred.clear();
    regions.clear();
    if (efd) {
      boost::system::error_code ec;
      efd->cancel(ec);
      efd->release();  // the fd belongs to the worker
      efd.reset();
    }
    handlers.clear();
    worker.reset();
    context.reset();
    io.stop();
  }

  static thread_local Impl* current_;
};

thread_local UcxTransport::Impl* UcxTransport::Impl::current_ = nullptr;

UcxTransport::UcxTransport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<UcxTransport>> UcxTransport::Create(
    const UcxTransportOptions& options) {
  auto impl = std::make_unique<Impl>();
  KVASIR_ASSIGN_OR_RETURN(impl->context, UcxContext::Create({.tls = options.tls, .wakeup = true}));
  KVASIR_ASSIGN_OR_RETURN(impl->worker, UcxWorker::Create(*impl->context));
  KVASIR_ASSIGN_OR_RETURN(int fd, impl->worker->EventFd());
  impl->efd = std::make_unique<asio::posix::stream_descriptor>(impl->io, fd);
  impl->sealed_address = Seal(kAddressMagic, impl->worker->address());
  impl->tls = impl->context->tls();
  impl->peer_errors = options.peer_errors;
  impl->busy_poll = options.busy_poll || std::getenv("KVASIR_UCX_BUSY_POLL") != nullptr;
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] {
    Impl::current_ = raw;  // the UCX callbacks of this worker run only on this thread
    auto guard = asio::make_work_guard(raw->io);
    raw->io.run();
  });
  raw->Post([raw] { raw->Poll(); });
  return std::unique_ptr<UcxTransport>(new UcxTransport(std::move(impl)));
}

UcxTransport::~UcxTransport() { Stop(); }

void UcxTransport::Stop() {
  Impl* impl = impl_.get();
  {
    absl::MutexLock lock(&impl->stop_mu);
    if (impl->stopped) return;
    impl->stopped = true;
    asio::post(impl->io, [impl] { impl->StopOnIo(); });
  }
  impl->thread.join();
}

std::string UcxTransport::name() const { return absl::StrCat("ucx[", impl_->tls, "]"); }

std::string UcxTransport::address() const { return impl_->sealed_address; }

bool UcxTransport::SupportsMemory(MemoryKind kind) const {
  if (!impl_->context) return false;
  return impl_->context->SupportsMemoryType(kind == MemoryKind::kCuda ? UCS_MEMORY_TYPE_CUDA
                                                                      : UCS_MEMORY_TYPE_HOST);
}

absl::StatusOr<PeerId> UcxTransport::Connect(std::string_view peer_address) {
  KVASIR_ASSIGN_OR_RETURN(std::string_view raw, Open(kAddressMagic, peer_address, "address"));
  const std::string address(raw);
  return impl_->RunOnIo([&]() -> absl::StatusOr<PeerId> {
    if (impl_->stopping) return absl::FailedPreconditionError("ucx transport stopped");
    absl::StatusOr<std::unique_ptr<UcxEndpoint>> ep = absl::UnavailableError("not tried");
    if (impl_->peer_errors != PeerErrorHandling::kOff) {
      ep = UcxEndpoint::Create(*impl_->worker, address, /*peer_errors=*/true, &Impl::OnEpError,
                               impl_.get());
    }
    if (!ep.ok() && impl_->peer_errors != PeerErrorHandling::kRequired) {
      ep = UcxEndpoint::Create(*impl_->worker, address, /*peer_errors=*/false, &Impl::OnEpError,
                               impl_.get());
    }
    if (!ep.ok()) return ep.status();
    const PeerId id = impl_->next_peer++;
    impl_->peers[id].ep = *std::move(ep);
    return id;
  });
}

void UcxTransport::Disconnect(PeerId peer) {
  (void)impl_->RunOnIo([&] {
    impl_->ClosePeer(peer, /*force=*/false);
    impl_->peers.erase(peer);
    return absl::OkStatus();
  });
}

absl::StatusOr<RegionId> UcxTransport::RegisterMemory(std::span<std::byte> memory,
                                                      MemoryKind kind) {
  return impl_->RunOnIo([&]() -> absl::StatusOr<RegionId> {
    if (impl_->stopping) return absl::FailedPreconditionError("ucx transport stopped");
    KVASIR_ASSIGN_OR_RETURN(
        auto mem,
        UcxMemory::Map(*impl_->context, memory,
                       kind == MemoryKind::kCuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST));
    const RegionId id = impl_->next_region++;
    impl_->regions.emplace(id, std::move(mem));
    return id;
  });
}

absl::StatusOr<std::pair<RegionId, std::span<std::byte>>> UcxTransport::AllocateMemory(
    size_t size_bytes) {
  return impl_->RunOnIo([&]() -> absl::StatusOr<std::pair<RegionId, std::span<std::byte>>> {
    KVASIR_ASSIGN_OR_RETURN(auto mem, UcxMemory::Allocate(*impl_->context, size_bytes));
    const std::span<std::byte> memory = mem->memory();
    const RegionId id = impl_->next_region++;
    impl_->regions.emplace(id, std::move(mem));
    return std::make_pair(id, memory);
  });
}

absl::Status UcxTransport::DeregisterMemory(RegionId region) {
  return impl_->RunOnIo([&]() -> absl::Status {
    if (impl_->regions.erase(region) == 0) {
      return absl::NotFoundError(absl::StrCat("no registered region ", region));
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<RemoteRegion> UcxTransport::ExportRegion(RegionId region) {
  return impl_->RunOnIo([&]() -> absl::StatusOr<RemoteRegion> {
    auto it = impl_->regions.find(region);
    if (it == impl_->regions.end()) {
      return absl::NotFoundError(absl::StrCat("no registered region ", region));
    }
    KVASIR_ASSIGN_OR_RETURN(std::string key, it->second->PackKey());
    const std::span<std::byte> m = it->second->memory();
    return RemoteRegion{reinterpret_cast<uint64_t>(m.data()), m.size(), Seal(kKeyMagic, key)};
  });
}

namespace {

absl::Status AwaitOp(Op& op, absl::Duration timeout) {
  absl::MutexLock lock(&op.mu);
  op.mu.AwaitWithTimeout(absl::Condition(
                             +[](Op* o) ABSL_NO_THREAD_SAFETY_ANALYSIS { return o->done; }, &op),
                         timeout + kCallerGrace);
  if (!op.done) return absl::DeadlineExceededError("ucx operation: no verdict from the I/O thread");
  return op.status;
}

}  // namespace

absl::Status UcxTransport::Put(PeerId peer, const RemoteRegion& remote, std::span<const RmaOp> ops,
                               absl::Duration timeout) {
  KVASIR_RETURN_IF_ERROR(CheckOpsInRegion(remote, ops));
  auto op = std::make_shared<Op>();
  op->peer = peer;
  if (!impl_->Post([this, op, &remote, ops, timeout] {
        impl_->StartRma(op, /*put=*/true, remote, ops, timeout);
      })) {
    return absl::FailedPreconditionError("ucx transport stopped");
  }
  return AwaitOp(*op, timeout);
}

absl::Status UcxTransport::Get(PeerId peer, const RemoteRegion& remote, std::span<const RmaOp> ops,
                               absl::Duration timeout) {
  KVASIR_RETURN_IF_ERROR(CheckOpsInRegion(remote, ops));
  auto op = std::make_shared<Op>();
  op->peer = peer;
  if (!impl_->Post([this, op, &remote, ops, timeout] {
        impl_->StartRma(op, /*put=*/false, remote, ops, timeout);
      })) {
    return absl::FailedPreconditionError("ucx transport stopped");
  }
  return AwaitOp(*op, timeout);
}

absl::Status UcxTransport::SetMessageHandler(uint16_t id, MessageHandler handler) {
  return impl_->RunOnIo([&]() -> absl::Status {
    if (impl_->stopping) return absl::FailedPreconditionError("ucx transport stopped");
    return impl_->RegisterHandler(id, std::move(handler));
  });
}

absl::Status UcxTransport::SendMessage(PeerId peer, uint16_t id, std::string_view header,
                                       std::string_view payload, absl::Duration timeout) {
  auto op = std::make_shared<Op>();
  op->peer = peer;
  op->header.assign(header.data(), header.size());
  op->payload.assign(payload.data(), payload.size());
  if (!impl_->Post([this, op, id, timeout] { impl_->StartSend(op, id, timeout); })) {
    return absl::FailedPreconditionError("ucx transport stopped");
  }
  return AwaitOp(*op, timeout);
}

absl::StatusOr<std::string> UcxTransport::DescribePeer(PeerId peer) {
  return impl_->RunOnIo([&]() -> absl::StatusOr<std::string> {
    KVASIR_ASSIGN_OR_RETURN(Impl::Peer * p, impl_->LivePeer(peer));
    return p->ep->Describe();
  });
}

}  // namespace kvasir::transport::ucx
