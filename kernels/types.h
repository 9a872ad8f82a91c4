// Plain views that cross from the engine into the kernels, passed by value. Kernels borrow the
// memory they point to and know nothing about requests, sequences or compression policies.
#pragma once

#include <cstdint>

#include "common/base/dtype.h"

namespace kvasir::kernels {

// How the rows of a WeightView lie in memory.
enum class WeightLayout : uint8_t {
  // Row r starts at data + r * row_bytes (the layout of GGUF and safetensors).
  kRows,
  // Q4_0, Q4_1, Q8_0 only, rows a multiple of 8: each group of 8 rows fills the bytes of those 8
  // rows, block by block, interleaved so that one token's decode reads one stream (the CPU
  // kernels' repacked form, kernels/cpu/ops.h RepackRows8; row(r) is meaningless there).
  kRows8,
};

// A weight matrix of `rows` rows with `cols` elements each, in a float or block-quantized type.
// Row r starts at data + r * row_bytes (layout kRows). A Hugging Face linear weight [out, in]
// (GGUF ne=[in, out]) has rows = out and cols = in, so y = W x computes one output per row.
struct WeightView {
  DType type = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_bytes = 0;
  WeightLayout layout = WeightLayout::kRows;

  const uint8_t* row(int64_t r) const { return static_cast<const uint8_t*>(data) + r * row_bytes; }
};

// FlashInfer's CSR page table over a pool of fixed-size pages. A "row" is one pseudo-sequence of
// KV slots: in Kvasir one (sequence, layer, KV head), so that every head can have its own length.
// One page holds `page_size` slots of one head; slot s of page p, element d, is at
//   pool[(p * page_size + s) * head_dim + d].
struct PagedKvView {
  int32_t num_rows = 0;
  const int32_t* indptr = nullptr;         // [num_rows + 1] prefix sums of pages per row
  const int32_t* indices = nullptr;        // [indptr[num_rows]] page ids, in slot order
  const int32_t* last_page_len = nullptr;  // [num_rows] slots used in each row's last page
  int32_t page_size = 0;                   // slots per page
  int32_t head_dim = 0;                    // elements per slot
  DType dtype = DType::kF32;               // kF32 or kF16
  const void* pool = nullptr;              // the page pool; the rows index into it

  int32_t num_pages(int32_t r) const { return indptr[r + 1] - indptr[r]; }
  // Slots held by row r.
  int32_t length(int32_t r) const {
    const int32_t pages = num_pages(r);
    return pages == 0 ? 0 : (pages - 1) * page_size + last_page_len[r];
  }
  // Byte offset of (row r, slot s) in the pool.
  int64_t slot_offset_bytes(int32_t r, int32_t s) const {
    const int64_t page = indices[indptr[r] + s / page_size];
    const int64_t elem_bytes = dtype == DType::kF16 ? 2 : 4;
    return (page * page_size + s % page_size) * head_dim * elem_bytes;
  }
};

// RoPE pairings. GGUF llama files use adjacent pairs (ggml "NORM"); Hugging Face weights use the
// half-split pairs of rotate_half (ggml "NEOX"). See docs/model.md.
enum class RopeLayout { kAdjacentPairs, kHalfSplit };

}  // namespace kvasir::kernels
