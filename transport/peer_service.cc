// PeerService (see peer_service.h). Handlers that touch the transport run on the server's I/O
// thread, which is not the transport's own thread, so its blocking calls are allowed there.
#include "transport/peer_service.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/hash.h"
#include "common/status_macros.h"
#include "transport/loopback_transport.h"
#include "transport/transport.pb.h"
#include "transport/ucx/ucx_transport.h"

namespace kvasir::transport {

rpc::HandshakeInfo TransportTestHandshake(std::string role) {
  static constexpr int32_t kTokens[] = {1, 15043, 29892, 920, 526, 366, 29973, 2};
  rpc::HandshakeInfo info;
  info.prefix_hash_test_vector = Xxh3(std::span<const int32_t>(kTokens));
  info.role = std::move(role);
  info.name = absl::StrCat(info.role, "-", getpid());
  return info;
}

absl::StatusOr<std::unique_ptr<PeerService>> PeerService::Start(const rpc::HandshakeInfo& handshake,
                                                                uint16_t port) {
  std::unique_ptr<PeerService> peer(new PeerService);
  KVASIR_ASSIGN_OR_RETURN(peer->server_,
                          rpc::RpcServer::Create({.port = port, .handshake = handshake}));
  rpc::RpcServer& server = *peer->server_;
  PeerService* self = peer.get();
  server.RegisterUnary("echo", [](std::shared_ptr<rpc::ServerCall> call) {
    call->Finish(std::string(call->request()));
  });
  server.RegisterUnary("hang", [self](std::shared_ptr<rpc::ServerCall> call) {
    absl::MutexLock lock(&self->mu_);
    self->hanging_.push_back(std::move(call));
  });
  server.RegisterStream("count", [](std::shared_ptr<rpc::ServerCall> call) {
    int n = 0;
    if (!absl::SimpleAtoi(call->request(), &n) || n < 0 || n > 1000000) {
      call->Finish(absl::InvalidArgumentError("count wants a number in [0, 1e6]"));
      return;
    }
    for (int i = 0; i < n; ++i) {
      if (!call->Write(std::to_string(i))) return;
    }
    call->Finish(absl::OkStatus());
  });
  server.RegisterUnary("peer.Bulk", [self](std::shared_ptr<rpc::ServerCall> call) {
    self->HandleBulk(std::move(call));
  });
  server.RegisterUnary("peer.Checksum", [self](std::shared_ptr<rpc::ServerCall> call) {
    self->HandleChecksum(std::move(call));
  });
  peer->rendezvous_.Register(server);
  KVASIR_RETURN_IF_ERROR(server.Start());
  return peer;
}

PeerService::~PeerService() { Stop(); }

void PeerService::Stop() {
  if (server_) server_->Stop();
  absl::MutexLock lock(&mu_);
  hanging_.clear();
  region_ = {};
  transport_.reset();
}

void PeerService::HandleBulk(std::shared_ptr<rpc::ServerCall> call) {
  BulkPeerRequest request;
  if (!request.ParseFromString(call->request()) || request.region_size() == 0 ||
      request.region_size() > (uint64_t{1} << 30)) {
    call->Finish(absl::InvalidArgumentError("peer.Bulk wants a region of 1 B .. 1 GiB"));
    return;
  }
  absl::MutexLock lock(&mu_);
  region_ = {};
  transport_.reset();
  absl::StatusOr<std::unique_ptr<BulkTransport>> transport;
  if (request.tls() == "loopback") {
    transport = std::unique_ptr<BulkTransport>(new LoopbackTransport);
  } else {
    auto ucx = ucx::UcxTransport::Create({.tls = request.tls(), .busy_poll = request.busy_poll()});
    if (ucx.ok())
      transport = std::unique_ptr<BulkTransport>(std::move(*ucx));
    else
      transport = ucx.status();
  }
  if (!transport.ok()) {
    call->Finish(transport.status());
    return;
  }
  transport_ = std::move(*transport);
  absl::StatusOr<std::pair<RegionId, std::span<std::byte>>> allocated =
      transport_->AllocateMemory(request.region_size());
  if (!allocated.ok()) {
    call->Finish(allocated.status());
    return;
  }
  region_ = allocated->second;
  std::fill(region_.begin(), region_.end(), std::byte{0});
  if (!request.fill().empty()) {
    for (size_t i = 0; i < region_.size(); ++i) {
      region_[i] = static_cast<std::byte>(request.fill()[i % request.fill().size()]);
    }
  }
  absl::StatusOr<RemoteRegion> exported = transport_->ExportRegion(allocated->first);
  if (!exported.ok()) {
    call->Finish(exported.status());
    return;
  }
  BulkPeerInfo info;
  info.set_address(transport_->address());
  info.set_region_address(exported->address);
  info.set_region_size(exported->size_bytes);
  info.set_region_key(exported->key);
  info.set_transport(transport_->name());
  info.set_tls(request.tls());
  call->Finish(info.SerializeAsString());
}

void PeerService::HandleChecksum(std::shared_ptr<rpc::ServerCall> call) {
  ChecksumRequest request;
  if (!request.ParseFromString(call->request())) {
    call->Finish(absl::InvalidArgumentError("malformed peer.Checksum"));
    return;
  }
  absl::MutexLock lock(&mu_);
  if (request.offset() > region_.size() || request.size() > region_.size() - request.offset()) {
    call->Finish(absl::InvalidArgumentError("checksum range outside the region"));
    return;
  }
  ChecksumResponse response;
  response.set_xxh3(Xxh3(region_.data() + request.offset(), request.size()));
  call->Finish(response.SerializeAsString());
}

}  // namespace kvasir::transport
