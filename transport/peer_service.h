// The test and bench peer: an RpcServer with the methods the multi-process tests and
// `kvasir bench transport` drive from another process. It owns a UCX (or loopback) transport and
// one exported memory region on request, and serves the rendezvous store for collectives.
//   "echo"          unary: returns the request
//   "hang"          unary: never answers (tests deadlines)
//   "count"         stream: the request is a decimal n; streams "0" .. "n-1"
//   "peer.Bulk"     BulkPeerRequest -> BulkPeerInfo: (re)creates the transport and region
//   "peer.Checksum" ChecksumRequest -> ChecksumResponse: XXH3 of a slice of the region
//   "rendezvous.*"  RendezvousService
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "transport/bulk_transport.h"
#include "transport/collectives/rendezvous.h"
#include "transport/rpc/server.h"

namespace kvasir::transport {

// The handshake the peer binary, the bench and the tests use: the KV prefix hash test vector is
// XXH3 of a fixed token sequence (the KV-cache module will supply the real one).
rpc::HandshakeInfo TransportTestHandshake(std::string role);

class PeerService {
 public:
  // Binds on 127.0.0.1 (port 0: see port()) and starts serving.
  static absl::StatusOr<std::unique_ptr<PeerService>> Start(const rpc::HandshakeInfo& handshake,
                                                            uint16_t port = 0);
  ~PeerService();  // Stop()
  uint16_t port() const { return server_->port(); }
  // Stops the server, then releases the transport. Idempotent.
  void Stop();

 private:
  PeerService() = default;
  void HandleBulk(std::shared_ptr<rpc::ServerCall> call);
  void HandleChecksum(std::shared_ptr<rpc::ServerCall> call);

  collectives::RendezvousService rendezvous_;  // outlives server_
  absl::Mutex mu_;
  std::unique_ptr<BulkTransport> transport_ ABSL_GUARDED_BY(mu_);
  std::span<std::byte> region_ ABSL_GUARDED_BY(mu_);  // allocated by transport_
  std::vector<std::shared_ptr<rpc::ServerCall>> hanging_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<rpc::RpcServer> server_;
};

}  // namespace kvasir::transport
