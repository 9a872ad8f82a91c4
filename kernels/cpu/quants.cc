// Conversions between f32 and the weight types: DequantizeRow, QuantizeRow (ggml's reference
// quantizers for Q4_0/Q4_1/Q8_0; simple round-to-nearest ones for the K types), GetRows, and the
// 8-bit activation format that MatMul's integer dot products read.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/base/check.h"
#include "common/base/half.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_blocks.h"

namespace kvasir::kernels::cpu {
namespace {

void DequantQ4_0(const BlockQ4_0* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = Fp16ToFp32(b[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>((b[i].qs[j] & 0xF) - 8) * d;
      y[j + kQK / 2] = static_cast<float>((b[i].qs[j] >> 4) - 8) * d;
    }
  }
}

void DequantQ4_1(const BlockQ4_1* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = Fp16ToFp32(b[i].d);
    const float m = Fp16ToFp32(b[i].m);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>(b[i].qs[j] & 0xF) * d + m;
      y[j + kQK / 2] = static_cast<float>(b[i].qs[j] >> 4) * d + m;
    }
  }
}

void DequantQ8_0(const BlockQ8_0* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = Fp16ToFp32(b[i].d);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(b[i].qs[j]) * d;
  }
}

void DequantQ4K(const BlockQ4K* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Fp16ToFp32(b[i].d);
    const float dmin = Fp16ToFp32(b[i].dmin);
    const uint8_t* q = b[i].qs;
    for (int chunk = 0; chunk < 4; ++chunk, q += 32) {
      int sc, m;
      Q4KScaleMin(2 * chunk, b[i].scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      Q4KScaleMin(2 * chunk + 1, b[i].scales, &sc, &m);
      const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void DequantQ6K(const BlockQ6K* b, int64_t nb, float* y) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Fp16ToFp32(b[i].d);
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = b[i].ql + 64 * half;
      const uint8_t* qh = b[i].qh + 32 * half;
      const int8_t* sc = b[i].scales + 8 * half;
      float* out = y + 256 * i + 128 * half;
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        out[l] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
        out[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        out[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        out[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

// ggml quantize_row_q4_0_ref: the value of largest magnitude maps to -8.
void QuantQ4_0(const float* x, int64_t nb, BlockQ4_0* b) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = Fp32ToFp16(d);
    for (int j = 0; j < kQK / 2; ++j) {
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
      const int q1 =
          std::min(15, static_cast<int>(static_cast<int8_t>(x[j + kQK / 2] * id + 8.5f)));
      b[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

// ggml quantize_row_q4_1_ref: [min, max] mapped onto 0..15.
void QuantQ4_1(const float* x, int64_t nb, BlockQ4_1* b) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float min = x[0], max = x[0];
    for (int j = 1; j < kQK; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = Fp32ToFp16(d);
    b[i].m = Fp32ToFp16(min);
    for (int j = 0; j < kQK / 2; ++j) {
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>((x[j] - min) * id + 0.5f)));
      const int q1 =
          std::min(15, static_cast<int>(static_cast<int8_t>((x[j + kQK / 2] - min) * id + 0.5f)));
      b[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

// ggml quantize_row_q8_0_ref.
void QuantQ8_0(const float* x, int64_t nb, BlockQ8_0* b) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = Fp32ToFp16(d);
    for (int j = 0; j < kQK; ++j) b[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

int RoundClamp(float v, int lo, int hi) {
  return std::clamp(static_cast<int>(std::lround(v)), lo, hi);
}

int CeilClamp(float v, int hi) { return std::clamp(static_cast<int>(std::ceil(v)), 0, hi); }

// Q4_K: sub-block j covers [lo_j, hi_j] with lo_j = min(0, min x). Its minimum m_j is rounded up
// (so -dmin m_j <= lo_j) and its scale sc_j is rounded up from the step (hi_j + dmin m_j) / 15, so
// the 16 levels cover the sub-block and the error is at most half a step. Simpler than ggml's
// iterative search (make_qkx2_quants); the layout is the same.
void QuantQ4K(const float* x, int64_t nb, BlockQ4K* b) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    float lo[8], hi[8];
    float max_neg_lo = 0.0f;
    for (int j = 0; j < 8; ++j) {
      lo[j] = 0.0f;
      hi[j] = x[32 * j];
      for (int l = 0; l < 32; ++l) {
        lo[j] = std::min(lo[j], x[32 * j + l]);
        hi[j] = std::max(hi[j], x[32 * j + l]);
      }
      max_neg_lo = std::max(max_neg_lo, -lo[j]);
    }
    b[i].dmin = Fp32ToFp16(max_neg_lo / 63.0f);
    const float dminq = Fp16ToFp32(b[i].dmin);
    int sc[8], m[8];
    float need[8], max_need = 0.0f;
    for (int j = 0; j < 8; ++j) {
      m[j] = dminq > 0.0f ? CeilClamp(-lo[j] / dminq, 63) : 0;
      need[j] = std::max(0.0f, hi[j] + dminq * static_cast<float>(m[j])) / 15.0f;
      max_need = std::max(max_need, need[j]);
    }
    b[i].d = Fp32ToFp16(max_need / 63.0f);
    const float dq = Fp16ToFp32(b[i].d);
    for (int j = 0; j < 8; ++j) sc[j] = dq > 0.0f ? CeilClamp(need[j] / dq, 63) : 0;
    std::memset(b[i].scales, 0, sizeof b[i].scales);
    for (int j = 0; j < 4; ++j) {
      b[i].scales[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
      b[i].scales[j + 4] = static_cast<uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
      b[i].scales[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
    }
    for (int chunk = 0; chunk < 4; ++chunk) {
      for (int l = 0; l < 32; ++l) {
        int q[2];
        for (int h = 0; h < 2; ++h) {
          const int j = 2 * chunk + h;
          const float step = dq * static_cast<float>(sc[j]);
          const float v = x[64 * chunk + 32 * h + l] + dminq * static_cast<float>(m[j]);
          q[h] = step > 0.0f ? RoundClamp(v / step, 0, 15) : 0;
        }
        b[i].qs[32 * chunk + l] = static_cast<uint8_t>(q[0] | (q[1] << 4));
      }
    }
  }
}

// Q6_K: each 16-element sub-block maps its value of largest magnitude to -32 (as ggml does); the
// sub-block scales are rounded away from zero to int8 against the super-block d, so no value
// falls outside the 64 levels by more than the clamp of +32 to 31.
void QuantQ6K(const float* x, int64_t nb, BlockQ6K* b) {
  for (int64_t i = 0; i < nb; ++i, x += kQKK) {
    float scale[16];
    float max_abs_scale = 0.0f;
    for (int k = 0; k < 16; ++k) {
      float amax = 0.0f, max = 0.0f;
      for (int l = 0; l < 16; ++l) {
        if (std::fabs(x[16 * k + l]) > amax) {
          amax = std::fabs(x[16 * k + l]);
          max = x[16 * k + l];
        }
      }
      scale[k] = max / -32.0f;
      max_abs_scale = std::max(max_abs_scale, std::fabs(scale[k]));
    }
    b[i].d = Fp32ToFp16(max_abs_scale / 127.0f);
    const float dq = Fp16ToFp32(b[i].d);
    uint8_t q[kQKK];
    for (int k = 0; k < 16; ++k) {
      const int mag = dq > 0.0f ? CeilClamp(std::fabs(scale[k]) / dq, 127) : 0;
      const int sc = scale[k] < 0.0f ? -mag : mag;
      b[i].scales[k] = static_cast<int8_t>(sc);
      const float step = dq * static_cast<float>(sc);
      for (int l = 0; l < 16; ++l) {
        q[16 * k + l] = static_cast<uint8_t>(
            step != 0.0f ? RoundClamp(x[16 * k + l] / step, -32, 31) + 32 : 32);
      }
    }
    for (int half = 0; half < 2; ++half) {
      uint8_t* ql = b[i].ql + 64 * half;
      uint8_t* qh = b[i].qh + 32 * half;
      const uint8_t* qq = q + 128 * half;
      for (int l = 0; l < 32; ++l) {
        ql[l] = static_cast<uint8_t>((qq[l] & 0xF) | ((qq[l + 64] & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((qq[l + 32] & 0xF) | ((qq[l + 96] & 0xF) << 4));
        qh[l] = static_cast<uint8_t>((qq[l] >> 4) | ((qq[l + 32] >> 4) << 2) |
                                     ((qq[l + 64] >> 4) << 4) | ((qq[l + 96] >> 4) << 6));
      }
    }
  }
}

size_t AlignUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

}  // namespace

void DequantizeRow(DType type, const void* row, int64_t count, float* out) {
  const int64_t bs = DTypeBlockSize(type);
  KVASIR_CHECK(count % bs == 0);
  const int64_t nb = count / bs;
  switch (type) {
    case DType::kF32:
      std::memcpy(out, row, static_cast<size_t>(count) * sizeof(float));
      return;
    case DType::kF16:
      ConvertF16ToF32(static_cast<const uint16_t*>(row), count, out);
      return;
    case DType::kBF16: {
      const auto* h = static_cast<const uint16_t*>(row);
      for (int64_t i = 0; i < count; ++i) out[i] = Bf16ToFp32(h[i]);
      return;
    }
    case DType::kQ4_0:
      return DequantQ4_0(static_cast<const BlockQ4_0*>(row), nb, out);
    case DType::kQ4_1:
      return DequantQ4_1(static_cast<const BlockQ4_1*>(row), nb, out);
    case DType::kQ8_0:
      return DequantQ8_0(static_cast<const BlockQ8_0*>(row), nb, out);
    case DType::kQ4_K:
      return DequantQ4K(static_cast<const BlockQ4K*>(row), nb, out);
    case DType::kQ6_K:
      return DequantQ6K(static_cast<const BlockQ6K*>(row), nb, out);
  }
  KVASIR_CHECK_MSG(false, "DequantizeRow: unsupported type");
}

void QuantizeRow(DType type, const float* x, int64_t count, void* out) {
  const int64_t bs = DTypeBlockSize(type);
  KVASIR_CHECK(count % bs == 0);
  const int64_t nb = count / bs;
  switch (type) {
    case DType::kF32:
      std::memcpy(out, x, static_cast<size_t>(count) * sizeof(float));
      return;
    case DType::kF16:
      ConvertF32ToF16(x, count, static_cast<uint16_t*>(out));
      return;
    case DType::kBF16: {
      auto* h = static_cast<uint16_t*>(out);
      for (int64_t i = 0; i < count; ++i) h[i] = Fp32ToBf16(x[i]);
      return;
    }
    case DType::kQ4_0:
      return QuantQ4_0(x, nb, static_cast<BlockQ4_0*>(out));
    case DType::kQ4_1:
      return QuantQ4_1(x, nb, static_cast<BlockQ4_1*>(out));
    case DType::kQ8_0:
      return QuantQ8_0(x, nb, static_cast<BlockQ8_0*>(out));
    case DType::kQ4_K:
      return QuantQ4K(x, nb, static_cast<BlockQ4K*>(out));
    case DType::kQ6_K:
      return QuantQ6K(x, nb, static_cast<BlockQ6K*>(out));
  }
  KVASIR_CHECK_MSG(false, "QuantizeRow: unsupported type");
}

void GetRows(const WeightView& w, const int32_t* ids, int64_t n, float* out) {
  KVASIR_CHECK_MSG(w.layout == WeightLayout::kRows, "GetRows: weights in layout kRows8");
  for (int64_t i = 0; i < n; ++i) {
    KVASIR_CHECK_MSG(ids[i] >= 0 && ids[i] < w.rows, "GetRows: id out of range");
    DequantizeRow(w.type, w.row(ids[i]), w.cols, out + i * w.cols);
  }
}

void ConvertF32ToF16(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = Kernels().convert_f32_to_f16(x, n, out); i < n; ++i) out[i] = Fp32ToFp16(x[i]);
}

void ConvertF16ToF32(const uint16_t* x, int64_t n, float* out) {
  for (int64_t i = Kernels().convert_f16_to_f32(x, n, out); i < n; ++i) out[i] = Fp16ToFp32(x[i]);
}

// The scalar level converts nothing itself: the callers above finish every element.
int64_t scalar::ConvertF32ToF16(const float*, int64_t, uint16_t*) { return 0; }
int64_t scalar::ConvertF16ToF32(const uint16_t*, int64_t, float*) { return 0; }

// ---- Activations -------------------------------------------------------------------------

ActFormat ActFormatFor(int dtype) {
  switch (static_cast<DType>(dtype)) {
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
      return ActFormat::kAct32;
    case DType::kQ4_K:
    case DType::kQ6_K:
      return ActFormat::kAct256;
    default:
      return ActFormat::kNone;
  }
}

size_t ActBytes(ActFormat format, int64_t n, int64_t cols) {
  const int64_t bs = format == ActFormat::kAct256 ? kQKK : kQK;
  const int64_t blocks = cols / bs;
  // 64 bytes of slack for the alignment of `mem`, 64 more after the last array for vector loads.
  size_t bytes = 128 + AlignUp(static_cast<size_t>(n * cols), 64);
  bytes += AlignUp(static_cast<size_t>(n * blocks) * sizeof(float), 64);
  if (format == ActFormat::kAct32) {
    bytes += AlignUp(static_cast<size_t>(n * blocks) * sizeof(float), 64);
  } else {
    bytes += AlignUp(static_cast<size_t>(n * blocks * 16) * sizeof(int16_t), 64);
  }
  return bytes;
}

QuantizedActs CarveActs(ActFormat format, int64_t n, int64_t cols, uint8_t* mem) {
  QuantizedActs a;
  a.format = format;
  a.n = n;
  a.cols = cols;
  a.blocks = cols / (format == ActFormat::kAct256 ? kQKK : kQK);
  auto p = reinterpret_cast<uintptr_t>(mem);
  p = AlignUp(p, 64);
  a.qs = reinterpret_cast<int8_t*>(p);
  p += AlignUp(static_cast<size_t>(n * cols), 64);
  a.d = reinterpret_cast<float*>(p);
  p += AlignUp(static_cast<size_t>(n * a.blocks) * sizeof(float), 64);
  if (format == ActFormat::kAct32) {
    a.s = reinterpret_cast<float*>(p);
  } else {
    a.bsums = reinterpret_cast<int16_t*>(p);
  }
  return a;
}

void scalar::QuantizeActRow(const float* x, QuantizedActs& acts, int64_t t) {
  const int bs = acts.format == ActFormat::kAct256 ? kQKK : kQK;
  int8_t* qs = acts.qs + t * acts.cols;
  for (int64_t b = 0; b < acts.blocks; ++b) {
    const float* xb = x + b * bs;
    int8_t* q = qs + b * bs;
    float amax = 0.0f;
    for (int j = 0; j < bs; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < bs; ++j) {
      // nearbyint rounds half to even, as the vector conversion does.
      q[j] = static_cast<int8_t>(std::nearbyint(xb[j] * id));
      sum += q[j];
    }
    acts.d[t * acts.blocks + b] = d;
    if (acts.format == ActFormat::kAct32) {
      acts.s[t * acts.blocks + b] = d * static_cast<float>(sum);
    } else {
      int16_t* bsums = acts.bsums + (t * acts.blocks + b) * 16;
      for (int k = 0; k < 16; ++k) {
        int s16 = 0;
        for (int l = 0; l < 16; ++l) s16 += q[16 * k + l];
        bsums[k] = static_cast<int16_t>(s16);
      }
    }
  }
}

}  // namespace kvasir::kernels::cpu
