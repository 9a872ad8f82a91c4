// Rope: rotates the first n_rot elements of each head of each token in place, token t at position
// pos[t], pair j by the angle pos * freq_base^(-2j / n_rot); pairs (2j, 2j + 1) for
// kAdjacentPairs, (j, j + n_rot / 2) for kHalfSplit. As RopeRef, the angles, their cos and sin and
// the rotation are computed in double precision. One block per token: the block first computes
// the token's n_rot / 2 cos / sin pairs into shared memory, then rotates every head with them.
#include "common/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace kvasir::kernels::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void RopeKernel(float* x, int64_t n_tokens, int64_t token_stride, int n_heads,
                           int head_dim, int n_rot, const int32_t* pos, double freq_base,
                           bool adjacent) {
  extern __shared__ double cos_sin[];  // [n_rot]: cos of pair j at j, sin at half + j
  const int half = n_rot / 2;
  for (int64_t t = blockIdx.x; t < n_tokens; t += gridDim.x) {
    __syncthreads();  // the previous token's angles are no longer read
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
      const double theta = static_cast<double>(pos[t]) * pow(freq_base, -2.0 * j / n_rot);
      sincos(theta, &cos_sin[half + j], &cos_sin[j]);
    }
    __syncthreads();
    float* xt = x + t * token_stride;
    for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
      const int h = idx / half, j = idx % half;
      float* v = xt + static_cast<int64_t>(h) * head_dim;
      const int i0 = adjacent ? 2 * j : j;
      const int i1 = adjacent ? 2 * j + 1 : j + half;
      const double c = cos_sin[j], s = cos_sin[half + j];
      const double x0 = v[i0], x1 = v[i1];
      v[i0] = static_cast<float>(x0 * c - x1 * s);
      v[i1] = static_cast<float>(x0 * s + x1 * c);
    }
  }
}

}  // namespace

cudaError_t Rope(CudaContext& ctx, float* x, int64_t n_tokens, int64_t token_stride, int n_heads,
                 int head_dim, int n_rot, const int32_t* pos, float freq_base, RopeLayout layout) {
  KVASIR_CHECK(n_rot >= 0 && n_rot <= head_dim && n_rot % 2 == 0 && n_rot <= 4096);
  KVASIR_CHECK(n_tokens >= 0 && n_heads >= 0);
  if (n_tokens == 0 || n_heads == 0 || n_rot == 0) return cudaGetLastError();
  Staging& s = *ctx.staging;
  s.Begin();
  const size_t pos_at = s.Add(pos, sizeof(int32_t) * n_tokens);
  s.Commit();
  const size_t shared = sizeof(double) * n_rot;
  RopeKernel<<<GridFor(n_tokens, 1), kThreads, shared, ctx.stream>>>(
      x, n_tokens, token_stride, n_heads, head_dim, n_rot, s.Device<int32_t>(pos_at),
      static_cast<double>(freq_base), layout == RopeLayout::kAdjacentPairs);
  return cudaGetLastError();
}

}  // namespace kvasir::kernels::cuda
