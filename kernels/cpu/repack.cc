// The kRows8 weight layout (quant_blocks.h): repacking at load time, and the way back for the ISA
// levels whose kernels read rows (internal.h, DeinterleaveRows8).
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "common/base/check.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_blocks.h"

namespace kvasir::kernels::cpu {
namespace {

// Copies block b of the 8 rows at rows[0..8) into its kRows8 place `packed` (kToRows8), or back
// from `packed` into the rows. Only the destination side is written.
template <bool kToRows8>
void MoveBlock(const Rows8Format& f, uint8_t* const* rows, int64_t b, uint8_t* packed) {
  const auto move = [](uint8_t* in_rows, uint8_t* in_packed, size_t n) {
    if constexpr (kToRows8) {
      std::memcpy(in_packed, in_rows, n);
    } else {
      std::memcpy(in_rows, in_packed, n);
    }
  };
  for (int r = 0; r < 8; ++r) {
    uint8_t* blk = rows[r] + b * f.block_bytes;
    for (int h = 0; h < f.halves; ++h) move(blk + 2 * h, packed + 16 * h + 2 * r, 2);
    for (int c = 0; c < f.quant_bytes / 4; ++c) {
      move(blk + 2 * f.halves + 4 * c, packed + 16 * f.halves + 32 * c + 4 * r, 4);
    }
  }
}

}  // namespace

bool CanRepackRows8(const WeightView& w) {
  const Rows8Format f = Rows8FormatFor(w.type);
  return w.layout == WeightLayout::kRows && f.block_bytes > 0 && w.rows % 8 == 0 && w.rows > 0 &&
         w.cols % kQK == 0 && w.row_bytes == w.cols / kQK * f.block_bytes;
}

bool Rows8Allowed() {
  static const bool allowed = [] {
    const char* env = std::getenv("KVASIR_REPACK");
    return env == nullptr || std::string_view(env) != "0";
  }();
  return allowed;
}

bool PrefersRows8(const WeightView& w) {
  return Rows8Allowed() && CanRepackRows8(w) &&
         (Kernels().rows8_types >> static_cast<int>(w.type) & 1) != 0;
}

WeightView RepackRows8(const WeightView& w, void* out) {
  KVASIR_CHECK_MSG(CanRepackRows8(w), "RepackRows8: not a Q4_0/Q4_1/Q8_0 matrix of 8k rows");
  const Rows8Format f = Rows8FormatFor(w.type);
  const int64_t nb = w.cols / kQK;
  auto* base = static_cast<uint8_t*>(out);
  for (int64_t g = 0; g < w.rows / 8; ++g) {
    uint8_t* rows[8];
    // Read only (MoveBlock<true> writes the packed side).
    for (int r = 0; r < 8; ++r) rows[r] = const_cast<uint8_t*>(w.row(8 * g + r));
    uint8_t* group = base + 8 * g * w.row_bytes;
    for (int64_t b = 0; b < nb; ++b) MoveBlock<true>(f, rows, b, group + 8 * b * f.block_bytes);
  }
  WeightView packed = w;
  packed.data = out;
  packed.layout = WeightLayout::kRows8;
  return packed;
}

void DeinterleaveRows8(const WeightView& w, int64_t r0, int64_t r1, uint8_t* out) {
  KVASIR_CHECK(w.layout == WeightLayout::kRows8 && r0 % 8 == 0 && r1 % 8 == 0);
  const Rows8Format f = Rows8FormatFor(w.type);
  const int64_t nb = w.cols / kQK;
  for (int64_t g = r0 / 8; g < r1 / 8; ++g) {
    uint8_t* rows[8];
    for (int r = 0; r < 8; ++r) rows[r] = out + (8 * g + r - r0) * w.row_bytes;
    auto* group = const_cast<uint8_t*>(w.row(8 * g));  // read only (MoveBlock<false>)
    for (int64_t b = 0; b < nb; ++b) MoveBlock<false>(f, rows, b, group + 8 * b * f.block_bytes);
  }
}

}  // namespace kvasir::kernels::cpu
