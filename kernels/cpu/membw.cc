// Memory read bandwidth probe: every thread sums its slice of a large buffer with 16-byte loads
// (SSE2, the x86-64 baseline, already enough to saturate DRAM), best of several passes.
#include "kernels/cpu/membw.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace kvasir::kernels::cpu {
namespace {

constexpr size_t kBufferBytes = size_t{256} << 20;
constexpr int kPasses = 5;

uint64_t SumSlice(const uint8_t* p, size_t bytes) {
#if defined(__SSE2__)
  __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 64 <= bytes; i += 64) {
    a0 = _mm_add_epi64(a0, _mm_load_si128(reinterpret_cast<const __m128i*>(p + i)));
    a1 = _mm_add_epi64(a1, _mm_load_si128(reinterpret_cast<const __m128i*>(p + i + 16)));
    a2 = _mm_add_epi64(a2, _mm_load_si128(reinterpret_cast<const __m128i*>(p + i + 32)));
    a3 = _mm_add_epi64(a3, _mm_load_si128(reinterpret_cast<const __m128i*>(p + i + 48)));
  }
  const __m128i s = _mm_add_epi64(_mm_add_epi64(a0, a1), _mm_add_epi64(a2, a3));
  uint64_t lanes[2];
  _mm_storeu_si128(reinterpret_cast<__m128i*>(lanes), s);
  return lanes[0] + lanes[1];
#else
  uint64_t sum = 0;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    uint64_t v;
    std::memcpy(&v, p + i, 8);
    sum += v;
  }
  return sum;
#endif
}

}  // namespace

double MeasureMemoryReadGBps(ThreadPool& pool) {
  const int threads = pool.num_threads();
  // 64-byte aligned slices, one per thread.
  std::unique_ptr<uint8_t[]> storage(new uint8_t[kBufferBytes + 64]);
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(storage.get()) + 63) &
                                             ~uintptr_t{63});
  const size_t slice = kBufferBytes / static_cast<size_t>(threads) / 64 * 64;
  // Touch every page from the thread that will read it.
  pool.RunOnAll(
      [&](int t, int) { std::memset(base + static_cast<size_t>(t) * slice, t + 1, slice); });
  std::vector<uint64_t> sink(static_cast<size_t>(threads));
  double best = 0.0;
  for (int pass = 0; pass < kPasses; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    pool.RunOnAll([&](int t, int) {
      sink[static_cast<size_t>(t)] += SumSlice(base + static_cast<size_t>(t) * slice, slice);
    });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, static_cast<double>(slice) * threads / seconds / 1e9);
  }
  // Keep the sums observable so the reads cannot be optimized away.
  volatile uint64_t keep = 0;
  for (uint64_t s : sink) keep = keep + s;
  (void)keep;
  return best;
}

}  // namespace kvasir::kernels::cpu
