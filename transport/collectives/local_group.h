// Collectives between threads of one process ("loopback"): the reference implementation of
// Communicator, and a fake for single-process tests of tensor-parallel code. Ranks exchange
// pointers through shared state; sums run in rank order, in f32.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/collectives/communicator.h"

namespace kvasir::transport::collectives {

// `size` communicators of one group, rank i at index i; give each to its own thread. Each call
// waits at most `timeout` for the other ranks.
absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateLocalGroup(
    int size, absl::Duration timeout = absl::Seconds(30));

}  // namespace kvasir::transport::collectives
