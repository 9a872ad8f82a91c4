// MatMul: y[i, r] = sum_c W[r, c] x[i, c].
//  - f32, f16 and bf16 weights: cublasGemmEx with f32 accumulation (CUBLAS_COMPUTE_32F, no TF32).
//    cuBLAS wants both inputs in one type, so for f16 / bf16 weights x is first rounded to that
//    type (round to nearest even) into scratch memory.
//  - Q4_0, Q4_1, Q8_0 weights: a dequantizing kernel in f32 arithmetic. One warp per weight row;
//    lane l decodes blocks l, l + 32, ... of the row and multiplies each decoded block with the
//    same 32 columns of up to 8 tokens of x, so for n <= 8 every weight block is read once; larger
//    n loops over tiles of 8 tokens (grid y). The warp then sums its lanes.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "common/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/quant.cuh"

namespace kvasir::kernels::cuda {
namespace {

constexpr int kQWarps = 8;  // weight rows per block of the quantized kernel
constexpr int kQThreads = 32 * kQWarps;

// kVec: x rows are 16-byte aligned (float4 loads).
template <DType T, int NT, bool kVec>
__global__ __launch_bounds__(kQThreads, 3) void MatMulQuantKernel(const uint8_t* w, int64_t rows,
                                                                  int64_t row_bytes, int64_t nb,
                                                                  const float* x, int64_t n,
                                                                  int64_t x_stride, float* y,
                                                                  int64_t y_stride) {
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kQWarps + threadIdx.x / 32;
  if (r >= rows) return;  // the whole warp: no block-wide synchronization below
  const uint8_t* row = w + r * row_bytes;
  for (int64_t t0 = static_cast<int64_t>(blockIdx.y) * NT; t0 < n;
       t0 += static_cast<int64_t>(gridDim.y) * NT) {
    const int nt = n - t0 < NT ? static_cast<int>(n - t0) : NT;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
#pragma unroll 1
    for (int64_t b = lane; b < nb; b += 32) {
      float wv[kQBlock];
      DecodeBlock<T>(row + b * QBlockBytes<T>::kValue, wv);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (t < nt) {
          const float* xb = x + (t0 + t) * x_stride + b * kQBlock;
          float s = 0.0f;
          if constexpr (kVec) {
            const float4* x4 = reinterpret_cast<const float4*>(xb);
#pragma unroll
            for (int k = 0; k < kQBlock / 4; ++k) {
              const float4 v = __ldg(x4 + k);
              s +=
                  wv[4 * k] * v.x + wv[4 * k + 1] * v.y + wv[4 * k + 2] * v.z + wv[4 * k + 3] * v.w;
            }
          } else {
#pragma unroll
            for (int k = 0; k < kQBlock; ++k) s += wv[k] * __ldg(xb + k);
          }
          acc[t] += s;
        }
      }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float sum = WarpSum(acc[t]);
      if (lane == 0 && t < nt) y[(t0 + t) * y_stride + r] = sum;
    }
  }
}

template <DType T, int NT>
void LaunchQuant(CudaContext& ctx, const WeightView& w, const float* x, int64_t n, int64_t x_stride,
                 float* y, int64_t y_stride, bool vec) {
  const int64_t tiles = (n + NT - 1) / NT;
  const dim3 grid(static_cast<unsigned>((w.rows + kQWarps - 1) / kQWarps),
                  static_cast<unsigned>(tiles < kMaxGridX ? tiles : kMaxGridX));
  const auto* data = static_cast<const uint8_t*>(w.data);
  const int64_t nb = w.cols / kQBlock;
  if (vec) {
    MatMulQuantKernel<T, NT, true><<<grid, kQThreads, 0, ctx.stream>>>(
        data, w.rows, w.row_bytes, nb, x, n, x_stride, y, y_stride);
  } else {
    MatMulQuantKernel<T, NT, false><<<grid, kQThreads, 0, ctx.stream>>>(
        data, w.rows, w.row_bytes, nb, x, n, x_stride, y, y_stride);
  }
}

template <DType T>
void DispatchTokens(CudaContext& ctx, const WeightView& w, const float* x, int64_t n,
                    int64_t x_stride, float* y, int64_t y_stride, bool vec) {
  if (n == 1) return LaunchQuant<T, 1>(ctx, w, x, n, x_stride, y, y_stride, vec);
  if (n == 2) return LaunchQuant<T, 2>(ctx, w, x, n, x_stride, y, y_stride, vec);
  if (n <= 4) return LaunchQuant<T, 4>(ctx, w, x, n, x_stride, y, y_stride, vec);
  return LaunchQuant<T, 8>(ctx, w, x, n, x_stride, y, y_stride, vec);
}

// out[i, c] = x[i, c] rounded to T, packed (cols apart).
template <typename T>
__global__ void ConvertKernel(const float* x, int64_t n, int64_t cols, int64_t x_stride, T* out) {
  const int64_t total = n * cols;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += step) {
    const int64_t i = e / cols, c = e % cols;
    const float v = x[i * x_stride + c];
    if constexpr (std::is_same_v<T, __half>) {
      out[e] = __float2half_rn(v);
    } else {
      out[e] = __float2bfloat16_rn(v);
    }
  }
}

