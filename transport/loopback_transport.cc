// LoopbackTransport (see loopback_transport.h). The registry's one mutex guards every region and
// handler table, and is held during copies so a region cannot be deregistered mid-copy.
#include "transport/loopback_transport.h"

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/strings.h"

namespace kvasir::transport {
namespace {

struct Registry {
  struct Endpoint {
    uint64_t next_region = 1;
    absl::flat_hash_map<RegionId, std::span<std::byte>> regions;
    absl::flat_hash_map<uint16_t, BulkTransport::MessageHandler> handlers;
  };
  absl::Mutex mu;
  uint64_t next_id ABSL_GUARDED_BY(mu) = 1;
  absl::flat_hash_map<uint64_t, Endpoint> endpoints ABSL_GUARDED_BY(mu);
};

Registry& GetRegistry() {
  static Registry* registry = new Registry;
  return *registry;
}

uint64_t Enroll() {
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  const uint64_t id = r.next_id++;
  r.endpoints[id];
  return id;
}

// "loopback:<id>" and "loopback:<id>:<region>" parsing.
absl::StatusOr<std::vector<uint64_t>> ParseNumbers(std::string_view text, size_t count,
                                                   std::string_view what) {
  std::vector<std::string> parts = absl::StrSplit(ToAbsl(text), ':');
  std::vector<uint64_t> out;
  if (parts.size() != count + 1 || parts[0] != "loopback") {
    return absl::InvalidArgumentError(absl::StrCat("not a loopback ", ToAbsl(what)));
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    uint64_t v = 0;
    if (!absl::SimpleAtoi(parts[i], &v)) {
      return absl::InvalidArgumentError(absl::StrCat("not a loopback ", ToAbsl(what)));
    }
    out.push_back(v);
  }
  return out;
}

}  // namespace

LoopbackTransport::LoopbackTransport() : id_(Enroll()) {}

LoopbackTransport::~LoopbackTransport() {
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  r.endpoints.erase(id_);
}

std::string LoopbackTransport::address() const { return absl::StrCat("loopback:", id_); }

absl::StatusOr<PeerId> LoopbackTransport::Connect(std::string_view peer_address) {
  absl::StatusOr<std::vector<uint64_t>> parsed = ParseNumbers(peer_address, 1, "address");
  if (!parsed.ok()) return parsed.status();
  {
    Registry& r = GetRegistry();
    absl::MutexLock lock(&r.mu);
    if (!r.endpoints.contains((*parsed)[0])) {
      return absl::UnavailableError(absl::StrCat("no loopback transport ", (*parsed)[0]));
    }
  }
  absl::MutexLock lock(&mu_);
  const PeerId peer = next_peer_++;
  peers_[peer] = (*parsed)[0];
  return peer;
}

void LoopbackTransport::Disconnect(PeerId peer) {
  absl::MutexLock lock(&mu_);
  peers_.erase(peer);
}

absl::StatusOr<RegionId> LoopbackTransport::RegisterMemory(std::span<std::byte> memory,
                                                           MemoryKind kind) {
  if (kind != MemoryKind::kHost) {
    return absl::FailedPreconditionError("loopback transport moves host memory only");
  }
  if (memory.empty()) return absl::InvalidArgumentError("cannot register an empty region");
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  Registry::Endpoint& self = r.endpoints[id_];
  const RegionId region = self.next_region++;
  self.regions[region] = memory;
  return region;
}

absl::StatusOr<std::pair<RegionId, std::span<std::byte>>> LoopbackTransport::AllocateMemory(
    size_t size_bytes) {
  if (size_bytes == 0) return absl::InvalidArgumentError("cannot allocate an empty region");
  auto memory = std::make_unique<std::byte[]>(size_bytes);
  const std::span<std::byte> span(memory.get(), size_bytes);
  absl::StatusOr<RegionId> region = RegisterMemory(span);
  if (!region.ok()) return region.status();
  absl::MutexLock lock(&owned_mu_);
  owned_[*region] = std::move(memory);
  return std::make_pair(*region, span);
}

absl::Status LoopbackTransport::DeregisterMemory(RegionId region) {
  {
    Registry& r = GetRegistry();
    absl::MutexLock lock(&r.mu);
    if (r.endpoints[id_].regions.erase(region) == 0) {
      return absl::NotFoundError(absl::StrCat("no registered region ", region));
    }
  }
  absl::MutexLock lock(&owned_mu_);
  owned_.erase(region);
  return absl::OkStatus();
}

absl::StatusOr<RemoteRegion> LoopbackTransport::ExportRegion(RegionId region) {
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  auto& regions = r.endpoints[id_].regions;
  auto it = regions.find(region);
  if (it == regions.end())
    return absl::NotFoundError(absl::StrCat("no registered region ", region));
  return RemoteRegion{reinterpret_cast<uint64_t>(it->second.data()), it->second.size(),
                      absl::StrCat("loopback:", id_, ":", region)};
}

absl::Status LoopbackTransport::Copy(PeerId peer, const RemoteRegion& remote,
                                     std::span<const RmaOp> ops, bool put) {
  if (absl::Status s = CheckOpsInRegion(remote, ops); !s.ok()) return s;
  uint64_t target = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = peers_.find(peer);
    if (it == peers_.end()) return absl::NotFoundError(absl::StrCat("no loopback peer ", peer));
    target = it->second;
  }
  absl::StatusOr<std::vector<uint64_t>> key = ParseNumbers(remote.key, 2, "remote key");
  if (!key.ok()) return key.status();
  if ((*key)[0] != target) {
    return absl::InvalidArgumentError("remote key belongs to another peer");
  }
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  auto ep = r.endpoints.find(target);
  if (ep == r.endpoints.end()) {
    return absl::UnavailableError(absl::StrCat("loopback peer ", peer, " is gone"));
  }
  auto region = ep->second.regions.find((*key)[1]);
  if (region == ep->second.regions.end() ||
      reinterpret_cast<uint64_t>(region->second.data()) != remote.address ||
      region->second.size() < remote.size_bytes) {
    return absl::NotFoundError("remote region is not registered (any more)");
  }
  for (const RmaOp& op : ops) {
    if (op.local.empty()) continue;
    std::byte* remote_bytes = region->second.data() + op.remote_offset;
    if (put) {
      std::memmove(remote_bytes, op.local.data(), op.local.size());
    } else {
      std::memmove(op.local.data(), remote_bytes, op.local.size());
    }
  }
  return absl::OkStatus();
}

