// BulkTransport inside one process: puts and gets are memcpy between regions registered with
// transports of the same process, found through a process-wide registry. It is the reference the
// UCX implementation is tested against, and a fake for single-process tests of higher layers.
// Message handlers run on the sending thread.
#pragma once

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "transport/bulk_transport.h"

namespace kvasir::transport {

class LoopbackTransport final : public BulkTransport {
 public:
  LoopbackTransport();
  ~LoopbackTransport() override;
  LoopbackTransport(const LoopbackTransport&) = delete;
  LoopbackTransport& operator=(const LoopbackTransport&) = delete;

  // All methods are safe from any thread.
  std::string name() const override { return "loopback"; }
  std::string address() const override;
  bool SupportsMemory(MemoryKind kind) const override { return kind == MemoryKind::kHost; }
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

 private:
  absl::Status Copy(PeerId peer, const RemoteRegion& remote, std::span<const RmaOp> ops, bool put);

  const uint64_t id_;  // this transport's number in the process-wide registry
  absl::Mutex owned_mu_;
  absl::flat_hash_map<RegionId, std::unique_ptr<std::byte[]>> owned_ ABSL_GUARDED_BY(owned_mu_);
  absl::Mutex mu_;
  uint64_t next_peer_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<PeerId, uint64_t> peers_ ABSL_GUARDED_BY(mu_);  // peer -> transport id
};

}  // namespace kvasir::transport
