// The compute device an engine runs on: "cpu" (the CPU runner, worker/cpu_model_runner.cc) or
// "cuda" (the backend runner, worker/backend_model_runner.h, over the CUDA kernels of
// kernels/cuda when this build has them).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace kvasir::worker {

// InvalidArgument, in the words of the --device flag, for a name that is not a device.
absl::Status CheckDeviceName(std::string_view name);
// The backend of a GPU device ("cuda": GPU 0). FailedPrecondition, with the reason, when this
// build has no CUDA backend or the machine no usable GPU.
absl::StatusOr<std::unique_ptr<kernels::Backend>> CreateGpuBackend(std::string_view name);

}  // namespace kvasir::worker
