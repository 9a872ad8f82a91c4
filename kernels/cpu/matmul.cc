// MatMul: the threading and cache blocking of y = W x, the activation quantization, the scalar
// tile kernels (the fallback where no SIMD level is available), and the two references.
//
// Work is cut into tiles of kRowTile weight rows by up to kTokenTile tokens. Inside a tile the
// ISA-specific kernel walks the tokens in small groups and, for each group, the tile's rows, so a
// tile's weights stay in L1/L2 while they meet every token of the tile.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/base/check.h"
#include "common/base/half.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_blocks.h"

namespace kvasir::kernels::cpu {
namespace {

constexpr int kMaxTargets = 8;

bool IsFloatType(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

// ---- Scalar kernels ----------------------------------------------------------------------

float LoadFloatWeight(DType t, const uint8_t* row, int64_t c) {
  switch (t) {
    case DType::kF32: {
      float v;
      std::memcpy(&v, row + 4 * c, 4);
      return v;
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, row + 2 * c, 2);
      return Fp16ToFp32(h);
    }
    default: {
      uint16_t h;
      std::memcpy(&h, row + 2 * c, 2);
      return Bf16ToFp32(h);
    }
  }
}

// Integer dot product of one quantized row with token t of the activations (scalar).
float DotQuantScalar(DType type, const uint8_t* row, const QuantizedActs& a, int64_t t) {
  const int8_t* xq = ActQs(a, t);
  const float* xd = ActD(a, t);
  float sum = 0.0f;
  switch (type) {
    case DType::kQ4_0:
    case DType::kQ4_1: {
      const bool q41 = type == DType::kQ4_1;
      const float* xs = ActS(a, t);
      for (int64_t b = 0; b < a.blocks; ++b) {
        const uint8_t* qs;
        float d, m;
        if (q41) {
          const auto* blk = reinterpret_cast<const BlockQ4_1*>(row) + b;
          qs = blk->qs;
          d = Fp16ToFp32(blk->d);
          m = Fp16ToFp32(blk->m);
        } else {
          const auto* blk = reinterpret_cast<const BlockQ4_0*>(row) + b;
          qs = blk->qs;
          d = Fp16ToFp32(blk->d);
          m = -8.0f * d;
        }
        const int8_t* x = xq + b * kQK;
        int isum = 0;
        for (int j = 0; j < kQK / 2; ++j) {
          isum += (qs[j] & 0xF) * x[j] + (qs[j] >> 4) * x[j + kQK / 2];
        }
        sum += static_cast<float>(isum) * (d * xd[b]) + m * xs[b];
      }
      return sum;
    }
    case DType::kQ8_0: {
      for (int64_t b = 0; b < a.blocks; ++b) {
        const auto* blk = reinterpret_cast<const BlockQ8_0*>(row) + b;
        const int8_t* x = xq + b * kQK;
        int isum = 0;
        for (int j = 0; j < kQK; ++j) isum += blk->qs[j] * x[j];
        sum += static_cast<float>(isum) * (Fp16ToFp32(blk->d) * xd[b]);
      }
      return sum;
    }
    case DType::kQ4_K: {
      for (int64_t b = 0; b < a.blocks; ++b) {
        const auto* blk = reinterpret_cast<const BlockQ4K*>(row) + b;
        const int8_t* x = xq + b * kQKK;
        const int16_t* bs = ActBsums(a, t) + b * 16;
        int isum = 0, msum = 0;
        for (int chunk = 0; chunk < 4; ++chunk) {
          int sc0, m0, sc1, m1;
          Q4KScaleMin(2 * chunk, blk->scales, &sc0, &m0);
          Q4KScaleMin(2 * chunk + 1, blk->scales, &sc1, &m1);
          int s0 = 0, s1 = 0;
          for (int l = 0; l < 32; ++l) {
            s0 += (blk->qs[32 * chunk + l] & 0xF) * x[64 * chunk + l];
            s1 += (blk->qs[32 * chunk + l] >> 4) * x[64 * chunk + 32 + l];
          }
          isum += sc0 * s0 + sc1 * s1;
          msum += m0 * (bs[4 * chunk] + bs[4 * chunk + 1]) +
                  m1 * (bs[4 * chunk + 2] + bs[4 * chunk + 3]);
        }
        sum += xd[b] * (Fp16ToFp32(blk->d) * static_cast<float>(isum) -
                        Fp16ToFp32(blk->dmin) * static_cast<float>(msum));
      }
      return sum;
    }
    case DType::kQ6_K: {
      for (int64_t b = 0; b < a.blocks; ++b) {
        const auto* blk = reinterpret_cast<const BlockQ6K*>(row) + b;
        const int8_t* x = xq + b * kQKK;
        int isum = 0;
        for (int half = 0; half < 2; ++half) {
          const uint8_t* ql = blk->ql + 64 * half;
          const uint8_t* qh = blk->qh + 32 * half;
          const int8_t* sc = blk->scales + 8 * half;
          const int8_t* xx = x + 128 * half;
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            isum += sc[is] * q1 * xx[l] + sc[is + 2] * q2 * xx[l + 32] +
                    sc[is + 4] * q3 * xx[l + 64] + sc[is + 6] * q4 * xx[l + 96];
          }
        }
        sum += xd[b] * Fp16ToFp32(blk->d) * static_cast<float>(isum);
      }
      return sum;
    }
    default:
      KVASIR_CHECK_MSG(false, "DotQuantScalar: not a quantized type");
  }
  return 0.0f;
}

// ---- Integer reference -------------------------------------------------------------------

// One group of a quantized block in the form w_i = a * q_i + b with integer q_i.
struct IntGroup {
  int size = 0;
  int q[32] = {};
  float a = 0.0f;
  float b = 0.0f;
};

// Splits block `blk` of `type` into its integer groups (ggml's formulas, written out plainly).
int DecodeIntGroups(DType type, const uint8_t* blk, IntGroup* g) {
  switch (type) {
    case DType::kQ4_0: {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(blk);
      g[0].size = 32;
      g[0].a = Fp16ToFp32(b->d);
      for (int j = 0; j < 16; ++j) {
        g[0].q[j] = (b->qs[j] & 0xF) - 8;
        g[0].q[j + 16] = (b->qs[j] >> 4) - 8;
      }
      return 1;
    }
    case DType::kQ4_1: {
      const auto* b = reinterpret_cast<const BlockQ4_1*>(blk);
      g[0].size = 32;
      g[0].a = Fp16ToFp32(b->d);
      g[0].b = Fp16ToFp32(b->m);
      for (int j = 0; j < 16; ++j) {
        g[0].q[j] = b->qs[j] & 0xF;
        g[0].q[j + 16] = b->qs[j] >> 4;
      }
      return 1;
    }
    case DType::kQ8_0: {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(blk);
      g[0].size = 32;
      g[0].a = Fp16ToFp32(b->d);
      for (int j = 0; j < 32; ++j) g[0].q[j] = b->qs[j];
      return 1;
    }
    case DType::kQ4_K: {
      const auto* b = reinterpret_cast<const BlockQ4K*>(blk);
      for (int j = 0; j < 8; ++j) {
        int sc, m;
        Q4KScaleMin(j, b->scales, &sc, &m);
        g[j].size = 32;
        g[j].a = Fp16ToFp32(b->d) * static_cast<float>(sc);
        g[j].b = -Fp16ToFp32(b->dmin) * static_cast<float>(m);
        const uint8_t* q = b->qs + 32 * (j / 2);
        for (int l = 0; l < 32; ++l) g[j].q[l] = j % 2 == 0 ? (q[l] & 0xF) : (q[l] >> 4);
      }
      return 8;
    }
    case DType::kQ6_K: {
      const auto* b = reinterpret_cast<const BlockQ6K*>(blk);
      // Element e of the super-block: half h = e / 128, e' = e % 128 = 32 * k + l.
      int q[256];
      for (int e = 0; e < 256; ++e) {
        const int h = e / 128, k = (e % 128) / 32, l = e % 32;
        const uint8_t lo = b->ql[64 * h + l + (k % 2) * 32];
        const int low4 = k < 2 ? (lo & 0xF) : (lo >> 4);
        const int high2 = (b->qh[32 * h + l] >> (2 * k)) & 3;
        q[e] = (low4 | (high2 << 4)) - 32;
      }
      for (int s = 0; s < 16; ++s) {
        g[s].size = 16;
        g[s].a = Fp16ToFp32(b->d) * static_cast<float>(b->scales[s]);
        for (int l = 0; l < 16; ++l) g[s].q[l] = q[16 * s + l];
      }
      return 16;
    }
    default:
      KVASIR_CHECK_MSG(false, "DecodeIntGroups: not a quantized type");
  }
  return 0;
}

// ---- Threading ---------------------------------------------------------------------------

// Calls fn(task, thread) for every task, on the context's pool if it has one.
void Parallel(CpuContext& ctx, int64_t tasks, const auto& fn) {
  if (ctx.pool == nullptr) {
    for (int64_t t = 0; t < tasks; ++t) fn(t, 0);
    return;
  }
  ctx.pool->ParallelFor(tasks, [&](int64_t t, int thread) { fn(t, thread); });
}

size_t AlignUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

// A tile of a kRows8 matrix runs the level's kRows8 kernel; levels without one get the tile's rows
// back in row order in `rows` (Rows8TileBytes) and take their row kernels.
void QuantTileAnyLayout(const IsaKernels& isa, const WeightView& w, const QuantizedActs& acts,
                        int64_t r0, int64_t r1, int64_t t0, int64_t t1, float* y, int64_t y_stride,
                        uint8_t* work, uint8_t* rows) {
  if (w.layout == WeightLayout::kRows) {
    isa.quant_tile(w, acts, r0, r1, t0, t1, y, y_stride, work);
    return;
  }
  if ((isa.rows8_types >> static_cast<int>(w.type) & 1) != 0) {
    isa.quant_tile_rows8(w, acts, r0, r1, t0, t1, y, y_stride);
    return;
  }
  DeinterleaveRows8(w, r0, r1, rows);
  WeightView tile = w;
  tile.data = rows;
  tile.rows = r1 - r0;
  tile.layout = WeightLayout::kRows;
  isa.quant_tile(tile, acts, 0, r1 - r0, t0, t1, y + r0, y_stride, work);
}

}  // namespace

