// CPU kernels: the operations of a Llama forward pass. Every operation has a scalar reference
// (the *Ref functions, slow and obvious, the oracle of the tests) and a fast path chosen at run
// time (AVX2 where the CPU has it; AVX-512 with VNNI when asked for, see ActiveIsa). Tests compare
// the two on random inputs.
//
// Shapes are given in comments as [outer, inner]; all float arrays are row-major f32.
// Kernels that take a CpuContext split their work over its thread pool; the others are
// single-threaded and meant to be called from inside a parallel loop of the caller.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/thread_pool.h"
#include "kernels/types.h"

namespace kvasir::kernels::cpu {

// The thread pool and scratch memory a forward pass lends to the kernels. The scratch grows to
// the largest size asked and is then reused, so the hot path does not allocate. MatMul and
// MatMulShared use it for the quantized activations: do not hold a pointer into it across a
// kernel call. A null pool runs single-threaded.
struct CpuContext {
  ThreadPool* pool = nullptr;
  std::vector<uint8_t> scratch;
  uint8_t* Scratch(size_t bytes) {
    if (scratch.size() < bytes) scratch.resize(bytes);
    return scratch.data();
  }
};

// Which instruction set the fast paths use: "scalar", "avx2" or "avx512" ("avx512_emulated" in the
// kernel tests). At start-up the best level the CPU has, except that AVX-512 is off by default
// (not yet tested on AVX-512 hardware): KVASIR_ISA=scalar|avx2|avx512 (or the older
// KVASIR_CPU_ISA) can lower the level or opt into avx512 where the CPU has it.
const char* ActiveIsa();
// Selects the ISA level by name ("scalar", "avx2", "avx512", also "avx512vnni") for every later
// kernel call in the process. Returns false, changing nothing, for an unknown name or a level this
// CPU lacks. For tests and benchmarks: call it while no kernel runs.
bool SetIsa(std::string_view name);
// The levels this CPU supports, lowest first ("scalar" always; "avx512" where the CPU has it, even
// though it is not the default; then "avx512_emulated" in the kernel tests on CPUs without it).
std::vector<std::string> SupportedIsas();

// ---- Matrix products -----------------------------------------------------------------------

// y[i, r] = sum_c W[r, c] * x[i, c] for i < n, r < w.rows.
// x: [n, w.cols] with rows x_stride floats apart; y: [n, w.rows] with rows y_stride floats apart.
// Every DType of common/base/dtype.h is supported. Quantized weights may quantize x to 8 bits
// first (as llama.cpp does); the result then differs from MatMulRef by that rounding only.
void MatMul(CpuContext& ctx, const WeightView& w, const float* x, int64_t n, int64_t x_stride,
            float* y, int64_t y_stride);
// Reference: dequantizes each row to f32 and takes an f32 dot product.
void MatMulRef(const WeightView& w, const float* x, int64_t n, int64_t x_stride, float* y,
               int64_t y_stride);
// Reference of MatMul's integer path for quantized weights (scalar, single-threaded): quantizes x
// exactly as MatMul does (per block of 32, or 256 for the K types: q = round-half-even(x * 127 /
// max|x|)) and sums the integer products block by block with the float scales. MatMul matches it
// up to float summation order. Float weight types fall back to MatMulRef.
void MatMulQuantizedRef(const WeightView& w, const float* x, int64_t n, int64_t x_stride, float* y,
                        int64_t y_stride);

// One product of MatMulShared: y = W x, y: [n, w.rows] with rows y_stride floats apart.
struct MatMulTarget {
  WeightView w;
  float* y = nullptr;
  int64_t y_stride = 0;
};
// Several products of the same input x (the Q, K and V projections; gate and up): the same
// results as MatMul for each target, but x is quantized once per activation format and all the
// products run as one parallel job. Every w.cols must equal the first one's. count <= 8.
//   MatMulTarget qkv[3] = {{wq, q, q_dim}, {wk, k, kv_dim}, {wv, v, kv_dim}};
//   MatMulShared(ctx, qkv, 3, h, n, dim);
void MatMulShared(CpuContext& ctx, const MatMulTarget* targets, int count, const float* x,
                  int64_t n, int64_t x_stride);

// Weights repacked at load time for decode (WeightLayout::kRows8, kernels/cpu/quant_blocks.h):
// every group of 8 rows interleaved block by block, so that one token's matrix-vector product
// reads one stream with each block's 8 scales together, instead of 8 rows each with its own.
// MatMul takes either layout on every ISA level; only the levels with kRows8 kernels gain.
//   if (PrefersRows8(w)) w = RepackRows8(w, buffer_of_w_rows_times_row_bytes);
// Whether w can be repacked: Q4_0, Q4_1 or Q8_0, layout kRows, rows a multiple of 8.
bool CanRepackRows8(const WeightView& w);
// Whether w can be repacked and the active ISA level has kRows8 kernels for its type, unless
// KVASIR_REPACK=0 (read once; for comparisons) turns repacking off (Rows8Allowed() false).
bool PrefersRows8(const WeightView& w);
bool Rows8Allowed();
// Writes w in the kRows8 layout to `out` (w.rows * w.row_bytes bytes, not overlapping w) and
// returns the view of it. Requires CanRepackRows8(w).
WeightView RepackRows8(const WeightView& w, void* out);

// out[i, :] = W[ids[i], :] dequantized to f32 (embedding lookup). out: [n, w.cols]. w in layout
// kRows.
void GetRows(const WeightView& w, const int32_t* ids, int64_t n, float* out);
// Dequantizes `count` elements starting at element 0 of `row` (a row of type `type`).
void DequantizeRow(DType type, const void* row, int64_t count, float* out);
// Quantizes f32 values to `type` with llama.cpp's reference quantizers (quantize_row_*_ref);
// count is a multiple of the block size. For building test fixtures and converting weights.
// For Q4_K and Q6_K the quantizer is a simpler round-to-nearest one than ggml's search; the
// layout is the same.
void QuantizeRow(DType type, const float* x, int64_t count, void* out);

// IEEE binary16 conversions of n values (F16C where available; bit-exact with common/base/half.h
// except for NaN payloads),
// e.g. to write keys and values into a kF16 page pool.
void ConvertF32ToF16(const float* x, int64_t n, uint16_t* out);
void ConvertF16ToF32(const uint16_t* x, int64_t n, float* out);

// ---- Element-wise and row operations -------------------------------------------------------

// out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight. x, out: [n, dim]; may alias.
void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out);
void RmsNormRef(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out);

