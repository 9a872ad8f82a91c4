#include "worker/device.h"

#include "absl/strings/str_cat.h"

#if KVASIR_HAVE_CUDA_BACKEND
#include "kernels/cuda/cuda_backend.h"
#endif

namespace kvasir::worker {

absl::Status CheckDeviceName(std::string_view name) {
  if (name == "cpu" || name == "cuda") return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("--device must be one of cpu, cuda, got '", std::string(name), "'"));
}

absl::StatusOr<std::unique_ptr<kernels::Backend>> CreateGpuBackend(std::string_view name) {
  if (name != "cuda") {
    absl::Status known = CheckDeviceName(name);
    return known.ok() ? absl::InvalidArgumentError("not a GPU device") : known;
  }
#if KVASIR_HAVE_CUDA_BACKEND
  std::string why_not;
  std::unique_ptr<kernels::Backend> backend = kernels::cuda::NewCudaBackend(0, &why_not);
  if (backend == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("--device cuda: ", why_not));
  }
  return backend;
#else
  return absl::FailedPreconditionError(
      "--device cuda: this build has no CUDA backend (nvcc was not found when it was "
      "configured; docs/kernels.md says how to build it)");
#endif
}

}  // namespace kvasir::worker