namespace scalar {

void QuantTile(const WeightView& w, const QuantizedActs& acts, int64_t r0, int64_t r1, int64_t t0,
               int64_t t1, float* y, int64_t y_stride, uint8_t* /*work*/) {
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t r = r0; r < r1; ++r)
      y[t * y_stride + r] = DotQuantScalar(w.type, w.row(r), acts, t);
  }
}

void FloatTile(const WeightView& w, const float* x, int64_t x_stride, int64_t r0, int64_t r1,
               int64_t t0, int64_t t1, float* y, int64_t y_stride) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* xt = x + t * x_stride;
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = w.row(r);
      float sum = 0.0f;
      for (int64_t c = 0; c < w.cols; ++c) sum += LoadFloatWeight(w.type, row, c) * xt[c];
      y[t * y_stride + r] = sum;
    }
  }
}

}  // namespace scalar

void MatMulShared(CpuContext& ctx, const MatMulTarget* targets, int count, const float* x,
                  int64_t n, int64_t x_stride) {
  KVASIR_CHECK(count >= 1 && count <= kMaxTargets);
  if (n <= 0) return;
  const int64_t cols = targets[0].w.cols;
  bool need[3] = {false, false, false};
  for (int k = 0; k < count; ++k) {
    const WeightView& w = targets[k].w;
    KVASIR_CHECK_MSG(w.cols == cols, "MatMulShared: all weights must have the same cols");
    KVASIR_CHECK_MSG(w.cols % DTypeBlockSize(w.type) == 0, "MatMul: cols not a multiple of block");
    need[static_cast<int>(ActFormatFor(static_cast<int>(w.type)))] = true;
  }
  const IsaKernels& isa = Kernels();

  // Quantize x once per activation format needed, in the scratch memory, followed by one tile
  // workspace per thread.
  QuantizedActs acts[3];
  const ActFormat formats[2] = {ActFormat::kAct32, ActFormat::kAct256};
  size_t bytes[2] = {0, 0};
  size_t total = 0;
  for (int f = 0; f < 2; ++f) {
    if (need[static_cast<int>(formats[f])]) {
      bytes[f] = AlignUp(ActBytes(formats[f], n, cols), 64);
      total += bytes[f];
    }
  }
  const int threads = ctx.pool != nullptr ? ctx.pool->num_threads() : 1;
  bool rows8 = false;
  for (int k = 0; k < count; ++k) rows8 |= targets[k].w.layout == WeightLayout::kRows8;
  const size_t tile_bytes = AlignUp(static_cast<size_t>(QuantTileWorkBytes(cols)), 64);
  const size_t work_bytes =
      tile_bytes + (rows8 ? AlignUp(static_cast<size_t>(Rows8TileBytes(cols)), 64) : 0);
  uint8_t* work = nullptr;
  if (total > 0) {
    uint8_t* mem = ctx.Scratch(total + 64 + work_bytes * static_cast<size_t>(threads));
    work = reinterpret_cast<uint8_t*>(AlignUp(reinterpret_cast<uintptr_t>(mem + total), 64));
    for (int f = 0; f < 2; ++f) {
      if (bytes[f] == 0) continue;
      QuantizedActs& a = acts[static_cast<int>(formats[f])];
      a = CarveActs(formats[f], n, cols, mem);
      mem += bytes[f];
      auto quantize = [&](int64_t t, int) { isa.quantize_act_row(x + t * x_stride, a, t); };
      if (n * cols >= 16384) {
        Parallel(ctx, n, quantize);
      } else {
        for (int64_t t = 0; t < n; ++t) quantize(t, 0);
      }
    }
  }

  // Tiles: for each target, row tiles x token tiles, token tile major so that consecutive tasks
  // (which one thread takes together) share their activations.
  const int64_t token_tiles = (n + kTokenTile - 1) / kTokenTile;
  int64_t first_task[kMaxTargets + 1];
  int64_t row_tiles[kMaxTargets];
  first_task[0] = 0;
  for (int k = 0; k < count; ++k) {
    row_tiles[k] = (targets[k].w.rows + kRowTile - 1) / kRowTile;
    first_task[k + 1] = first_task[k] + row_tiles[k] * token_tiles;
  }
  const FloatTileFn float_tile = isa.float_tile;
  Parallel(ctx, first_task[count], [&](int64_t task, int thread) {
    int k = 0;
    while (task >= first_task[k + 1]) ++k;
    const int64_t local = task - first_task[k];
    const int64_t tt = local / row_tiles[k], rt = local % row_tiles[k];
    const MatMulTarget& tg = targets[k];
    const int64_t r0 = rt * kRowTile, r1 = std::min(tg.w.rows, r0 + kRowTile);
    const int64_t t0 = tt * kTokenTile, t1 = std::min(n, t0 + kTokenTile);
    if (IsFloatType(tg.w.type)) {
      float_tile(tg.w, x, x_stride, r0, r1, t0, t1, tg.y, tg.y_stride);
    } else {
      uint8_t* mine = work + work_bytes * static_cast<size_t>(thread);
      QuantTileAnyLayout(isa, tg.w,
                         acts[static_cast<int>(ActFormatFor(static_cast<int>(tg.w.type)))], r0, r1,
                         t0, t1, tg.y, tg.y_stride, mine, mine + tile_bytes);
    }
  });
}

