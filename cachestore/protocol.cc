// Shared RPC helpers (see protocol.h).
#include "cachestore/protocol.h"

#include "kvcache/prefix_hash.h"

namespace kvasir::cachestore {

transport::rpc::HandshakeInfo CachestoreHandshake(std::string role, std::string name) {
  transport::rpc::HandshakeInfo info;
  info.prefix_hash_test_vector = kvcache::PrefixHashTestVector();
  info.role = std::move(role);
  info.name = std::move(name);
  return info;
}

void ToProto(const absl::Status& status, ItemStatus* out) {
  out->set_code(static_cast<int32_t>(status.code()));
  out->set_message(std::string(status.message()));
}

absl::Status FromProto(const ItemStatus& status) {
  const int code = status.code();
  if (code == 0) return absl::OkStatus();
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError("cachestore sent an unknown status code");
  }
  return absl::Status(static_cast<absl::StatusCode>(code), status.message());
}

}  // namespace kvasir::cachestore
