// Test helpers for the cachestore: real codec blocks (synthetic snapshots) and byte views.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "cachestore/block_key.h"
#include "cachestore/synthetic_blocks.h"
#include "gtest/gtest.h"

namespace kvasir::cachestore::testing {

inline std::span<const std::byte> AsBytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

inline std::span<std::byte> AsWritable(std::string& s) {
  return std::as_writable_bytes(std::span<char>(s.data(), s.size()));
}

// `chunks` blocks of exactly `block_bytes` each (one snapshot under `prefix_hash`).
inline std::vector<std::string> Blocks(uint64_t prefix_hash, size_t chunks, uint64_t block_bytes,
                                       uint64_t seed = 7,
                                       uint64_t fingerprint = 0x6b76617369720001ull) {
  SyntheticSnapshotOptions o;
  o.prefix_hash = prefix_hash;
  o.block_bytes = block_bytes;
  o.seed = seed;
  o.model_fingerprint = fingerprint;
  o.n_layer = 2;
  o.n_head_kv = 2;
  o.head_dim = 16;
  // Enough payload for `chunks` whole blocks; blocks are cut at block_bytes - header bytes.
  o.payload_bytes = chunks * block_bytes;
  auto blocks = MakeSyntheticSnapshot(o);
  EXPECT_TRUE(blocks.ok()) << blocks.status();
  if (!blocks.ok()) return {};
  // The payload is rounded up to whole slots, so the snapshot may hold one more (short) chunk.
  EXPECT_GE(blocks->size(), chunks);
  return *std::move(blocks);
}

inline BlockKey KeyOf(const std::string& block) {
  auto parsed = ParseBlock(block);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? parsed->first : BlockKey{};
}

inline KeySpace TestSpace() {
  SyntheticSnapshotOptions o;
  o.n_layer = 2;
  o.n_head_kv = 2;
  return SyntheticKeySpace(o);
}

}  // namespace kvasir::cachestore::testing