// Rotates the first n_rot elements of each head of each token in place, token i at position
// pos[i], angle pos * freq_base^(-2j/n_rot) for pair j. x: [n_tokens, n_heads * head_dim] with
// tokens token_stride floats apart.
void Rope(float* x, int64_t n_tokens, int64_t token_stride, int n_heads, int head_dim, int n_rot,
          const int32_t* pos, float freq_base, RopeLayout layout);
void RopeRef(float* x, int64_t n_tokens, int64_t token_stride, int n_heads, int head_dim, int n_rot,
             const int32_t* pos, float freq_base, RopeLayout layout);

// In-place softmax of x[0..n).
void Softmax(float* x, int64_t n);
void SoftmaxRef(float* x, int64_t n);

// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)). May alias.
void SiluMul(const float* gate, const float* up, int64_t n, float* out);
void SiluMulRef(const float* gate, const float* up, int64_t n, float* out);

// y[i] += x[i].
void Add(float* y, const float* x, int64_t n);

// ---- Attention -----------------------------------------------------------------------------

// Attention of the queries of one KV head (a GQA group of `group` query heads, for n_q tokens of
// one sequence) over a span of that head's paged keys and values:
//   key j = row k_row of `k`, slot k_begin + j;  value j = row v_row of `v`, slot v_begin + j
// for j < n_keys. Query i sees keys j < n_visible[i] (all n_keys when n_visible is null), which
// expresses causal masking for a prefill chunk appended at the end of the cache.
// Split K and V sources (PoD) use two calls over two spans whose results are merged with their
// log-sum-exps (MergeAttention).
struct AttentionArgs {
  const float* q = nullptr;  // [n_q, group, head_dim], tokens q_token_stride floats apart
  int64_t q_token_stride = 0;
  int32_t n_q = 0;
  int32_t group = 1;
  int32_t head_dim = 0;
  float scale = 1.0f;  // applied to q.k, usually 1/sqrt(head_dim)

  PagedKvView k;
  int32_t k_row = 0;
  int32_t k_begin = 0;
  PagedKvView v;
  int32_t v_row = 0;
  int32_t v_begin = 0;
  int32_t n_keys = 0;
  const int32_t* n_visible = nullptr;  // [n_q] (optional)

  float* out = nullptr;  // [n_q, group, head_dim], tokens out_token_stride floats apart
  int64_t out_token_stride = 0;
  float* lse = nullptr;       // [n_q, group] (optional): log(sum_j exp(scale * q.k_j))
  float* col_sums = nullptr;  // [n_keys] (optional): += sum over queries and heads of p_ij
};
// A query that sees no key gets out = 0 and lse = -inf. Single-threaded.
void Attention(const AttentionArgs& args);
void AttentionRef(const AttentionArgs& args);

// Merges two partial attentions of the same queries over disjoint key sets into `out_a`:
//   out = (exp(lse_a) out_a + exp(lse_b) out_b) / (exp(lse_a) + exp(lse_b)), lse_a updated.
// out_a, out_b: [rows, head_dim]; lse_a, lse_b: [rows].
void MergeAttention(float* out_a, float* lse_a, const float* out_b, const float* lse_b,
                    int64_t rows, int32_t head_dim);

}  // namespace kvasir::kernels::cpu
