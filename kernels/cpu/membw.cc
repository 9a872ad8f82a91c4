// Memory read bandwidth probe: every thread sums its slice of a large buffer with 16-byte loads
// (SSE2, the x86-64 baseline, already enough to saturate DRAM), best of several passes.
#include "kernels/cpu/membw.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace kvasir::kernels::cpu {
namespace {

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

double MeasureMemoryReadGBps(ThreadPool& pool, size_t bytes) {
  const int threads = pool.num_threads();
  bytes = std::max(bytes, static_cast<size_t>(threads) * 64);
  // 64-byte aligned slices, one per thread.
  std::unique_ptr<uint8_t[]> storage(new uint8_t[bytes + 64]);
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(storage.get()) + 63) &
                                             ~uintptr_t{63});
  const size_t slice = bytes / static_cast<size_t>(threads) / 64 * 64;
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

int64_t LastLevelCacheBytes(const std::string& sysfs_cpu0_cache) {
  namespace fs = std::filesystem;
  auto read = [](const fs::path& p) {
    std::ifstream in(p);
    std::string s;
    std::getline(in, s);
    return s;
  };
  // The whole of `s` as a decimal integer (kernels/ has no Abseil).
  auto parse = [](const std::string& s, int64_t* out) {
    const auto [end, err] = std::from_chars(s.data(), s.data() + s.size(), *out);
    return err == std::errc() && end == s.data() + s.size();
  };
  int64_t best_level = 0;
  int64_t best_bytes = 0;
  std::error_code ec;
  for (const fs::directory_entry& d : fs::directory_iterator(sysfs_cpu0_cache, ec)) {
    if (d.path().filename().string().rfind("index", 0) != 0) continue;
    if (read(d.path() / "type") == "Instruction") continue;
    int64_t level = 0;
    if (!parse(read(d.path() / "level"), &level)) continue;
    // "32768K", "2M" or a plain byte count.
    std::string size = read(d.path() / "size");
    int64_t unit = 1;
    if (!size.empty() && (size.back() == 'K' || size.back() == 'M' || size.back() == 'G')) {
      unit = size.back() == 'K' ? 1024 : size.back() == 'M' ? 1024 * 1024 : 1024LL * 1024 * 1024;
      size.pop_back();
    }
    int64_t n = 0;
    if (!parse(size, &n) || n <= 0) continue;
    if (level > best_level || (level == best_level && n * unit > best_bytes)) {
      best_level = level;
      best_bytes = n * unit;
    }
  }
  return best_bytes;
}

}  // namespace kvasir::kernels::cpu
