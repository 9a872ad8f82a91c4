// The element-wise operations: SiluMul (out = silu(gate) * up, silu(g) = g / (1 + exp(-g)); may
// alias) and Add (y += x). Grid-stride loops, one element per thread and step.
#include "common/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace kvasir::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void SiluMulKernel(const float* gate, const float* up, int64_t n, float* out) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void AddKernel(float* y, const float* x, int64_t n) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    y[i] += x[i];
  }
}

}  // namespace

cudaError_t SiluMul(CudaContext& ctx, const float* gate, const float* up, int64_t n, float* out) {
  KVASIR_CHECK(n >= 0);
  if (n == 0) return cudaGetLastError();
  SiluMulKernel<<<GridFor(n, kThreads), kThreads, 0, ctx.stream>>>(gate, up, n, out);
  return cudaGetLastError();
}

cudaError_t Add(CudaContext& ctx, float* y, const float* x, int64_t n) {
  KVASIR_CHECK(n >= 0);
  if (n == 0) return cudaGetLastError();
  AddKernel<<<GridFor(n, kThreads), kThreads, 0, ctx.stream>>>(y, x, n);
  return cudaGetLastError();
}

}  // namespace kvasir::kernels::cuda
