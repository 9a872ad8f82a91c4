// 64-bit hashing with XXH3, the one hash used for block checksums and the prefix hash chain. Its
// output is the same on every machine and process (no per-process seed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace kvasir {

uint64_t Xxh3(const void* data, size_t size, uint64_t seed = 0);
inline uint64_t Xxh3(std::string_view s, uint64_t seed = 0) {
  return Xxh3(s.data(), s.size(), seed);
}
template <typename T>
uint64_t Xxh3(std::span<const T> s, uint64_t seed = 0) {
  return Xxh3(s.data(), s.size_bytes(), seed);
}

}  // namespace kvasir
