// AVX2 kernels of MatMul for weights in the kRows8 layout: the walk of matmul_rows8_impl.h with
// maddubs + madd as the integer steps. Compiled with -mavx2 -mfma -mf16c like matmul_avx2.cc,
// and reached through the avx2 IsaKernels table.
//
// Exact in 16 bits: for Q4 a maddubs lane is at most 2 x 15 x 128 = 3,840 in magnitude and a
// block adds 8 of them (30,720) before madd widens to i32, once per block; for Q8_0 |w|, |x| <=
// 127, so a maddubs pair fits (as in matmul_avx2.cc).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/cpu/internal.h"
#include "kernels/cpu/quant_blocks.h"

namespace kvasir::kernels::cpu::avx2 {
namespace {

struct MaddubsOps {
  using Q4Sum = __m256i;  // 16-bit lanes
  static __m256i Q4Step(__m256i s, __m256i lo, __m256i x_lo, __m256i hi, __m256i x_hi) {
    return _mm256_add_epi16(
        s, _mm256_add_epi16(_mm256_maddubs_epi16(lo, x_lo), _mm256_maddubs_epi16(hi, x_hi)));
  }
  static __m256i Q4Finish(__m256i s) { return _mm256_madd_epi16(s, _mm256_set1_epi16(1)); }
  static __m256i Q8Step(__m256i s, __m256i aw, __m256i sx) {
    return _mm256_add_epi32(s,
                            _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1)));
  }
};

}  // namespace

#include "kernels/cpu/matmul_rows8_impl.h"

void QuantTileRows8(const WeightView& w, const QuantizedActs& acts, int64_t r0, int64_t r1,
                    int64_t t0, int64_t t1, float* y, int64_t y_stride) {
  QuantTileRows8With<MaddubsOps>(w, acts, r0, r1, t0, t1, y, y_stride);
}

}  // namespace kvasir::kernels::cpu::avx2
