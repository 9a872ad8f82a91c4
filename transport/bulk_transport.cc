// Shared argument checks of BulkTransport implementations.
#include "transport/bulk_transport.h"

#include "absl/strings/str_cat.h"

namespace kvasir::transport {

absl::Status CheckOpsInRegion(const RemoteRegion& remote, std::span<const RmaOp> ops) {
  for (size_t i = 0; i < ops.size(); ++i) {
    const uint64_t size = ops[i].local.size();
    if (ops[i].remote_offset > remote.size_bytes ||
        size > remote.size_bytes - ops[i].remote_offset) {
      return absl::InvalidArgumentError(absl::StrCat("op ", i, " [", ops[i].remote_offset, ", +",
                                                     size, ") is outside the remote region of ",
                                                     remote.size_bytes, " bytes"));
    }
    if (size > 0 && ops[i].local.data() == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("op ", i, " has no local buffer"));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvasir::transport
