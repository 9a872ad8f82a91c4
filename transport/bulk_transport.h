// The bulk-data interface: one-sided put/get between registered memory regions of peers, and
// small active messages. KV blocks move through it; UCX implements it between processes and
// machines (transport/ucx), LoopbackTransport inside one process, and FaultBulkTransport
// (transport/fault) decorates either for failure tests.
//
// A transfer, on the side that starts it:
//   KVASIR_ASSIGN_OR_RETURN(PeerId peer, transport.Connect(peer_address));   // bytes from the peer
//   KVASIR_ASSIGN_OR_RETURN(RegionId local, transport.RegisterMemory(buffer));
//   RmaOp op{.local = buffer.subspan(0, 4096), .remote_offset = 0};
//   KVASIR_RETURN_IF_ERROR(transport.Put(peer, remote_region, {&op, 1}, absl::Seconds(1)));
// where remote_region is what the peer's ExportRegion returned, sent over the control plane.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvasir::transport {

using PeerId = uint64_t;
using RegionId = uint64_t;

// Where registered memory lives. kCuda needs a transport built with CUDA support (checked at run
// time: BulkTransport::SupportsMemory).
enum class MemoryKind { kHost, kCuda };

// A region exported by a peer: what Put and Get need to address it. Plain data; send it over the
// control plane.
struct RemoteRegion {
  uint64_t address = 0;     // the region's start in the owner's address space
  uint64_t size_bytes = 0;  // ops must stay inside [0, size_bytes)
  std::string key;          // packed remote key (opaque)
};

// One contiguous copy between local memory and [remote_offset, remote_offset + local.size()) of
// a remote region.
struct RmaOp {
  std::span<std::byte> local;  // the source of a put, the destination of a get
  uint64_t remote_offset = 0;
};

class BulkTransport {
 public:
  // Runs on the transport's own thread (loopback: the sender's thread) for each message with
  // the handler's id. Must not block or call the transport's blocking methods.
  using MessageHandler = std::function<void(std::string_view header, std::string payload)>;

  virtual ~BulkTransport() = default;

  // "loopback", "ucx" (with the transports in use, e.g. "ucx[tcp]").
  virtual std::string name() const = 0;

  // Opaque bytes that let a peer Connect to this transport.
  virtual std::string address() const = 0;

  virtual bool SupportsMemory(MemoryKind kind) const = 0;

  // Connects to the peer whose address() is `peer_address`. InvalidArgument for malformed
  // bytes, Unavailable if unreachable.
  virtual absl::StatusOr<PeerId> Connect(std::string_view peer_address) = 0;

  // Closes the connection to a peer. Unknown ids are ignored.
  virtual void Disconnect(PeerId peer) = 0;

  // Registers caller-owned memory for remote access (and faster local use). The memory must
  // stay valid until DeregisterMemory or the transport's destruction.
  virtual absl::StatusOr<RegionId> RegisterMemory(std::span<std::byte> memory,
                                                  MemoryKind kind = MemoryKind::kHost) = 0;
  // Allocates `size_bytes` of host memory owned by the transport and registers it. Prefer it for
  // buffers peers write into: UCX then places them in shared-memory segments that a peer on the
  // same machine maps and copies into directly (memory registered from elsewhere can only be
  // reached through emulated, much slower, puts on UCX 1.13's shared-memory transports). Freed
  // by DeregisterMemory or the transport's destruction.
  virtual absl::StatusOr<std::pair<RegionId, std::span<std::byte>>> AllocateMemory(
      size_t size_bytes) = 0;
  virtual absl::Status DeregisterMemory(RegionId region) = 0;

  // The descriptor a peer needs to Put into or Get from the region.
  virtual absl::StatusOr<RemoteRegion> ExportRegion(RegionId region) = 0;

  // Copies every op's local bytes into the remote region (put) or the remote bytes into local
  // memory (get), and returns when all of them are complete: for a put, visible in the peer's
  // memory. Ops outside the region are InvalidArgument (nothing is sent). A peer that does not
  // complete within `timeout` yields DeadlineExceeded and the connection to it is closed (its
  // later ops fail with Unavailable until it is connected again); a failed peer yields
  // Unavailable. Blocks; local buffers must stay valid until it returns.
  virtual absl::Status Put(PeerId peer, const RemoteRegion& remote, std::span<const RmaOp> ops,
                           absl::Duration timeout) = 0;
  virtual absl::Status Get(PeerId peer, const RemoteRegion& remote, std::span<const RmaOp> ops,
                           absl::Duration timeout) = 0;

  // Active messages: the peer's handler for `id` receives `header` and `payload`.
  virtual absl::Status SetMessageHandler(uint16_t id, MessageHandler handler) = 0;
  // Returns when the message has left (local completion). Same errors as Put.
  virtual absl::Status SendMessage(PeerId peer, uint16_t id, std::string_view header,
                                   std::string_view payload, absl::Duration timeout) = 0;
};

// Checks that every op lies inside `remote` (shared by the implementations).
absl::Status CheckOpsInRegion(const RemoteRegion& remote, std::span<const RmaOp> ops);

}  // namespace kvasir::transport