void MatMul(CpuContext& ctx, const WeightView& w, const float* x, int64_t n, int64_t x_stride,
            float* y, int64_t y_stride) {
  const MatMulTarget target{w, y, y_stride};
  MatMulShared(ctx, &target, 1, x, n, x_stride);
}

void MatMulRef(const WeightView& w, const float* x, int64_t n, int64_t x_stride, float* y,
               int64_t y_stride) {
  KVASIR_CHECK_MSG(w.layout == WeightLayout::kRows, "MatMulRef: weights in layout kRows8");
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    DequantizeRow(w.type, w.row(r), w.cols, row.data());
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * x_stride;
      double sum = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) sum += static_cast<double>(row[c]) * xi[c];
      y[i * y_stride + r] = static_cast<float>(sum);
    }
  }
}

void MatMulQuantizedRef(const WeightView& w, const float* x, int64_t n, int64_t x_stride, float* y,
                        int64_t y_stride) {
  KVASIR_CHECK_MSG(w.layout == WeightLayout::kRows, "MatMulQuantizedRef: weights in kRows8");
  const ActFormat format = ActFormatFor(static_cast<int>(w.type));
  if (format == ActFormat::kNone) return MatMulRef(w, x, n, x_stride, y, y_stride);
  std::vector<uint8_t> mem(ActBytes(format, n, w.cols));
  QuantizedActs acts = CarveActs(format, n, w.cols, mem.data());
  for (int64_t t = 0; t < n; ++t) scalar::QuantizeActRow(x + t * x_stride, acts, t);
  const int64_t block = DTypeBlockSize(w.type);
  const int64_t block_bytes = DTypeBlockBytes(w.type);
  const int64_t act_block = format == ActFormat::kAct256 ? kQKK : kQK;
  IntGroup groups[16];
  for (int64_t r = 0; r < w.rows; ++r) {
    for (int64_t t = 0; t < n; ++t) {
      const int8_t* xq = ActQs(acts, t);
      double sum = 0.0;
      for (int64_t b = 0; b < w.cols / block; ++b) {
        const int ng = DecodeIntGroups(w.type, w.row(r) + b * block_bytes, groups);
        int64_t e = b * block;  // element index of the group's first value
        for (int g = 0; g < ng; ++g) {
          int64_t qdot = 0, qsum = 0;
          for (int l = 0; l < groups[g].size; ++l) {
            qdot += static_cast<int64_t>(groups[g].q[l]) * xq[e + l];
            qsum += xq[e + l];
          }
          const double dx = ActD(acts, t)[e / act_block];
          sum += dx * (static_cast<double>(groups[g].a) * static_cast<double>(qdot) +
                       static_cast<double>(groups[g].b) * static_cast<double>(qsum));
          e += groups[g].size;
        }
      }
      y[t * y_stride + r] = static_cast<float>(sum);
    }
  }
}

}  // namespace kvasir::kernels::cpu
