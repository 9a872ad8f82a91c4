// RmsNorm: out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight, one block per row. The sum
// of squares is complete (a block reduction) before any element is written, so out may alias x.
#include "common/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace kvasir::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void RmsNormKernel(const float* x, const float* weight, int64_t n, int64_t dim,
                              float eps, float* out) {
  __shared__ float scratch[32];
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const float* xi = x + i * dim;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) ss += xi[c] * xi[c];
    ss = BlockSum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
    float* oi = out + i * dim;
    for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) oi[c] = xi[c] * inv * weight[c];
  }
}

}  // namespace

cudaError_t RmsNorm(CudaContext& ctx, const float* x, const float* weight, int64_t n, int64_t dim,
                    float eps, float* out) {
  KVASIR_CHECK(n >= 0 && dim >= 0);
  if (n == 0 || dim == 0) return cudaGetLastError();
  RmsNormKernel<<<GridFor(n, 1), kThreads, 0, ctx.stream>>>(x, weight, n, dim, eps, out);
  return cudaGetLastError();
}

}  // namespace kvasir::kernels::cuda
