// BulkTransport over UCX (ucp): one context and one worker, progressed by one I/O thread that
// runs a boost::asio::io_context and sleeps on the worker's event fd (ucp_worker_arm) when no
// operation is in flight, busy-polling while one is (as UCX's iodemo does). Public methods post
// work to that thread and wait for it.
//
// Transports are UCX's choice unless options.tls (or the UCX_TLS environment variable) narrows
// them: "tcp", "shm" (posix/sysv/cma shared memory), "tcp,shm", ... CUDA memory is supported when
// the installed UCX was built with CUDA (SupportsMemory(kCuda), checked at run time).
//
// Addresses and remote keys are wrapped in a checksummed envelope, so malformed bytes from a peer
// are rejected before they reach UCX's unpacking code.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "transport/bulk_transport.h"

namespace kvasir::transport::ucx {

enum class PeerErrorHandling {
  kAuto,      // detect failed peers where the transports can; otherwise rely on deadlines
  kRequired,  // Connect fails if the transports cannot detect failed peers
  kOff,       // rely on deadlines only (what ucx_perftest does)
};

struct UcxTransportOptions {
  std::string tls;  // UCX_TLS for this transport only; "" = environment or UCX's choice
  // UCX 1.13's shared-memory transports cannot detect a failed peer; with kAuto a connection over
  // them falls back to deadlines alone (a dead peer then shows up as DeadlineExceeded).
  PeerErrorHandling peer_errors = PeerErrorHandling::kAuto;
  // Progress the worker continuously instead of sleeping on its event fd when idle (one core
  // busy; for a dedicated data-plane process). KVASIR_UCX_BUSY_POLL=1 sets it too.
  bool busy_poll = false;
};

class UcxTransport final : public BulkTransport {
 public:
  static absl::StatusOr<std::unique_ptr<UcxTransport>> Create(const UcxTransportOptions& options);
  ~UcxTransport() override;  // Stop()
  UcxTransport(const UcxTransport&) = delete;
  UcxTransport& operator=(const UcxTransport&) = delete;

  // BulkTransport. Blocking methods are safe from any thread except the I/O thread (message
  // handlers run there).
  std::string name() const override;
  std::string address() const override;
  bool SupportsMemory(MemoryKind kind) const override;
  absl::StatusOr<PeerId> Connect(std::string_view peer_address) override;
  void Disconnect(PeerId peer) override;
  absl::StatusOr<RegionId> RegisterMemory(std::span<std::byte> memory,
                                          MemoryKind kind = MemoryKind::kHost) override;
  absl::StatusOr<std::pair<RegionId, std::span<std::byte>>> AllocateMemory(
      size_t size_bytes) override;
  absl::Status DeregisterMemory(RegionId region) override;
  absl::StatusOr<RemoteRegion> ExportRegion(RegionId region) override;
  absl::Status Put(PeerId peer, const RemoteRegion& remote, std::span<const RmaOp> ops,
                   absl::Duration timeout) override;
  absl::Status Get(PeerId peer, const RemoteRegion& remote, std::span<const RmaOp> ops,
                   absl::Duration timeout) override;
  absl::Status SetMessageHandler(uint16_t id, MessageHandler handler) override;
  absl::Status SendMessage(PeerId peer, uint16_t id, std::string_view header,
                           std::string_view payload, absl::Duration timeout) override;

  // The lanes and transports UCX chose for the connection to `peer` (ucp_ep_print_info).
  absl::StatusOr<std::string> DescribePeer(PeerId peer);

  // Fails operations in flight with Cancelled, closes every endpoint, releases memory
  // registrations and UCX, and joins the I/O thread. Idempotent; not from the I/O thread.
  void Stop();

 private:
  struct Impl;
  explicit UcxTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvasir::transport::ucx
