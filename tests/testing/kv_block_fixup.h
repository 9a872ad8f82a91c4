// For fuzz targets: makes a KV block's (kvcache/codec.h) payload size and both checksums match its
// bytes, so that mutated blocks get past the checksums into the checks behind them. Blocks too
// short to hold a whole header are left as they are.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/hash.h"

namespace kvasir::testing {

inline void FixKvBlockChecksums(std::string& block) {
  auto load64 = [&](size_t at) {
    uint64_t v = 0;
    for (size_t i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(block[at + i])} << (8 * i);
    return v;
  };
  auto store64 = [&](size_t at, uint64_t v) {
    for (size_t i = 0; i < 8; ++i) block[at + i] = static_cast<char>(v >> (8 * i));
  };
  // magic 4, version 2, fingerprint 8, prefix hash 8, n_tokens 8, seven int32 28, dtype 4.
  constexpr size_t kSpecLenAt = 4 + 2 + 8 + 8 + 8 + 28 + 4;
  if (block.size() < kSpecLenAt + 2) return;
  const size_t spec_len = static_cast<uint8_t>(block[kSpecLenAt]) |
                          static_cast<size_t>(static_cast<uint8_t>(block[kSpecLenAt + 1])) << 8;
  const size_t bytes_at = kSpecLenAt + 2 + spec_len + 4 + 4 + 8;  // chunk index, count, offset
  const size_t payload_xxh3_at = bytes_at + 8 + 8;                // payload bytes, snapshot bytes
  const size_t header_xxh3_at = payload_xxh3_at + 8;
  const size_t header_end = header_xxh3_at + 8;
  if (block.size() < header_end) return;
  const std::string_view payload = std::string_view(block).substr(header_end);
  store64(bytes_at, payload.size());
  if (load64(bytes_at + 8) < payload.size()) store64(bytes_at + 8, payload.size());
  store64(payload_xxh3_at, Xxh3(payload));
  store64(header_xxh3_at, Xxh3(block.data(), header_xxh3_at));
}

}  // namespace kvasir::testing
