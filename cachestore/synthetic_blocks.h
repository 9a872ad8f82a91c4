// Synthetic KV snapshots for the bench and the tests: a full-policy sequence filled with seeded
// pseudo-random slots, cut into blocks by the real codec (kvcache::EncodeSequence), so that every
// block carries a genuine header and checksums. Sizes are chosen so that every block but possibly
// the last is exactly `block_bytes` long.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cachestore/block_key.h"

namespace kvasir::cachestore {

struct SyntheticSnapshotOptions {
  uint64_t model_fingerprint = 0x6b76617369720001ull;
  uint64_t prefix_hash = 1;
  uint64_t payload_bytes = 1 << 20;  // at least this much payload in the snapshot
  uint64_t block_bytes = 64 << 10;   // whole block (header + payload); > header size
  uint64_t seed = 1;
  int32_t n_layer = 2;  // geometry of the synthetic cache (KV heads, head dim in f32)
  int32_t n_head_kv = 2;
  int32_t head_dim = 64;
  int32_t head_begin = 0;  // the TP shard written: KV heads [head_begin, head_end)
  int32_t head_end = -1;   // -1: all
};

// The blocks of one snapshot, in chunk order.
absl::StatusOr<std::vector<std::string>> MakeSyntheticSnapshot(
    const SyntheticSnapshotOptions& options);

// The key space MakeSyntheticSnapshot's blocks are in (policy "full", layout 1, all layers).
KeySpace SyntheticKeySpace(const SyntheticSnapshotOptions& options);

}  // namespace kvasir::cachestore
