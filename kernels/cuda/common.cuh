// Device helpers shared by the kernels of this folder: warp and block reductions, f16 / bf16
// loads and stores, and launch-size helpers. Private to kernels/cuda.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kvasir::kernels::cuda {

constexpr unsigned kFullMask = 0xffffffffu;
// The most blocks a grid-stride kernel launches along x.
constexpr int64_t kMaxGridX = 65535;

__device__ __forceinline__ float NegInf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// The sum of v over the block, returned to every thread. blockDim.x is a multiple of 32;
// scratch holds 32 floats of shared memory. Every thread of the block must call it.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

// Element i of an f32 (is_f16 false) or f16 array.
__device__ __forceinline__ float LoadF32OrF16(const void* p, int64_t i, bool is_f16) {
  if (is_f16) return __half2float(static_cast<const __half*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

__device__ __forceinline__ void StoreF32OrF16(void* p, int64_t i, float v, bool is_f16) {
  if (is_f16) {
    static_cast<__half*>(p)[i] = __float2half_rn(v);
  } else {
    static_cast<float*>(p)[i] = v;
  }
}

// An f16 value from its bits.
__device__ __forceinline__ float HalfBitsToFloat(uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}

// A bf16 value from its bits (exact).
__device__ __forceinline__ float Bf16BitsToFloat(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

// Blocks for a grid-stride loop over n items, `per_block` items per block and step.
inline unsigned GridFor(int64_t n, int64_t per_block) {
  int64_t blocks = (n + per_block - 1) / per_block;
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxGridX) blocks = kMaxGridX;
  return static_cast<unsigned>(blocks);
}

}  // namespace kvasir::kernels::cuda
