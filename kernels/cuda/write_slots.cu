// WriteSlots: slot dst_slots[i] of the pool = row src + src_offsets[i] (head_dim floats),
// converted to the pool's dtype (f16: round to nearest even). One block per row; the two index
// arrays are staged.
#include "common/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace kvasir::kernels::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void WriteSlotsKernel(void* pool, int32_t head_dim, bool is_f16, const float* src,
                                 const int64_t* src_offsets, const int64_t* dst_slots, int64_t n) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const float* row = src + src_offsets[i];
    const int64_t base = dst_slots[i] * head_dim;
    for (int32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
      StoreF32OrF16(pool, base + d, row[d], is_f16);
    }
  }
}

}  // namespace

cudaError_t WriteSlots(CudaContext& ctx, const SlotWrites& w) {
  KVASIR_CHECK(w.pool.dtype == DType::kF32 || w.pool.dtype == DType::kF16);
  KVASIR_CHECK(w.n >= 0 && w.pool.head_dim >= 0);
  if (w.n == 0 || w.pool.head_dim == 0) return cudaGetLastError();
  for (int64_t i = 0; i < w.n; ++i) {
    KVASIR_CHECK_MSG(w.dst_slots[i] >= 0, "WriteSlots: negative slot");
  }
  Staging& s = *ctx.staging;
  s.Begin();
  const size_t src_at = s.Add(w.src_offsets, sizeof(int64_t) * w.n);
  const size_t dst_at = s.Add(w.dst_slots, sizeof(int64_t) * w.n);
  s.Commit();
  WriteSlotsKernel<<<GridFor(w.n, 1), kThreads, 0, ctx.stream>>>(
      w.pool.data, w.pool.head_dim, w.pool.dtype == DType::kF16, w.src, s.Device<int64_t>(src_at),
      s.Device<int64_t>(dst_at), w.n);
  return cudaGetLastError();
}

}  // namespace kvasir::kernels::cuda
