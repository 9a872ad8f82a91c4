// A stand-in for libFuzzer when the build has none (gcc, the default preset): it feeds every seed
// file of the folders named on the command line to LLVMFuzzerTestOneInput, then a deterministic
// series of mutations of them (bit flips, byte overwrites with boundary values, truncations,
// splices). It finds crashes only where the sanitizers or the target's own checks notice them, so
// the suite runs it under the asan+ubsan preset too. Real coverage-guided fuzzing: the fuzz preset.
//   KVASIR_FUZZ_ITERATIONS (default 3000) mutations per seed.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<uint8_t> ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void Mutate(std::vector<uint8_t>& buf, std::mt19937_64& rng) {
  static constexpr uint8_t kBoundary[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x20, 0x40};
  if (buf.empty()) {
    buf.push_back(static_cast<uint8_t>(rng()));
    return;
  }
  const int mutations = 1 + static_cast<int>(rng() % 4);
  for (int m = 0; m < mutations && !buf.empty(); ++m) {
    const size_t pos = rng() % buf.size();
    switch (rng() % 6) {
      case 0:
        buf[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:
        buf[pos] = kBoundary[rng() % std::size(kBoundary)];
        break;
      case 2: {  // overwrite an aligned 8-byte field (counts, offsets, lengths) with an extreme
        const size_t at = pos & ~size_t{7};
        const uint64_t v = (rng() % 2) ? ~uint64_t{0} >> (rng() % 64) : rng() % 4096;
        for (size_t i = 0; i < 8 && at + i < buf.size(); ++i) buf[at + i] = uint8_t(v >> (8 * i));
        break;
      }
      case 3:
        buf.resize(pos);
        break;
      case 4:
        buf[pos] = static_cast<uint8_t>(rng());
        break;
      case 5: {  // duplicate a slice
        const size_t len = std::min<size_t>(buf.size() - pos, 1 + rng() % 64);
        std::vector<uint8_t> slice(buf.begin() + pos, buf.begin() + pos + len);
        buf.insert(buf.begin() + rng() % buf.size(), slice.begin(), slice.end());
        break;
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 3000;
  if (const char* env = std::getenv("KVASIR_FUZZ_ITERATIONS")) iterations = std::atoi(env);
  std::vector<std::vector<uint8_t>> seeds;
  for (int i = 1; i < argc; ++i) {
    std::filesystem::path dir(argv[i]);
    if (std::filesystem::is_regular_file(dir)) {
      seeds.push_back(ReadFile(dir));
      continue;
    }
    if (!std::filesystem::is_directory(dir)) {
      std::fprintf(stderr, "fuzz driver: %s is not a file or folder\n", argv[i]);
      return 2;
    }
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      if (entry.is_regular_file()) seeds.push_back(ReadFile(entry.path()));
    }
  }
  if (seeds.empty()) seeds.emplace_back();
  std::mt19937_64 rng(12345);
  size_t runs = 0;
  for (const auto& seed : seeds) {
    LLVMFuzzerTestOneInput(seed.data(), seed.size());
    ++runs;
    for (int it = 0; it < iterations; ++it) {
      std::vector<uint8_t> buf = seed;
      Mutate(buf, rng);
      LLVMFuzzerTestOneInput(buf.data(), buf.size());
      ++runs;
    }
  }
  std::printf("fuzz driver: %zu inputs from %zu seeds, no crash\n", runs, seeds.size());
  return 0;
}
