// Handshake checks (see handshake.h).
#include "transport/rpc/handshake.h"

#include "absl/strings/str_format.h"

namespace kvasir::transport::rpc {

Hello ToHello(const HandshakeInfo& info) {
  Hello hello;
  hello.set_protocol_version(info.protocol_version);
  hello.set_prefix_hash_test_vector(info.prefix_hash_test_vector);
  hello.set_role(info.role);
  hello.set_name(info.name);
  return hello;
}

absl::Status CheckPeerHello(const HandshakeInfo& local, const Hello& peer) {
  if (peer.protocol_version() != local.protocol_version) {
    return absl::FailedPreconditionError(
        absl::StrFormat("peer %s (%s) speaks protocol version %u, this process %u", peer.name(),
                        peer.role(), peer.protocol_version(), local.protocol_version));
  }
  if (peer.prefix_hash_test_vector() != local.prefix_hash_test_vector) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "peer %s (%s) hashes KV prefixes differently: test vector %#016x, this process %#016x",
        peer.name(), peer.role(), peer.prefix_hash_test_vector(), local.prefix_hash_test_vector));
  }
  return absl::OkStatus();
}

}  // namespace kvasir::transport::rpc
