// NcclCommunicator (see nccl_communicator.h). The communicator is non-blocking (config.blocking
// = 0) so that initialization and every collective can be abandoned at the deadline.
#include "transport/collectives/nccl/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace kvasir::transport::collectives {
namespace {

absl::Status CudaStatus(cudaError_t error, std::string_view what) {
  if (error == cudaSuccess) return absl::OkStatus();
  const std::string message = absl::StrCat(ToAbsl(what), ": ", cudaGetErrorName(error), " (",
                                           cudaGetErrorString(error), ")");
  if (error == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

absl::Status NcclStatus(int nccl_result, std::string_view what) {
  const auto result = static_cast<ncclResult_t>(nccl_result);
  if (result == ncclSuccess || result == ncclInProgress) return absl::OkStatus();
  const std::string message = absl::StrCat(ToAbsl(what), ": ", ncclGetErrorString(result));
  switch (result) {
    case ncclSystemError:
    case ncclRemoteError:
      return absl::UnavailableError(message);
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

struct NcclCommunicator::Handles {
  int device = 0;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  float* scratch = nullptr;  // one float for Barrier
  bool aborted = false;

  ~Handles() {
    if (comm != nullptr) {
      if (aborted) {
        ncclCommAbort(comm);
      } else if (ncclResult_t r = ncclCommDestroy(comm); r != ncclSuccess) {
        KVASIR_LOG_SUBSYS(WARN, kTransport, "ncclCommDestroy: %s", ncclGetErrorString(r));
      }
    }
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (scratch != nullptr) cudaFree(scratch);
  }

  // Polls the communicator until its pending call is done or the deadline passes.
  absl::Status AwaitComm(absl::Time deadline, std::string_view what) {
    while (true) {
      ncclResult_t state = ncclSuccess;
      if (ncclResult_t r = ncclCommGetAsyncError(comm, &state); r != ncclSuccess) {
        aborted = true;
        return NcclStatus(r, what);
      }
      if (state != ncclInProgress) {
        if (state != ncclSuccess) aborted = true;
        return NcclStatus(state, what);
      }
      if (absl::Now() > deadline) {
        aborted = true;
        return absl::DeadlineExceededError(
            absl::StrCat(ToAbsl(what), ": not done by the deadline"));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
};

NcclCommunicator::NcclCommunicator(std::unique_ptr<Handles> handles, int rank, int size,
                                   absl::Duration timeout)
    : handles_(std::move(handles)), rank_(rank), size_(size), timeout_(timeout) {}

NcclCommunicator::~NcclCommunicator() = default;

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    const NcclOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl: rank ", options.rank, " of ", options.size));
  }
  if (options.store == nullptr) return absl::InvalidArgumentError("nccl: no rendezvous store");
  if (options.device < 0 || options.device >= CudaDeviceCount()) {
    return absl::FailedPreconditionError(absl::StrCat("nccl: no CUDA device ", options.device));
  }
  const absl::Time deadline = absl::Now() + options.timeout;
  auto handles = std::make_unique<Handles>();
  handles->device = options.device;
  KVASIR_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(options.device), "cudaSetDevice"));
  KVASIR_RETURN_IF_ERROR(CudaStatus(
      cudaStreamCreateWithFlags(&handles->stream, cudaStreamNonBlocking), "cudaStreamCreate"));
  KVASIR_RETURN_IF_ERROR(CudaStatus(
      cudaMalloc(reinterpret_cast<void**>(&handles->scratch), sizeof(float)), "cudaMalloc"));

  ncclUniqueId id;
  const std::string key = absl::StrCat(options.key_prefix, "/unique_id");
  if (options.rank == 0) {
    KVASIR_RETURN_IF_ERROR(NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId"));
    KVASIR_RETURN_IF_ERROR(
        options.store->Set(key, std::string_view(reinterpret_cast<const char*>(&id), sizeof id)));
  } else {
    KVASIR_ASSIGN_OR_RETURN(std::string bytes, options.store->Get(key, options.timeout));
    if (bytes.size() != sizeof id) {
      return absl::InvalidArgumentError("nccl: malformed unique id in the rendezvous store");
    }
    std::memcpy(&id, bytes.data(), sizeof id);
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = ncclCommInitRankConfig(&handles->comm, options.size, id, options.rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) return NcclStatus(r, "ncclCommInitRankConfig");
  KVASIR_RETURN_IF_ERROR(handles->AwaitComm(deadline, "nccl init"));
  return std::unique_ptr<NcclCommunicator>(
      new NcclCommunicator(std::move(handles), options.rank, options.size, options.timeout));
}

absl::Status NcclCommunicator::Wait(std::string_view what) {
  const absl::Time deadline = absl::Now() + timeout_;
  KVASIR_RETURN_IF_ERROR(handles_->AwaitComm(deadline, what));  // the enqueue itself
  while (true) {
    const cudaError_t e = cudaStreamQuery(handles_->stream);
    if (e == cudaSuccess) return absl::OkStatus();
    if (e != cudaErrorNotReady) {
      handles_->aborted = true;
      return CudaStatus(e, what);
    }
    ncclResult_t state = ncclSuccess;
    ncclCommGetAsyncError(handles_->comm, &state);
    if (state != ncclSuccess && state != ncclInProgress) {
      handles_->aborted = true;
      return NcclStatus(state, what);
    }
    if (absl::Now() > deadline) {
      handles_->aborted = true;
      return absl::DeadlineExceededError(absl::StrCat(
          ToAbsl(what), ": other ranks did not complete within ", absl::FormatDuration(timeout_)));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

absl::Status NcclCommunicator::AllReduceSum(std::span<std::byte> data, DType dtype) {
  KVASIR_RETURN_IF_ERROR(CheckAllReduceArgs(data, dtype));
  if (handles_->aborted) return absl::UnavailableError("nccl communicator aborted earlier");
  const bool f32 = dtype == DType::kF32;
  ncclResult_t r =
      ncclAllReduce(data.data(), data.data(), data.size() / (f32 ? 4 : 2),
                    f32 ? ncclFloat32 : ncclBfloat16, ncclSum, handles_->comm, handles_->stream);
  if (r != ncclSuccess && r != ncclInProgress) return NcclStatus(r, "ncclAllReduce");
  return Wait("nccl all-reduce");
}

absl::Status NcclCommunicator::AllGather(std::span<const std::byte> input,
                                         std::span<std::byte> output) {
  KVASIR_RETURN_IF_ERROR(CheckAllGatherArgs(input, output, size_));
  if (handles_->aborted) return absl::UnavailableError("nccl communicator aborted earlier");
  ncclResult_t r = ncclAllGather(input.data(), output.data(), input.size(), ncclUint8,
                                 handles_->comm, handles_->stream);
  if (r != ncclSuccess && r != ncclInProgress) return NcclStatus(r, "ncclAllGather");
  return Wait("nccl all-gather");
}

absl::Status NcclCommunicator::Broadcast(std::span<std::byte> data, int root) {
  KVASIR_RETURN_IF_ERROR(CheckRoot(root, size_));
  if (handles_->aborted) return absl::UnavailableError("nccl communicator aborted earlier");
  ncclResult_t r = ncclBroadcast(data.data(), data.data(), data.size(), ncclUint8, root,
                                 handles_->comm, handles_->stream);
  if (r != ncclSuccess && r != ncclInProgress) return NcclStatus(r, "ncclBroadcast");
  return Wait("nccl broadcast");
}

absl::Status NcclCommunicator::Barrier() {
  if (handles_->aborted) return absl::UnavailableError("nccl communicator aborted earlier");
  ncclResult_t r = ncclAllReduce(handles_->scratch, handles_->scratch, 1, ncclFloat32, ncclSum,
                                 handles_->comm, handles_->stream);
  if (r != ncclSuccess && r != ncclInProgress) return NcclStatus(r, "ncclAllReduce (barrier)");
  return Wait("nccl barrier");
}

}  // namespace kvasir::transport::collectives
