// AVX-512 kernels of MatMul for weights in the kRows8 layout: the walk of matmul_rows8_impl.h on
// 256-bit registers with AVX-512 VNNI's vpdpbusd (_mm256_dpbusd_epi32, AVX512VL + AVX512VNNI) as
// the integer steps: four u8 x s8 products summed exactly into each i32 lane in one instruction,
// where AVX2 takes maddubs, an add and, once per block, madd. Built twice like the other
// *_avx512.cc files, natively (namespace avx512) and against SIMDe (namespace avx512_emulated, for
// the kernel tests; avx512_intrinsics.h). Tested here only through the emulation; the avx512 level
// is off by default (docs/kernels.md, "ISA dispatch").
#include <cstdint>
#include <cstring>

#include "kernels/cpu/avx512_intrinsics.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/quant_blocks.h"

namespace kvasir::kernels::cpu::KVASIR_AVX512_NS {
namespace {

struct VnniOps {
  using Q4Sum = __m256i;  // i32 lanes
  static __m256i Q4Step(__m256i s, __m256i lo, __m256i x_lo, __m256i hi, __m256i x_hi) {
    return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(s, lo, x_lo), hi, x_hi);
  }
  static __m256i Q4Finish(__m256i s) { return s; }
  static __m256i Q8Step(__m256i s, __m256i aw, __m256i sx) {
    return _mm256_dpbusd_epi32(s, aw, sx);
  }
};

}  // namespace

#include "kernels/cpu/matmul_rows8_impl.h"

void QuantTileRows8(const WeightView& w, const QuantizedActs& acts, int64_t r0, int64_t r1,
                    int64_t t0, int64_t t1, float* y, int64_t y_stride) {
  QuantTileRows8With<VnniOps>(w, acts, r0, r1, t0, t1, y, y_stride);
}

}  // namespace kvasir::kernels::cpu::KVASIR_AVX512_NS
