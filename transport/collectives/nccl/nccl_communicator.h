// Communicator over NCCL for GPU tensor-parallel groups (one process per GPU). Buffers are device
// memory on the communicator's device; the collectives run on the communicator's own stream and
// each call waits for its completion, polling so that the deadline holds: a rank that never
// arrives gets the communicator aborted (ncclCommAbort) and DeadlineExceeded. Built only when
// CUDA and NCCL are found (KVASIR_TRANSPORT_HAVE_NCCL); tests skip without a GPU.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/collectives/communicator.h"
#include "transport/collectives/rendezvous.h"

namespace kvasir::transport::collectives {

struct NcclOptions {
  int rank = 0;
  int size = 1;
  int device = 0;                    // CUDA device of this rank
  RendezvousStore* store = nullptr;  // carries rank 0's ncclUniqueId; used during Create only
  std::string key_prefix = "nccl";
  absl::Duration timeout = absl::Seconds(30);  // for Create and for each collective
};

// Number of CUDA devices (0 when there is no driver or device).
int CudaDeviceCount();

// The NCCL status as absl::Status (ncclSystemError / ncclRemoteError are Unavailable).
absl::Status NcclStatus(int nccl_result, std::string_view what);

class NcclCommunicator final : public Communicator {
 public:
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(const NcclOptions& options);
  ~NcclCommunicator() override;  // destroys (or, after a failure, aborts) the communicator

  // Call from one thread at a time. Spans are device memory.
  std::string name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::Status AllReduceSum(std::span<std::byte> data, DType dtype) override;
  absl::Status AllGather(std::span<const std::byte> input, std::span<std::byte> output) override;
  absl::Status Broadcast(std::span<std::byte> data, int root) override;
  absl::Status Barrier() override;

 private:
  struct Handles;
  NcclCommunicator(std::unique_ptr<Handles> handles, int rank, int size, absl::Duration timeout);
  // Waits for the stream (and the communicator's async errors) until the deadline.
  absl::Status Wait(std::string_view what);

  std::unique_ptr<Handles> handles_;
  const int rank_;
  const int size_;
  const absl::Duration timeout_;
};

}  // namespace kvasir::transport::collectives
