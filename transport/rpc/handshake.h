// The versioned handshake of the control plane. Each side states its protocol version and the KV
// prefix hash of a fixed token sequence (the value comes from the KV-cache module; transport only
// compares it), and refuses a peer whose version or hash differs: two processes that hash
// prefixes differently would silently miss or, worse, mix up cached KV.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "transport/rpc/rpc.pb.h"

namespace kvasir::transport::rpc {

// Version of the frame protocol in rpc.proto. Bump it on any incompatible change.
inline constexpr uint32_t kProtocolVersion = 1;

struct HandshakeInfo {
  uint32_t protocol_version = kProtocolVersion;
  uint64_t prefix_hash_test_vector = 0;  // the caller's KV prefix hash of its test sequence
  std::string role;                      // "coordinator", "worker", ... (for logs)
  std::string name;                      // instance name (for logs)
};

Hello ToHello(const HandshakeInfo& info);

// OK when `peer` may talk to `local`; FailedPrecondition naming the difference otherwise.
absl::Status CheckPeerHello(const HandshakeInfo& local, const Hello& peer);

}  // namespace kvasir::transport::rpc
