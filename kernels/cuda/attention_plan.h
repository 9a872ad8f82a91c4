// The plan of the CUDA attention (attention_plan.cc builds it on the host, attention.cu runs it):
// the tiling constants, the per-item and per-block records staged to the device, and the kernel
// launcher. Plain C++, shared by the host compiler and nvcc. Private to kernels/cuda.
//
// Plan: every item's pages covering its key span are copied into one compact page list, so key j
// of an item is slot off + j of that list (no CSR lookup on the device). An item's query rows
// (token i, head g at row i * group + g) are cut into tiles of kTileRows rows; a work unit is one
// tile over a range of keys. An item of a single tile (decode) with many keys, in a batch too
// small to fill the GPU, is split over its keys (flash-decoding): each split writes a normalized
// partial output and its log-sum-exp, and a merge kernel combines them. Items with col_sums get
// one col unit per kChunk keys, run last, once every row's log-sum-exp is known.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define KVASIR_HOST_DEVICE __host__ __device__
#else
#define KVASIR_HOST_DEVICE
#endif

namespace kvasir::kernels::cuda::attention {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRowsPerWarp = 4;
constexpr int kTileRows = kWarps * kRowsPerWarp;
constexpr int kChunk = 32;          // keys per step: one per lane
constexpr int kMinSplitKeys = 256;  // keys per split at least
constexpr int kMaxHeadDim = 256;

struct ItemPlan {
  const float* q;
  float* out;
  float* lse;       // optional
  float* col_sums;  // optional
  int64_t q_stride;
  int64_t out_stride;
  int32_t n_q;
  int32_t n_keys;
  int32_t causal_base;
  int32_t k_page0;  // index in the page list of the item's first K page
  int32_t v_page0;
  int32_t k_off;  // slot of key 0 in that page
  int32_t v_off;
  int32_t lse_base;  // the item's rows in the lse scratch (items with col_sums), else -1
};

struct WorkUnit {
  int32_t item;
  int32_t row0;  // first row of the tile
  int32_t rows;  // <= kTileRows
  int32_t key_begin;
  int32_t key_end;
  int32_t partial;  // -1: write out; else the partial slot (rows at partial * kTileRows)
};

struct MergeUnit {
  int32_t item;
  int32_t rows;
  int32_t partial0;
  int32_t splits;
};

struct ColUnit {
  int32_t item;
  int32_t key0;  // keys [key0, key0 + kChunk)
};

struct Params {
  const ItemPlan* items;
  const WorkUnit* units;
  const MergeUnit* merges;
  const ColUnit* cols;
  const int32_t* pages;
  const void* k_pool;
  const void* v_pool;
  bool k_f16;
  bool v_f16;
  int32_t k_page_size;
  int32_t v_page_size;
  int32_t group;
  int32_t head_dim;
  float scale;
  float* part_out;  // [partials * kTileRows, head_dim]
  float* part_lse;  // [partials * kTileRows]
  float* lse_all;   // rows of the items with col_sums
};

// Keys token i of the item sees: j < Visible.
KVASIR_HOST_DEVICE inline int32_t Visible(const ItemPlan& it, int32_t token) {
  if (it.causal_base < 0) return it.n_keys;
  const int64_t v = static_cast<int64_t>(it.causal_base) + token + 1;
  return v < 0 ? 0 : (v > it.n_keys ? it.n_keys : static_cast<int32_t>(v));
}

// Dynamic shared memory of the main kernel (with_values) or of the col-sums kernel.
inline size_t SharedBytes(int32_t head_dim, bool with_values) {
  return sizeof(float) * (kTileRows * head_dim + (with_values ? 2 : 1) * kChunk * (head_dim + 1));
}

// Enqueues the main kernel over `units` work units, then the merge kernel over `merges` split
// items, then the col-sums kernel over `cols` col units (each may be 0).
cudaError_t Launch(const Params& p, int64_t units, int64_t merges, int64_t cols,
                   cudaStream_t stream);

}  // namespace kvasir::kernels::cuda::attention
