// The Backend interface: the operations a forward pass and the KV policies run, behind one
// virtual interface so that the same planning code drives the CPU kernels (kernels/cpu) and the
// CUDA kernels (kernels/cuda). A KV policy *plans* on the host (which slots each head keeps,
// evicts or merges; the step's page tables; the list of attention items) and a backend *runs* the
// plan, the way FlashInfer separates plan from run.
//
// Memory. Two kinds of arrays cross this interface:
//  - data arrays (activations, weights, the KV page pool, logits, attention outputs, score sums)
//    are the backend's memory: host memory for the CPU backend, device memory for CUDA. Allocate
//    them with Allocate() (or, for the CPU backend, anywhere) and move them with Upload/Download.
//  - plan arrays (token ids, positions, page tables, item lists, slot lists, mix weights) are
//    host memory. A backend that needs them elsewhere stages them itself, per call.
// Each operation's comment says which of its arguments are plan arrays; the others are data.
//
// Ordering: calls on one backend run in the order they were made (one CUDA stream); Download
// and Synchronize wait for everything before them. The CPU backend runs each call before it
// returns. One thread uses a backend at a time.
//
// Every operation has a scalar reference on the CPU (kernels/cpu/ops.h), and
// tests/kernels/backend_ops_test.cc runs every operation of every backend present against it:
// a new backend or operation is tested by registering it there.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "kernels/types.h"

namespace kvasir::kernels {

// The operations, for Backend::Supports.
enum class Op {
  kGetRows,
  kRmsNorm,
  kRope,
  kSiluMul,
  kAdd,
  kMatMul,
  kWriteSlots,
  kAttention,
  kMergeAttention,
  kMixSlots,
  kArgmax,
  kTopK,
};
const char* OpName(Op op);

// One attention work item: the queries of one KV head's group (`group` query heads of n_q
// tokens of one sequence) over a span of that head's keys and values in the batch's page tables:
//   key j = row k_row of the batch's k, slot k_begin + j; value j = row v_row of v, v_begin + j
// for j < n_keys. Query i sees keys j < n_keys when causal_base < 0, else j < causal_base + i + 1
// (a prefill chunk appended at the end of the cache: causal_base = the slots before the chunk).
struct AttentionItem {
  float* q = nullptr;  // data: [n_q, group, head_dim], tokens q_token_stride floats apart
  int64_t q_token_stride = 0;
  int32_t n_q = 0;
  int32_t k_row = 0;
  int32_t k_begin = 0;
  int32_t v_row = 0;
  int32_t v_begin = 0;
  int32_t n_keys = 0;
  int32_t causal_base = -1;
  float* out = nullptr;  // data: [n_q, group, head_dim], tokens out_token_stride floats apart
  int64_t out_token_stride = 0;
  float* lse = nullptr;       // data (optional): [n_q, group] log(sum_j exp(scale q.k_j))
  float* col_sums = nullptr;  // data (optional): [n_keys] += sum over queries and heads of p_ij
};
// A batch of items over one pair of page tables (K and V; the same view twice is fine). The
// views' indptr / indices / last_page_len are plan arrays, their pools data. Items write disjoint
// outputs; two items may not accumulate into the same col_sums.
struct AttentionBatch {
  PagedKvView k;
  PagedKvView v;
  int32_t group = 1;
  int32_t head_dim = 0;
  float scale = 1.0f;  // applied to q.k, usually 1/sqrt(head_dim)
  std::span<const AttentionItem> items;
};

// A page pool as the slot operations see it: slot s of page p, element d, is at
// pool[(p * page_size + s) * head_dim + d]. Slots are addressed by their global index
// p * page_size + s.
struct SlotPool {
  void* data = nullptr;  // data
  int32_t page_size = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kF32;  // kF32 or kF16
};

// Writes n rows into the pool: slot dst_slots[i] = row src + src_offsets[i] (head_dim floats),
// converted to the pool's dtype. src_offsets and dst_slots are plan arrays; no two dst_slots equal.
struct SlotWrites {
  SlotPool pool;
  const float* src = nullptr;            // data
  const int64_t* src_offsets = nullptr;  // plan: [n] in floats
  const int64_t* dst_slots = nullptr;    // plan: [n]
  int64_t n = 0;
};

// Weighted sums of rows into slots: for output o < n_out,
//   slot dst_slots[o] = sum_{t in [term_begin[o], term_begin[o + 1])} weights[t] * row(t)
// where row(t) is slot src_slots[t] of the pool when src_slots[t] >= 0, else the f32 row
// rows + row_offsets[t] (head_dim floats). All sources are read before any slot is written, so
// outputs may overwrite their own sources (DMC's merge into the last slot; LoCoCo's fusion of a
// table into its first slots). The arrays other than `rows` are plan arrays.
struct SlotMix {
  SlotPool pool;
  int64_t n_out = 0;
  const int64_t* dst_slots = nullptr;    // [n_out], distinct
  const int64_t* term_begin = nullptr;   // [n_out + 1]
  const int64_t* src_slots = nullptr;    // [terms]
  const int64_t* row_offsets = nullptr;  // [terms] (used where src_slots < 0)
  const float* weights = nullptr;        // [terms]
  const float* rows = nullptr;           // data (may be null when every term reads a slot)
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu" or "cuda".
  virtual const char* name() const = 0;
  // A line on the device for logs and benchmarks ("CPU, 2 threads, avx2", "NVIDIA H200, sm_90").
  virtual std::string Describe() const = 0;
  // Whether `op` runs on this backend for weights / pools of `type` (matrix products, row
  // lookups, slot operations, attention); for the other operations `type` is ignored.
  virtual bool Supports(Op op, DType type = DType::kF32) const = 0;
  // True when data arrays are host memory the caller may read and write directly (the CPU).
  virtual bool host_addressable() const = 0;
  // The largest head_dim Attention takes (a model with larger heads is refused at load).
  virtual int32_t max_head_dim() const { return INT32_MAX; }

