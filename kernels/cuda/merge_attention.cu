// MergeAttention: out_a = (exp(lse_a) out_a + exp(lse_b) out_b) / (exp(lse_a) + exp(lse_b)) and
// lse_a = log(exp(lse_a) + exp(lse_b)), row by row, with the CPU's cases for a part that saw no
// key (lse = -inf). One block per row: every thread reads the row's two lse values before thread 0
// replaces lse_a.
#include "common/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace kvasir::kernels::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void MergeAttentionKernel(float* out_a, float* lse_a, const float* out_b,
                                     const float* lse_b, int64_t rows, int32_t head_dim) {
  const float neg_inf = NegInf();
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float la = lse_a[r], lb = lse_b[r];
    __syncthreads();              // every thread has read lse_a[r] before it is replaced below
    if (lb == neg_inf) continue;  // b saw no key: a unchanged
    float* oa = out_a + r * head_dim;
    const float* ob = out_b + r * head_dim;
    if (la == neg_inf) {  // a saw no key: take b
      for (int32_t d = threadIdx.x; d < head_dim; d += blockDim.x) oa[d] = ob[d];
      if (threadIdx.x == 0) lse_a[r] = lb;
      continue;
    }
    const float m = fmaxf(la, lb);
    const float wa = expf(la - m), wb = expf(lb - m);
    const float inv = 1.0f / (wa + wb);
    for (int32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
      oa[d] = (wa * oa[d] + wb * ob[d]) * inv;
    }
    if (threadIdx.x == 0) lse_a[r] = m + logf(wa + wb);
  }
}

}  // namespace

cudaError_t MergeAttention(CudaContext& ctx, float* out_a, float* lse_a, const float* out_b,
                           const float* lse_b, int64_t rows, int32_t head_dim) {
  KVASIR_CHECK(rows >= 0 && head_dim >= 0);
  if (rows == 0) return cudaGetLastError();
  MergeAttentionKernel<<<GridFor(rows, 1), kThreads, 0, ctx.stream>>>(out_a, lse_a, out_b, lse_b,
                                                                      rows, head_dim);
  return cudaGetLastError();
}

}  // namespace kvasir::kernels::cuda
