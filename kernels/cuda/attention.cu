// The CUDA attention kernels (the plan they run is described in attention_plan.h).
//
// Main kernel: one block of 4 warps per work unit; warp w owns the tile's rows w, w + 4, w + 8,
// w + 12, so all the query heads of a KV head share every key the block loads. Keys go in chunks
// of 32 through shared memory (converted to f32; rows padded by one float so that lane j reads
// key j without bank conflicts): lane j scores key j against each of the warp's rows, an online
// softmax (running max and sum per row) rescales the accumulators, and each lane accumulates the
// output dimensions lane, lane + 32, ... A row that sees no key gets out = 0, lse = -inf.
//
// Merge kernel: one block per split item, out = sum_s w_s out_s / sum_s w_s with
// w_s = exp(lse_s - max lse).
//
// Col-sums kernel: one block per 32 keys of an item, rescoring every row of the item against them
// with the row's final log-sum-exp; blocks own their keys, so col_sums[j] += sum needs no atomics.
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/common.cuh"

namespace kvasir::kernels::cuda::attention {
namespace {

constexpr size_t kDefaultSharedBytes = 48 * 1024;

// Element offset in the pool of key j of a span starting at slot `off` of page list entry page0.
__device__ inline int64_t SlotElem(const int32_t* pages, int32_t page0, int32_t off,
                                   int32_t page_size, int32_t head_dim, int32_t j) {
  const int32_t s = off + j;
  const int64_t page = pages[page0 + s / page_size];
  return (page * page_size + s % page_size) * head_dim;
}

// Loads keys [c0, c0 + cn) of the item into rows of `dst` (stride hd + 1), zeros past cn.
// offsets: kChunk int64 of shared memory. Ends with a block synchronization.
__device__ inline void LoadChunk(const int32_t* pages, int32_t page0, int32_t off,
                                 int32_t page_size, const void* pool, bool f16, int32_t hd,
                                 int32_t c0, int cn, int64_t* offsets, float* dst) {
  if (threadIdx.x < kChunk) {
    const int j = threadIdx.x;
    offsets[j] = j < cn ? SlotElem(pages, page0, off, page_size, hd, c0 + j) : 0;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int j = warp; j < kChunk; j += kWarps) {
    for (int d = lane; d < hd; d += 32) {
      dst[j * (hd + 1) + d] = j < cn ? LoadF32OrF16(pool, offsets[j] + d, f16) : 0.0f;
    }
  }
  __syncthreads();
}

// Rows [row0, row0 + rows) of the item's queries into q_s ([kTileRows, hd], zeros past rows).
__device__ inline void LoadQueries(const ItemPlan& it, int32_t group, int32_t hd, int32_t row0,
                                   int32_t rows, float* q_s) {
  for (int idx = threadIdx.x; idx < kTileRows * hd; idx += blockDim.x) {
    const int lr = idx / hd, d = idx % hd;
    float v = 0.0f;
    if (lr < rows) {
      const int32_t r = row0 + lr, i = r / group, g = r % group;
      v = it.q[i * it.q_stride + static_cast<int64_t>(g) * hd + d];
    }
    q_s[idx] = v;
  }
}

// q_s row lr . k_s row lane (stride hd + 1).
__device__ inline float Dot(const float* q_row, const float* k_row, int32_t hd) {
  float s = 0.0f;
#pragma unroll 4
  for (int d = 0; d < hd; ++d) s += q_row[d] * k_row[d];
  return s;
}

template <int KD>  // head_dim <= 32 * KD
__global__ __launch_bounds__(kThreads) void AttentionKernel(Params p) {
  extern __shared__ float smem[];
  __shared__ int64_t k_ofs[kChunk], v_ofs[kChunk];
  __shared__ float p_s[kWarps][kRowsPerWarp][kChunk];
  const int32_t hd = p.head_dim, group = p.group;
  float* q_s = smem;                  // [kTileRows, hd]
  float* k_s = q_s + kTileRows * hd;  // [kChunk, hd + 1]
  float* v_s = k_s + kChunk * (hd + 1);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const WorkUnit u = p.units[blockIdx.x];
  const ItemPlan it = p.items[u.item];
  LoadQueries(it, group, hd, u.row0, u.rows, q_s);

  // This warp's rows: local row warp + kWarps * r for r < nr.
  int nr = 0;
  int32_t nv[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int lr = warp + kWarps * r;
    nv[r] = lr < u.rows ? Visible(it, (u.row0 + lr) / group) : 0;
    if (lr < u.rows) nr = r + 1;
  }
  // The tile's last token sees the most keys.
  const int32_t key_end = min(u.key_end, Visible(it, (u.row0 + u.rows - 1) / group));
  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][KD];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = NegInf();
    l[r] = 0.0f;
#pragma unroll
    for (int k = 0; k < KD; ++k) acc[r][k] = 0.0f;
  }

