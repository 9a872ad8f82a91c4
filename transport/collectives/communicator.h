// Collectives inside one tensor-parallel group: all-reduce (sum of f32 or bf16), all-gather,
// broadcast and barrier. Implementations: LocalGroup (threads of one process, the reference),
// GlooCommunicator (processes over TCP, CPU memory) and NcclCommunicator (GPUs, device memory;
// built with CUDA). Every rank calls the same collectives in the same order.
//
// Every call has a deadline (the communicator's timeout): a rank that never arrives yields
// DeadlineExceeded (or Unavailable if its connection broke) instead of a hang. After such an
// error the communicator is unusable (peers may be mid-operation); build a new one.
#pragma once

#include <cstddef>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/base/dtype.h"

namespace kvasir::transport::collectives {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual std::string name() const = 0;  // "local", "gloo", "nccl"
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Replaces `data` (elements of `dtype`, kF32 or kBF16) on every rank with the element-wise sum
  // over ranks; every rank gets the same bits. The CPU implementations sum bf16 in f32 and round
  // once; NCCL sums in its own order and precision.
  virtual absl::Status AllReduceSum(std::span<std::byte> data, DType dtype) = 0;

  // output = the inputs of ranks 0..size-1 concatenated; every rank's input has the same size
  // and output.size() == size() * input.size().
  virtual absl::Status AllGather(std::span<const std::byte> input, std::span<std::byte> output) = 0;

  // Copies `data` of rank `root` into `data` of every other rank (same size on all ranks).
  virtual absl::Status Broadcast(std::span<std::byte> data, int root) = 0;

  // Returns once every rank has called Barrier.
  virtual absl::Status Barrier() = 0;
};

// Argument checks shared by the implementations.
absl::Status CheckAllReduceArgs(std::span<const std::byte> data, DType dtype);
absl::Status CheckAllGatherArgs(std::span<const std::byte> input, std::span<const std::byte> output,
                                int size);
absl::Status CheckRoot(int root, int size);

// bf16 <-> f32 conversion of whole buffers (for implementations that reduce bf16 in f32).
void Bf16ToF32(std::span<const std::byte> bf16, std::span<float> f32);
void F32ToBf16(std::span<const float> f32, std::span<std::byte> bf16);

}  // namespace kvasir::transport::collectives