void MatMulFloat(CudaContext& ctx, const WeightView& w, const float* x, int64_t n, int64_t x_stride,
                 float* y, int64_t y_stride) {
  const int64_t elem = w.type == DType::kF32 ? 4 : 2;
  KVASIR_CHECK_MSG(w.row_bytes % elem == 0 && w.row_bytes / elem >= w.cols,
                   "CUDA MatMul: row_bytes is not a whole number of elements >= cols");
  const int64_t lda = w.row_bytes / elem;
  int64_t ldb = n == 1 ? std::max(x_stride, w.cols) : x_stride;
  const int64_t ldc = n == 1 ? std::max(y_stride, w.rows) : y_stride;
  KVASIR_CHECK_MSG(ldb >= w.cols && ldc >= w.rows, "CUDA MatMul: x or y rows overlap");
  KVASIR_CHECK_MSG(w.rows <= INT_MAX && w.cols <= INT_MAX && n <= INT_MAX && lda <= INT_MAX &&
                       ldb <= INT_MAX && ldc <= INT_MAX,
                   "CUDA MatMul: a dimension exceeds cuBLAS's int");
  cudaDataType_t type = CUDA_R_32F;
  const void* b = x;
  if (w.type != DType::kF32) {
    const int64_t total = n * w.cols;
    void* packed = ctx.staging->Scratch(static_cast<size_t>(total) * 2);
    const unsigned grid = GridFor(total, 256);
    if (w.type == DType::kF16) {
      type = CUDA_R_16F;
      ConvertKernel<__half>
          <<<grid, 256, 0, ctx.stream>>>(x, n, w.cols, x_stride, static_cast<__half*>(packed));
    } else {
      type = CUDA_R_16BF;
      ConvertKernel<__nv_bfloat16><<<grid, 256, 0, ctx.stream>>>(
          x, n, w.cols, x_stride, static_cast<__nv_bfloat16*>(packed));
    }
    b = packed;
    ldb = w.cols;
  }
  // Row-major y[n, rows] is column-major [rows, n]: y = W^T(col-major [cols, rows]) * x.
  const float alpha = 1.0f, beta = 0.0f;
  CheckCublas(
      cublasGemmEx(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.rows),
                   static_cast<int>(n), static_cast<int>(w.cols), &alpha, w.data, type,
                   static_cast<int>(lda), b, type, static_cast<int>(ldb), &beta, y, CUDA_R_32F,
                   static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "mat_mul: cublasGemmEx");
}

}  // namespace

bool MatMulSupports(DType type) {
  switch (type) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
      return true;
    default:
      return false;  // Q4_K, Q6_K: not yet
  }
}

cudaError_t MatMul(CudaContext& ctx, const WeightView& w, const float* x, int64_t n,
                   int64_t x_stride, float* y, int64_t y_stride) {
  KVASIR_CHECK_MSG(MatMulSupports(w.type), "CUDA MatMul: unsupported weight type");
  KVASIR_CHECK(n >= 0 && w.rows >= 0 && w.cols >= 0);
  if (n == 0 || w.rows == 0) return cudaGetLastError();
  if (w.cols == 0) {  // empty sums
    for (int64_t i = 0; i < n; ++i) {
      const cudaError_t err =
          cudaMemsetAsync(y + i * y_stride, 0, sizeof(float) * w.rows, ctx.stream);
      if (err != cudaSuccess) return err;
    }
    return cudaGetLastError();
  }
  if (w.type == DType::kF32 || w.type == DType::kF16 || w.type == DType::kBF16) {
    MatMulFloat(ctx, w, x, n, x_stride, y, y_stride);
    return cudaGetLastError();
  }
  KVASIR_CHECK_MSG(w.cols % kQBlock == 0, "CUDA MatMul: cols is not a multiple of the block");
  KVASIR_CHECK_MSG(reinterpret_cast<uintptr_t>(w.data) % 2 == 0 && w.row_bytes % 2 == 0,
                   "CUDA MatMul: quantized weights must be 2-byte aligned");
  const bool vec = reinterpret_cast<uintptr_t>(x) % 16 == 0 && x_stride % 4 == 0;
  switch (w.type) {
    case DType::kQ4_0:
      DispatchTokens<DType::kQ4_0>(ctx, w, x, n, x_stride, y, y_stride, vec);
      break;
    case DType::kQ4_1:
      DispatchTokens<DType::kQ4_1>(ctx, w, x, n, x_stride, y, y_stride, vec);
      break;
    case DType::kQ8_0:
      DispatchTokens<DType::kQ8_0>(ctx, w, x, n, x_stride, y, y_stride, vec);
      break;
    default:
      break;
  }
  return cudaGetLastError();
}

}  // namespace kvasir::kernels::cuda