  for (int32_t c0 = u.key_begin; c0 < key_end; c0 += kChunk) {
    const int cn = min(kChunk, key_end - c0);
    __syncthreads();  // the previous chunk (and the offsets) are no longer read
    if (threadIdx.x < kChunk) {
      const int j = threadIdx.x;
      v_ofs[j] = j < cn ? SlotElem(p.pages, it.v_page0, it.v_off, p.v_page_size, hd, c0 + j) : 0;
    }
    LoadChunk(p.pages, it.k_page0, it.k_off, p.k_page_size, p.k_pool, p.k_f16, hd, c0, cn, k_ofs,
              k_s);
    for (int j = warp; j < kChunk; j += kWarps) {
      for (int d = lane; d < hd; d += 32) {
        v_s[j * (hd + 1) + d] = j < cn ? LoadF32OrF16(p.v_pool, v_ofs[j] + d, p.v_f16) : 0.0f;
      }
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (r >= nr) break;  // warp-uniform
      const float dot = Dot(q_s + (warp + kWarps * r) * hd, k_s + lane * (hd + 1), hd);
      const bool valid = lane < cn && c0 + lane < nv[r];
      const float s = valid ? dot * p.scale : NegInf();
      const float m_new = fmaxf(m[r], WarpMax(s));
      float pr = 0.0f, alpha = 1.0f;
      if (m_new != NegInf()) {  // warp-uniform; else no key seen yet: nothing changes
        pr = valid ? expf(s - m_new) : 0.0f;
        alpha = expf(m[r] - m_new);  // 0 while m was -inf
      }
      l[r] = l[r] * alpha + WarpSum(pr);
      m[r] = m_new;
#pragma unroll
      for (int k = 0; k < KD; ++k) acc[r][k] *= alpha;
      p_s[warp][r][lane] = pr;
    }
    __syncwarp();
    for (int j = 0; j < cn; ++j) {
      float vv[KD];
#pragma unroll
      for (int k = 0; k < KD; ++k) {
        const int d = lane + 32 * k;
        vv[k] = d < hd ? v_s[j * (hd + 1) + d] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        if (r >= nr) break;
        const float pj = p_s[warp][r][j];
#pragma unroll
        for (int k = 0; k < KD; ++k) acc[r][k] += pj * vv[k];
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    if (r >= nr) break;
    const int lr = warp + kWarps * r;
    const int32_t row = u.row0 + lr, i = row / group, g = row % group;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    const float lse = l[r] > 0.0f ? m[r] + logf(l[r]) : NegInf();
    float* o;
    if (u.partial < 0) {
      o = it.out + i * it.out_stride + static_cast<int64_t>(g) * hd;
      if (lane == 0 && it.lse != nullptr) it.lse[static_cast<int64_t>(i) * group + g] = lse;
      if (lane == 0 && it.lse_base >= 0) p.lse_all[it.lse_base + row] = lse;
    } else {
      const int64_t prow = static_cast<int64_t>(u.partial) * kTileRows + lr;
      o = p.part_out + prow * hd;
      if (lane == 0) p.part_lse[prow] = lse;
    }
#pragma unroll
    for (int k = 0; k < KD; ++k) {
      const int d = lane + 32 * k;
      if (d < hd) o[d] = acc[r][k] * inv;
    }
  }
}

// One block per split item: out = sum_s w_s out_s / sum_s w_s, w_s = exp(lse_s - max lse).
__global__ void AttentionMergeKernel(Params p) {
  const MergeUnit mu = p.merges[blockIdx.x];
  const ItemPlan it = p.items[mu.item];
  const int32_t hd = p.head_dim, group = p.group;
  for (int idx = threadIdx.x; idx < mu.rows * hd; idx += blockDim.x) {
    const int lr = idx / hd, d = idx % hd;
    float max_lse = NegInf();
    for (int s = 0; s < mu.splits; ++s) {
      max_lse = fmaxf(max_lse, p.part_lse[(mu.partial0 + s) * kTileRows + lr]);
    }
    float o = 0.0f, w_sum = 0.0f;
    if (max_lse != NegInf()) {
      for (int s = 0; s < mu.splits; ++s) {
        const int64_t prow = static_cast<int64_t>(mu.partial0 + s) * kTileRows + lr;
        const float w = expf(p.part_lse[prow] - max_lse);
        w_sum += w;
        o += w * p.part_out[prow * hd + d];
      }
    }
    const int32_t i = lr / group, g = lr % group;
    it.out[i * it.out_stride + static_cast<int64_t>(g) * hd + d] = w_sum > 0.0f ? o / w_sum : 0.0f;
    if (d == 0) {
      const float lse = w_sum > 0.0f ? max_lse + logf(w_sum) : NegInf();
      if (it.lse != nullptr) it.lse[static_cast<int64_t>(i) * group + g] = lse;
      if (it.lse_base >= 0) p.lse_all[it.lse_base + lr] = lse;
    }
  }
}

// One block per (item, 32 keys): col_sums[j] += sum over the item's rows of exp(s_j - lse_row).
__global__ __launch_bounds__(kThreads) void AttentionColSumsKernel(Params p) {
  extern __shared__ float smem[];
  __shared__ int64_t k_ofs[kChunk];
  __shared__ float col_s[kWarps][kChunk];
  const int32_t hd = p.head_dim, group = p.group;
  float* q_s = smem;
  float* k_s = q_s + kTileRows * hd;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const ColUnit cu = p.cols[blockIdx.x];
  const ItemPlan it = p.items[cu.item];
  const int cn = min(kChunk, it.n_keys - cu.key0);
  LoadChunk(p.pages, it.k_page0, it.k_off, p.k_page_size, p.k_pool, p.k_f16, hd, cu.key0, cn, k_ofs,
            k_s);
  const int32_t rows = it.n_q * group;
  // Tokens before first_token see none of these keys.
  const int32_t first_token = it.causal_base < 0 ? 0 : max(0, cu.key0 - it.causal_base);
  float col = 0.0f;  // lane's key, over this warp's rows
  for (int32_t row0 = min(rows, first_token * group); row0 < rows; row0 += kTileRows) {
    __syncthreads();  // the previous tile's queries are no longer read
    LoadQueries(it, group, hd, row0, min(kTileRows, rows - row0), q_s);
    __syncthreads();
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int lr = warp + kWarps * r;
      const int32_t row = row0 + lr;
      if (row >= rows) break;
      const float lse = p.lse_all[it.lse_base + row];
      const float s = Dot(q_s + lr * hd, k_s + lane * (hd + 1), hd) * p.scale;
      if (lane < cn && cu.key0 + lane < Visible(it, row / group) && lse != NegInf()) {
        col += expf(s - lse);
      }
    }
  }
  col_s[warp][lane] = col;
  __syncthreads();
  if (threadIdx.x < cn) {
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) total += col_s[w][threadIdx.x];
    it.col_sums[cu.key0 + threadIdx.x] += total;
  }
}

