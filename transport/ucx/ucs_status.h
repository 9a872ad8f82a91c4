// The one conversion from UCX status codes to absl::Status (docs/transport.md): unreachable peers
// and reset connections are Unavailable, timeouts DeadlineExceeded, out-of-memory
// ResourceExhausted, cancellation Cancelled, bad arguments InvalidArgument; the rest Internal, with
// UCX's own name for the code in the message.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "ucs/type/status.h"

namespace kvasir::transport::ucx {

absl::Status UcsStatus(ucs_status_t status, std::string_view what);

}  // namespace kvasir::transport::ucx
