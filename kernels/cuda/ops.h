// The CUDA operations, one per .cu file of this folder, with the semantics of kernels/backend.h
// (and of the CPU references in kernels/cpu). Each validates its arguments on the host
// (KVASIR_CHECK, as the CPU kernels do), stages its plan arrays through ctx.staging, enqueues its
// kernels on ctx.stream and returns cudaGetLastError(); CudaBackend checks that. Data arrays are
// device memory, plan arrays host memory, as backend.h says.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cuda/context.h"
#include "kernels/types.h"

namespace kvasir::kernels::cuda {

// get_rows.cu: out[i, :] = W[ids[i], :] as f32, for f32, f16, bf16, Q4_0, Q4_1 and Q8_0 weights.
bool GetRowsSupports(DType type);
cudaError_t GetRows(CudaContext& ctx, const WeightView& w, const int32_t* ids, int64_t n,
                    float* out);
// rms_norm.cu
cudaError_t RmsNorm(CudaContext& ctx, const float* x, const float* weight, int64_t n, int64_t dim,
                    float eps, float* out);
// rope.cu: angles in double precision, as RopeRef.
cudaError_t Rope(CudaContext& ctx, float* x, int64_t n_tokens, int64_t token_stride, int n_heads,
                 int head_dim, int n_rot, const int32_t* pos, float freq_base, RopeLayout layout);
// silu_mul.cu
cudaError_t SiluMul(CudaContext& ctx, const float* gate, const float* up, int64_t n, float* out);
cudaError_t Add(CudaContext& ctx, float* y, const float* x, int64_t n);
// mat_mul.cu: float weights through cuBLAS (x rounded to the weight's 16-bit type for f16 and
// bf16), Q4_0 / Q4_1 / Q8_0 through a dequantizing kernel with f32 arithmetic.
bool MatMulSupports(DType type);
cudaError_t MatMul(CudaContext& ctx, const WeightView& w, const float* x, int64_t n,
                   int64_t x_stride, float* y, int64_t y_stride);
// write_slots.cu
cudaError_t WriteSlots(CudaContext& ctx, const SlotWrites& writes);
// mix_slots.cu
cudaError_t MixSlots(CudaContext& ctx, const SlotMix& mix);
// attention.cu
cudaError_t Attention(CudaContext& ctx, const AttentionBatch& batch);
// merge_attention.cu
cudaError_t MergeAttention(CudaContext& ctx, float* out_a, float* lse_a, const float* out_b,
                           const float* lse_b, int64_t rows, int32_t head_dim);
// sampling.cu: the k largest of each row into host arrays (values may be null); waits for the
// stream. Argmax is TopK with k = 1.
cudaError_t TopK(CudaContext& ctx, const float* logits, int64_t rows, int64_t n_vocab, int32_t k,
                 float* values, int32_t* ids);

}  // namespace kvasir::kernels::cuda