  // ---- Memory --------------------------------------------------------------------------------
  // Backend memory of `bytes` bytes (aligned to 256), or nullptr when out of memory.
  virtual void* Allocate(size_t bytes) = 0;
  virtual void Free(void* p) = 0;
  // host_src may be reused as soon as Upload returns.
  virtual void Upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void Download(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void Fill(void* dst, uint8_t byte, size_t bytes) = 0;
  // Backend memory to backend memory (through the host unless the backend overrides it).
  virtual void Copy(void* dst, const void* src, size_t bytes) {
    std::vector<uint8_t> staging(bytes);
    Download(staging.data(), src, bytes);
    Upload(dst, staging.data(), bytes);
  }
  // Waits for every operation issued so far.
  virtual void Synchronize() = 0;

  // ---- Host work -------------------------------------------------------------------------------
  // Calls fn(task, thread) for every task < n on the host, spread over the backend's host threads
  // (the CPU backend's pool; one thread elsewhere), thread < host_threads(). For per-head planning
  // that a policy cannot batch; operations called from fn run on the calling thread alone.
  virtual void HostParallelFor(int64_t n, const std::function<void(int64_t task, int thread)>& fn) {
    for (int64_t t = 0; t < n; ++t) fn(t, 0);
  }
  virtual int host_threads() const { return 1; }

  // ---- Forward-pass operations (kernels/cpu/ops.h gives the exact semantics) ------------------
  // out[i, :] = W[ids[i], :] as f32. ids: plan array [n].
  virtual void GetRows(const WeightView& w, const int32_t* ids, int64_t n, float* out) = 0;
  virtual void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps,
                       float* out) = 0;
  // pos: plan array [n_tokens].
  virtual void Rope(float* x, int64_t n_tokens, int64_t token_stride, int n_heads, int head_dim,
                    int n_rot, const int32_t* pos, float freq_base, RopeLayout layout) = 0;
  virtual void SiluMul(const float* gate, const float* up, int64_t n, float* out) = 0;
  virtual void Add(float* y, const float* x, int64_t n) = 0;
  // y[i, r] = sum_c W[r, c] x[i, c]. A backend may round x first: the CPU to 8 bits for
  // quantized weights, CUDA to the weight's type for f16 and bf16 weights.
  virtual void MatMul(const WeightView& w, const float* x, int64_t n, int64_t x_stride, float* y,
                      int64_t y_stride) = 0;

  // ---- KV operations ---------------------------------------------------------------------------
  virtual void WriteSlots(const SlotWrites& writes) = 0;
  // A query that sees no key gets out = 0 and lse = -inf.
  virtual void Attention(const AttentionBatch& batch) = 0;
  // out_a = (exp(lse_a) out_a + exp(lse_b) out_b) / (exp(lse_a) + exp(lse_b)); lse_a updated.
  // out_a, out_b: [rows, head_dim]; lse_a, lse_b: [rows].
  virtual void MergeAttention(float* out_a, float* lse_a, const float* out_b, const float* lse_b,
                              int64_t rows, int32_t head_dim) = 0;
  virtual void MixSlots(const SlotMix& mix) = 0;

  // ---- Sampling --------------------------------------------------------------------------------
  // ids[r] = the index of the largest of logits[r, :n_vocab] (the first on ties). ids: plan
  // array [rows], written when the call returns.
  virtual void Argmax(const float* logits, int64_t rows, int64_t n_vocab, int32_t* ids) = 0;
  // The k largest logits of each row, largest first (lower index first on ties), for top-k /
  // top-p sampling on the host. values, ids: plan arrays [rows, k], written when it returns.
  virtual void TopK(const float* logits, int64_t rows, int64_t n_vocab, int32_t k, float* values,
                    int32_t* ids) = 0;
};

// Backend memory owned by an object: freed with it, grown (contents not kept) by Reserve.
//   BackendBuffer x(backend);
//   x.Reserve(n * d * sizeof(float));
//   backend.RmsNorm(x.as<float>(), ...);
class BackendBuffer {
 public:
  explicit BackendBuffer(Backend& backend) : backend_(&backend) {}
  ~BackendBuffer() { Release(); }
  BackendBuffer(BackendBuffer&& o) noexcept
      : backend_(o.backend_), data_(o.data_), bytes_(o.bytes_) {
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  BackendBuffer& operator=(BackendBuffer&& o) noexcept {
    if (this != &o) {
      Release();
      backend_ = o.backend_;
      data_ = o.data_;
      bytes_ = o.bytes_;
      o.data_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }

  // At least `bytes` bytes (the contents are lost when it grows). False when out of memory.
  bool Reserve(size_t bytes) {
    if (bytes <= bytes_ && data_ != nullptr) return true;
    Release();
    data_ = backend_->Allocate(bytes == 0 ? 1 : bytes);
    bytes_ = data_ == nullptr ? 0 : bytes;
    return data_ != nullptr;
  }
  template <typename T = void>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }
  Backend& backend() const { return *backend_; }

 private:
  void Release() {
    if (data_ != nullptr) backend_->Free(data_);
    data_ = nullptr;
    bytes_ = 0;
  }

  Backend* backend_;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace kvasir::kernels
