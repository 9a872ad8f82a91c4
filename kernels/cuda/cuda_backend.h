// The CUDA implementation of kernels::Backend: the kernels of this folder on one device and one
// stream. Data arrays are device memory (Allocate, Upload, Download); plan arrays stay host memory
// and are staged to the device per call, so they may be reused when a call returns. Operations
// are asynchronous except Download, Synchronize, Argmax and TopK, which wait for the stream.
// This header is plain C++ (no CUDA headers), so host-only code can include it.
//
//   std::string why;
//   std::unique_ptr<kernels::Backend> gpu = kernels::cuda::NewCudaBackend(0, &why);
//   if (gpu == nullptr) ... why is e.g. "no CUDA device: CUDA driver version is insufficient ..."
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace kvasir::kernels::cuda {

// The backend on CUDA device `device`, or nullptr with the reason in *why_not (no driver, no
// device, a failed stream or cuBLAS set-up). Never aborts for a missing device.
std::unique_ptr<kernels::Backend> NewCudaBackend(int device, std::string* why_not);

}  // namespace kvasir::kernels::cuda