absl::Status LoopbackTransport::Put(PeerId peer, const RemoteRegion& remote,
                                    std::span<const RmaOp> ops, absl::Duration) {
  return Copy(peer, remote, ops, /*put=*/true);
}

absl::Status LoopbackTransport::Get(PeerId peer, const RemoteRegion& remote,
                                    std::span<const RmaOp> ops, absl::Duration) {
  return Copy(peer, remote, ops, /*put=*/false);
}

absl::Status LoopbackTransport::SetMessageHandler(uint16_t id, MessageHandler handler) {
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  r.endpoints[id_].handlers[id] = std::move(handler);
  return absl::OkStatus();
}

absl::Status LoopbackTransport::SendMessage(PeerId peer, uint16_t id, std::string_view header,
                                            std::string_view payload, absl::Duration) {
  uint64_t target = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = peers_.find(peer);
    if (it == peers_.end()) return absl::NotFoundError(absl::StrCat("no loopback peer ", peer));
    target = it->second;
  }
  MessageHandler handler;
  {
    Registry& r = GetRegistry();
    absl::MutexLock lock(&r.mu);
    auto ep = r.endpoints.find(target);
    if (ep == r.endpoints.end()) {
      return absl::UnavailableError(absl::StrCat("loopback peer ", peer, " is gone"));
    }
    auto h = ep->second.handlers.find(id);
    if (h != ep->second.handlers.end()) handler = h->second;
  }
  // Like UCX, a message without a handler is dropped.
  if (handler) handler(header, std::string(payload));
  return absl::OkStatus();
}

}  // namespace kvasir::transport
