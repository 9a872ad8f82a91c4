// TopK (and Argmax, its k = 1 case): the k largest logits of each row, largest first, the lower
// index first on ties, copied to host arrays before the call returns.
//
// Two stages. Stage 1: one block per (row, segment of 4096 logits) copies its segment into shared
// memory and selects the segment's k best by k passes of a block reduction; pass p takes the best
// element that ranks after the one pass p - 1 took, in the total order (value descending, index
// ascending), so nothing is marked and ties are exact. Stage 2 (rows of more than one segment):
// one block per row selects the k best of the row's segments' candidates the same way.
#include <algorithm>
#include <climits>
#include <cstring>

#include "common/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace kvasir::kernels::cuda {
namespace {

constexpr int kSegment = 4096;
constexpr int kThreads = 256;

struct Pick {
  float v;
  int32_t i;
};

// True when (v1, i1) ranks before (v2, i2). NaN ranks nowhere (never taken).
__device__ __forceinline__ bool Before(float v1, int32_t i1, float v2, int32_t i2) {
  return v1 > v2 || (v1 == v2 && i1 < i2);
}

__device__ __forceinline__ Pick NoPick() { return Pick{NegInf(), INT_MAX}; }

// The best of every thread's pick, returned to every thread. scratch: 32 Picks of shared memory.
__device__ Pick BlockBest(Pick p, Pick* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, p.v, o);
    const int32_t oi = __shfl_xor_sync(kFullMask, p.i, o);
    if (Before(ov, oi, p.v, p.i)) p = Pick{ov, oi};
  }
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = p;
  __syncthreads();
  Pick best = scratch[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) {
    if (Before(scratch[w].v, scratch[w].i, best.v, best.i)) best = scratch[w];
  }
  return best;
}

// k passes over `count` (value, index) pairs that get(e) returns; pass p's pick goes to
// out_v[p], out_i[p] (thread 0). Passes past count write NoPick.
template <typename Get>
__device__ void SelectBest(int64_t count, int32_t k, Get get, Pick* scratch, float* out_v,
                           int32_t* out_i) {
  Pick prev = NoPick();
  for (int32_t p = 0; p < k; ++p) {
    Pick best = NoPick();
    if (p < count) {
      for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
        const Pick c = get(e);
        if ((p == 0 || Before(prev.v, prev.i, c.v, c.i)) && Before(c.v, c.i, best.v, best.i)) {
          best = c;
        }
      }
    }
    best = BlockBest(best, scratch);
    if (threadIdx.x == 0) {
      out_v[p] = best.v;
      out_i[p] = best.i;
    }
    prev = best;
  }
}

// Block (row, segment): the segment's k best into cand[(row * segments + segment) * k + p].
__global__ void TopKSegmentKernel(const float* logits, int64_t n_vocab, int32_t k, int32_t segments,
                                  float* cand_v, int32_t* cand_i) {
  __shared__ float seg[kSegment];
  __shared__ Pick scratch[32];
  const int64_t row = blockIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kSegment;
  const int64_t len = n_vocab - begin < kSegment ? n_vocab - begin : kSegment;
  const float* x = logits + row * n_vocab + begin;
  for (int64_t e = threadIdx.x; e < len; e += blockDim.x) seg[e] = x[e];
  __syncthreads();
  const int64_t at = (row * segments + blockIdx.y) * k;
  SelectBest(
      len, k,
      [&](int64_t e) {
        return Pick{seg[e], static_cast<int32_t>(begin + e)};
      },
      scratch, cand_v + at, cand_i + at);
}

// Block row: the k best of the row's `count` candidates.
__global__ void TopKMergeKernel(const float* cand_v, const int32_t* cand_i, int64_t count,
                                int32_t k, float* out_v, int32_t* out_i) {
  __shared__ Pick scratch[32];
  const int64_t row = blockIdx.x;
  const float* cv = cand_v + row * count;
  const int32_t* ci = cand_i + row * count;
  SelectBest(
      count, k,
      [&](int64_t e) {
        return Pick{cv[e], ci[e]};
      },
      scratch, out_v + row * k, out_i + row * k);
}

}  // namespace

cudaError_t TopK(CudaContext& ctx, const float* logits, int64_t rows, int64_t n_vocab, int32_t k,
                 float* values, int32_t* ids) {
  KVASIR_CHECK(rows >= 0 && n_vocab >= 1 && n_vocab <= INT_MAX && k >= 1);
  if (rows == 0) return cudaGetLastError();
  KVASIR_CHECK_MSG(rows <= INT_MAX, "CUDA TopK: too many rows");
  const int32_t kk = static_cast<int32_t>(std::min<int64_t>(k, n_vocab));
  const int64_t segments = (n_vocab + kSegment - 1) / kSegment;
  KVASIR_CHECK(segments <= kMaxGridX);
  // Scratch: the final [rows, kk] values and ids, then the candidates when there are segments.
  const int64_t out_n = rows * kk, cand_n = segments > 1 ? rows * segments * kk : 0;
  auto* base = static_cast<uint8_t*>(ctx.staging->Scratch(8 * (out_n + cand_n) + 256));
  float* out_v = reinterpret_cast<float*>(base);
  int32_t* out_i = reinterpret_cast<int32_t*>(base + 4 * out_n);
  float* cand_v = out_v;
  int32_t* cand_i = out_i;
  if (segments > 1) {
    cand_v = reinterpret_cast<float*>(base + 8 * out_n);
    cand_i = reinterpret_cast<int32_t*>(base + 8 * out_n + 4 * cand_n);
  }
  const dim3 grid1(static_cast<unsigned>(rows), static_cast<unsigned>(segments));
  TopKSegmentKernel<<<grid1, kThreads, 0, ctx.stream>>>(
      logits, n_vocab, kk, static_cast<int32_t>(segments), cand_v, cand_i);
  if (segments > 1) {
    TopKMergeKernel<<<static_cast<unsigned>(rows), kThreads, 0, ctx.stream>>>(
        cand_v, cand_i, segments * kk, kk, out_v, out_i);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  auto* host = static_cast<uint8_t*>(ctx.staging->HostResult(8 * out_n));
  auto* host_v = reinterpret_cast<float*>(host);
  auto* host_i = reinterpret_cast<int32_t*>(host + 4 * out_n);
  err = cudaMemcpyAsync(host, base, 8 * out_n, cudaMemcpyDeviceToHost, ctx.stream);
  if (err != cudaSuccess) return err;
  err = cudaStreamSynchronize(ctx.stream);
  if (err != cudaSuccess) return err;
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(ids + r * k, host_i + r * kk, sizeof(int32_t) * kk);
    if (values != nullptr) std::memcpy(values + r * k, host_v + r * kk, sizeof(float) * kk);
  }
  return cudaSuccess;
}

}  // namespace kvasir::kernels::cuda
