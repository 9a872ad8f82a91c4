// MixSlots: slot dst_slots[o] = sum over its terms t of weights[t] * (slot src_slots[t], or the f32
// row rows + row_offsets[t] where src_slots[t] < 0). Two kernels in stream order: the first
// computes every output into f32 scratch memory (one block per output), the second stores them
// into their slots, so all sources are read before any slot is written and outputs may overwrite
// their own sources. The plan arrays (all but rows) are staged.
#include <vector>

#include "common/base/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace kvasir::kernels::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void MixComputeKernel(const void* pool, int32_t head_dim, bool is_f16, int64_t n_out,
                                 const int64_t* term_begin, const int64_t* src_slots,
                                 const int64_t* row_offsets, const float* weights,
                                 const float* rows, float* mixed) {
  for (int64_t o = blockIdx.x; o < n_out; o += gridDim.x) {
    for (int32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
      float acc = 0.0f;
      for (int64_t t = term_begin[o]; t < term_begin[o + 1]; ++t) {
        const int64_t slot = src_slots[t];
        const float v =
            slot >= 0 ? LoadF32OrF16(pool, slot * head_dim + d, is_f16) : rows[row_offsets[t] + d];
        acc += weights[t] * v;
      }
      mixed[o * head_dim + d] = acc;
    }
  }
}

__global__ void MixStoreKernel(void* pool, int32_t head_dim, bool is_f16, int64_t n_out,
                               const int64_t* dst_slots, const float* mixed) {
  for (int64_t o = blockIdx.x; o < n_out; o += gridDim.x) {
    const int64_t base = dst_slots[o] * head_dim;
    for (int32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
      StoreF32OrF16(pool, base + d, mixed[o * head_dim + d], is_f16);
    }
  }
}

}  // namespace

cudaError_t MixSlots(CudaContext& ctx, const SlotMix& m) {
  KVASIR_CHECK(m.pool.dtype == DType::kF32 || m.pool.dtype == DType::kF16);
  KVASIR_CHECK(m.n_out >= 0 && m.pool.head_dim >= 0);
  if (m.n_out == 0 || m.pool.head_dim == 0) return cudaGetLastError();
  KVASIR_CHECK(m.term_begin[0] >= 0);
  for (int64_t o = 0; o < m.n_out; ++o) {
    KVASIR_CHECK_MSG(m.term_begin[o + 1] >= m.term_begin[o], "MixSlots: term_begin decreases");
    KVASIR_CHECK_MSG(m.dst_slots[o] >= 0, "MixSlots: negative destination slot");
  }
  const int64_t terms = m.term_begin[m.n_out];
  // Row offsets may be absent when every term reads a slot.
  bool any_row = false;
  for (int64_t t = 0; t < terms; ++t) any_row = any_row || m.src_slots[t] < 0;
  KVASIR_CHECK_MSG(!any_row || (m.rows != nullptr && m.row_offsets != nullptr),
                   "MixSlots: a term reads a row but rows or row_offsets is null");
  Staging& s = *ctx.staging;
  s.Begin();
  const size_t dst_at = s.Add(m.dst_slots, sizeof(int64_t) * m.n_out);
  const size_t begin_at = s.Add(m.term_begin, sizeof(int64_t) * (m.n_out + 1));
  const size_t src_at = s.Add(m.src_slots, sizeof(int64_t) * terms);
  size_t offsets_at = 0;
  if (any_row) {
    offsets_at = s.Add(m.row_offsets, sizeof(int64_t) * terms);
  } else {
    const std::vector<int64_t> zeros(static_cast<size_t>(terms), 0);
    offsets_at = s.Add(zeros);
  }
  const size_t weights_at = s.Add(m.weights, sizeof(float) * terms);
  s.Commit();
  const int64_t hd = m.pool.head_dim;
  float* mixed = static_cast<float*>(s.Scratch(sizeof(float) * m.n_out * hd));
  const bool is_f16 = m.pool.dtype == DType::kF16;
  const unsigned grid = GridFor(m.n_out, 1);
  MixComputeKernel<<<grid, kThreads, 0, ctx.stream>>>(
      m.pool.data, m.pool.head_dim, is_f16, m.n_out, s.Device<int64_t>(begin_at),
      s.Device<int64_t>(src_at), s.Device<int64_t>(offsets_at), s.Device<float>(weights_at), m.rows,
      mixed);
  MixStoreKernel<<<grid, kThreads, 0, ctx.stream>>>(m.pool.data, m.pool.head_dim, is_f16, m.n_out,
                                                    s.Device<int64_t>(dst_at), mixed);
  return cudaGetLastError();
}

}  // namespace kvasir::kernels::cuda