// Launches a kernel with `shared` bytes of dynamic shared memory, raising the kernel's limit when
// that and its static shared memory (under 4 KiB) pass the default 48 KiB.
template <typename Kernel>
void LaunchWithShared(Kernel kernel, unsigned blocks, size_t shared, const Params& p,
                      cudaStream_t stream) {
  if (shared + 4096 > kDefaultSharedBytes) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(shared));
  }
  kernel<<<blocks, kThreads, shared, stream>>>(p);
}

}  // namespace

cudaError_t Launch(const Params& p, int64_t units, int64_t merges, int64_t cols,
                   cudaStream_t stream) {
  const int32_t hd = p.head_dim;
  if (units > 0) {
    const unsigned blocks = static_cast<unsigned>(units);
    const size_t shared = SharedBytes(hd, true);
    if (hd <= 32) {
      LaunchWithShared(AttentionKernel<1>, blocks, shared, p, stream);
    } else if (hd <= 64) {
      LaunchWithShared(AttentionKernel<2>, blocks, shared, p, stream);
    } else if (hd <= 128) {
      LaunchWithShared(AttentionKernel<4>, blocks, shared, p, stream);
    } else {
      LaunchWithShared(AttentionKernel<8>, blocks, shared, p, stream);
    }
  }
  if (merges > 0) {
    AttentionMergeKernel<<<static_cast<unsigned>(merges), kThreads, 0, stream>>>(p);
  }
  if (cols > 0) {
    LaunchWithShared(AttentionColSumsKernel, static_cast<unsigned>(cols), SharedBytes(hd, false), p,
                     stream);
  }
  return cudaGetLastError();
}

}  // namespace kvasir::kernels::cuda::attention
