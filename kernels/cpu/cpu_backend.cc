#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/base/check.h"

namespace kvasir::kernels::cpu {
namespace {

// True on a thread while it runs a task of CpuBackend::ForEach / HostParallelFor: nested
// operations then run inline (the pool takes one job at a time).
thread_local bool t_inside_pool = false;

// The visible key counts of an item's queries, as AttentionArgs::n_visible wants them.
const int32_t* VisibleCounts(const AttentionItem& item, std::vector<int32_t>& storage) {
  if (item.causal_base < 0) return nullptr;
  storage.resize(item.n_q);
  for (int32_t i = 0; i < item.n_q; ++i) storage[i] = item.causal_base + i + 1;
  return storage.data();
}

AttentionArgs ItemArgs(const AttentionBatch& b, const AttentionItem& item,
                       std::vector<int32_t>& visible) {
  AttentionArgs a;
  a.q = item.q;
  a.q_token_stride = item.q_token_stride;
  a.n_q = item.n_q;
  a.group = b.group;
  a.head_dim = b.head_dim;
  a.scale = b.scale;
  a.k = b.k;
  a.k_row = item.k_row;
  a.k_begin = item.k_begin;
  a.v = b.v;
  a.v_row = item.v_row;
  a.v_begin = item.v_begin;
  a.n_keys = item.n_keys;
  a.n_visible = VisibleCounts(item, visible);
  a.out = item.out;
  a.out_token_stride = item.out_token_stride;
  a.lse = item.lse;
  a.col_sums = item.col_sums;
  return a;
}

size_t ElemBytes(DType t) { return t == DType::kF16 ? 2 : 4; }

void* SlotAddress(const SlotPool& p, int64_t slot) {
  return static_cast<uint8_t*>(p.data) +
         slot * p.head_dim * static_cast<int64_t>(ElemBytes(p.dtype));
}

void StoreSlot(const SlotPool& p, int64_t slot, const float* x) {
  void* dst = SlotAddress(p, slot);
  if (p.dtype == DType::kF16) {
    ConvertF32ToF16(x, p.head_dim, static_cast<uint16_t*>(dst));
  } else {
    std::memcpy(dst, x, sizeof(float) * p.head_dim);
  }
}

void LoadSlot(const SlotPool& p, int64_t slot, float* x) {
  const void* src = SlotAddress(p, slot);
  if (p.dtype == DType::kF16) {
    ConvertF16ToF32(static_cast<const uint16_t*>(src), p.head_dim, x);
  } else {
    std::memcpy(x, src, sizeof(float) * p.head_dim);
  }
}

// Output o of a mix, as f32 into out[head_dim].
void MixOne(const SlotMix& m, int64_t o, float* out, float* tmp) {
  const int32_t hd = m.pool.head_dim;
  std::fill(out, out + hd, 0.0f);
  for (int64_t t = m.term_begin[o]; t < m.term_begin[o + 1]; ++t) {
    const float* src = tmp;
    if (m.src_slots[t] >= 0) {
      LoadSlot(m.pool, m.src_slots[t], tmp);
    } else {
      src = m.rows + m.row_offsets[t];
    }
    const float w = m.weights[t];
    for (int32_t d = 0; d < hd; ++d) out[d] += w * src[d];
  }
}

// Row r's k largest, largest first, lower index first on ties.
void TopKRow(const float* x, int64_t n, int32_t k, float* values, int32_t* ids,
             std::vector<int32_t>& order) {
  order.resize(n);
  for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
  const int64_t kk = std::min<int64_t>(k, n);
  std::partial_sort(order.begin(), order.begin() + kk, order.end(),
                    [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  for (int64_t i = 0; i < kk; ++i) {
    ids[i] = order[i];
    values[i] = x[order[i]];
  }
}

int32_t ArgmaxRow(const float* x, int64_t n) {
  int32_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

}  // namespace

int64_t CpuBackend::Chunks(int64_t items, int64_t elements) const {
  // Below this many elements a parallel job costs more than it saves.
  constexpr int64_t kParallelElements = int64_t{1} << 15;
  if (elements < kParallelElements || items <= 1) return 1;
  return std::min<int64_t>(items, 4 * host_threads());
}

template <typename F>
void CpuBackend::ForEach(int64_t n, F&& fn) {
  if (ctx_.pool == nullptr || t_inside_pool || n <= 1 || ctx_.pool->num_threads() == 1) {
    for (int64_t t = 0; t < n; ++t) fn(t);
    return;
  }
  ctx_.pool->ParallelFor(n, [&](int64_t t, int) {
    t_inside_pool = true;
    fn(t);
    t_inside_pool = false;
  });
}

std::string CpuBackend::Describe() const {
  return std::string("CPU, ") + std::to_string(host_threads()) + " threads, " + ActiveIsa();
}

bool CpuBackend::Supports(Op op, DType type) const {
  switch (op) {
    case Op::kWriteSlots:
    case Op::kAttention:
    case Op::kMixSlots:
      return type == DType::kF32 || type == DType::kF16;
    default:
      return true;  // every weight type of common/base/dtype.h
  }
}

void* CpuBackend::Allocate(size_t bytes) {
  return std::aligned_alloc(256, std::max<size_t>(256, (bytes + 255) / 256 * 256));
}
void CpuBackend::Free(void* p) { std::free(p); }
void CpuBackend::Upload(void* dst, const void* host_src, size_t bytes) {
  if (bytes > 0) std::memcpy(dst, host_src, bytes);
}
void CpuBackend::Download(void* host_dst, const void* src, size_t bytes) {
  if (bytes > 0) std::memcpy(host_dst, src, bytes);
}
void CpuBackend::Fill(void* dst, uint8_t byte, size_t bytes) {
  if (bytes > 0) std::memset(dst, byte, bytes);
}

void CpuBackend::Copy(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) std::memmove(dst, src, bytes);
}

void CpuBackend::HostParallelFor(int64_t n,
                                 const std::function<void(int64_t task, int thread)>& fn) {
  if (ctx_.pool == nullptr || t_inside_pool || n <= 1) {
    for (int64_t t = 0; t < n; ++t) fn(t, 0);
    return;
  }
  ctx_.pool->ParallelFor(n, [&](int64_t t, int thread) {
    t_inside_pool = true;
    fn(t, thread);
    t_inside_pool = false;
  });
}

void CpuBackend::GetRows(const WeightView& w, const int32_t* ids, int64_t n, float* out) {
  cpu::GetRows(w, ids, n, out);
}
void CpuBackend::RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps,
                         float* out) {
  cpu::RmsNorm(x, weight, n, dim, eps, out);
}
void CpuBackend::Rope(float* x, int64_t n_tokens, int64_t token_stride, int n_heads, int head_dim,
                      int n_rot, const int32_t* pos, float freq_base, RopeLayout layout) {
  // Tokens are independent: chunks of them on the pool give the same bits.
  const int64_t chunks = Chunks(n_tokens, n_tokens * n_heads * head_dim);
  ForEach(chunks, [&](int64_t c) {
    const int64_t t0 = n_tokens * c / chunks, t1 = n_tokens * (c + 1) / chunks;
    cpu::Rope(x + t0 * token_stride, t1 - t0, token_stride, n_heads, head_dim, n_rot, pos + t0,
              freq_base, layout);
  });
}
void CpuBackend::SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  cpu::SiluMul(gate, up, n, out);
}
void CpuBackend::Add(float* y, const float* x, int64_t n) { cpu::Add(y, x, n); }
void CpuBackend::MatMul(const WeightView& w, const float* x, int64_t n, int64_t x_stride, float* y,
                        int64_t y_stride) {
  if (t_inside_pool) {
    CpuContext inline_ctx;  // no pool: single-threaded on this thread
    cpu::MatMul(inline_ctx, w, x, n, x_stride, y, y_stride);
    return;
  }
  cpu::MatMul(ctx_, w, x, n, x_stride, y, y_stride);
}

void CpuBackend::WriteSlots(const SlotWrites& s) {
  const int64_t chunks = Chunks(s.n, s.n * s.pool.head_dim);
  ForEach(chunks, [&](int64_t c) {
    for (int64_t i = s.n * c / chunks; i < s.n * (c + 1) / chunks; ++i) {
      StoreSlot(s.pool, s.dst_slots[i], s.src + s.src_offsets[i]);
    }
  });
}

void CpuBackend::Attention(const AttentionBatch& b) {
  const int64_t n = static_cast<int64_t>(b.items.size());
  const int threads = ctx_.pool != nullptr ? ctx_.pool->num_threads() : 1;
  // Fewer items than twice the threads (one sequence: one item per KV head) leave threads idle:
  // then one task per query head, where an item allows it (no column sums, which its heads would
  // add to together; a log-sum-exp only for one query, whose heads' values are adjacent). A head's
  // scores, softmax and sums run the same instructions either way, so the results are the same.
  bool split = b.group > 1 && threads > 1 && n < 2 * threads;
  for (int64_t i = 0; split && i < n; ++i) {
    split = b.items[i].col_sums == nullptr && (b.items[i].lse == nullptr || b.items[i].n_q == 1);
  }
  if (!split) {
    ForEach(n, [&](int64_t i) {
      thread_local std::vector<int32_t> visible;
      cpu::Attention(ItemArgs(b, b.items[i], visible));
    });
    return;
  }
  ForEach(n * b.group, [&](int64_t task) {
    thread_local std::vector<int32_t> visible;
    const int32_t head = static_cast<int32_t>(task % b.group);
    AttentionArgs a = ItemArgs(b, b.items[task / b.group], visible);
    a.group = 1;
    a.q += static_cast<int64_t>(head) * b.head_dim;
    a.out += static_cast<int64_t>(head) * b.head_dim;
    if (a.lse != nullptr) a.lse += head;
    cpu::Attention(a);
  });
}

void CpuBackend::MergeAttention(float* out_a, float* lse_a, const float* out_b, const float* lse_b,
                                int64_t rows, int32_t head_dim) {
  cpu::MergeAttention(out_a, lse_a, out_b, lse_b, rows, head_dim);
}

void CpuBackend::MixSlots(const SlotMix& m) { MixSlotsRef(m); }

void CpuBackend::Argmax(const float* logits, int64_t rows, int64_t n_vocab, int32_t* ids) {
  ForEach(rows, [&](int64_t r) { ids[r] = ArgmaxRow(logits + r * n_vocab, n_vocab); });
}

void CpuBackend::TopK(const float* logits, int64_t rows, int64_t n_vocab, int32_t k, float* values,
                      int32_t* ids) {
  ForEach(rows, [&](int64_t r) {
    thread_local std::vector<int32_t> order;
    TopKRow(logits + r * n_vocab, n_vocab, k, values + r * k, ids + r * k, order);
  });
}

std::unique_ptr<CpuBackend> NewCpuBackend(ThreadPool* pool) {
  return std::make_unique<CpuBackend>(pool);
}

void WriteSlotsRef(const SlotWrites& s) {
  for (int64_t i = 0; i < s.n; ++i) StoreSlot(s.pool, s.dst_slots[i], s.src + s.src_offsets[i]);
}

void MixSlotsRef(const SlotMix& m) {
  const int32_t hd = m.pool.head_dim;
  std::vector<float> out(static_cast<size_t>(m.n_out) * hd), tmp(hd);
  for (int64_t o = 0; o < m.n_out; ++o) MixOne(m, o, out.data() + o * hd, tmp.data());
  for (int64_t o = 0; o < m.n_out; ++o) StoreSlot(m.pool, m.dst_slots[o], out.data() + o * hd);
}

void AttentionBatchRef(const AttentionBatch& b) {
  std::vector<int32_t> visible;
  for (const AttentionItem& item : b.items) AttentionRef(ItemArgs(b, item, visible));
}

void ArgmaxRef(const float* logits, int64_t rows, int64_t n_vocab, int32_t* ids) {
  for (int64_t r = 0; r < rows; ++r) ids[r] = ArgmaxRow(logits + r * n_vocab, n_vocab);
}

void TopKRef(const float* logits, int64_t rows, int64_t n_vocab, int32_t k, float* values,
             int32_t* ids) {
  std::vector<int32_t> order;
  for (int64_t r = 0; r < rows; ++r) {
    TopKRow(logits + r * n_vocab, n_vocab, k, values + r * k, ids + r * k, order);
  }
}

}  // namespace kvasir::kernels::cpu
