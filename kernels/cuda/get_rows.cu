// GetRows (embedding lookup): out[i, :] = W[ids[i], :] as f32, for f32, f16, bf16, Q4_0, Q4_1 and
// Q8_0 rows, bit-exact with the CPU's DequantizeRow. One block per id; the ids are staged.
#include "common/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/quant.cuh"

namespace kvasir::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void GetRowsKernel(DType type, const uint8_t* data, int64_t row_bytes, int64_t cols,
                              const int32_t* ids, int64_t n, float* out) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const uint8_t* row = data + ids[i] * row_bytes;
    float* o = out + i * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = DequantElement(type, row, c);
  }
}

}  // namespace

bool GetRowsSupports(DType type) {
  return type == DType::kF32 || type == DType::kF16 || type == DType::kBF16 ||
         type == DType::kQ4_0 || type == DType::kQ4_1 || type == DType::kQ8_0;
}

cudaError_t GetRows(CudaContext& ctx, const WeightView& w, const int32_t* ids, int64_t n,
                    float* out) {
  KVASIR_CHECK_MSG(GetRowsSupports(w.type), "CUDA GetRows: unsupported weight type");
  KVASIR_CHECK(n >= 0 && w.cols % DTypeBlockSize(w.type) == 0);
  if (n == 0 || w.cols == 0) return cudaGetLastError();
  for (int64_t i = 0; i < n; ++i) {
    KVASIR_CHECK_MSG(ids[i] >= 0 && ids[i] < w.rows, "GetRows: id out of range");
  }
  Staging& s = *ctx.staging;
  s.Begin();
  const size_t ids_at = s.Add(ids, sizeof(int32_t) * n);
  s.Commit();
  GetRowsKernel<<<GridFor(n, 1), kThreads, 0, ctx.stream>>>(
      w.type, static_cast<const uint8_t*>(w.data), w.row_bytes, w.cols, s.Device<int32_t>(ids_at),
      n, out);
  return cudaGetLastError();
}

}  // namespace kvasir::kernels::cuda
