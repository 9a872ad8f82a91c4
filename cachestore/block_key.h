// How the cachestore names blocks. A KV block (kvcache/codec.h) is keyed by what its header says:
// the key space (model fingerprint, policy spec, layout version, layer and KV-head ranges, i.e.
// the TP shard), the prefix hash of the token blocks the snapshot covers, and the chunk index
// inside that snapshot. Everything here is plain data; the store never looks past a block header.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "cachestore/cachestore.pb.h"
#include "kvcache/codec.h"

namespace kvasir::cachestore {

// Blocks of one model, policy, layout and TP shard. Lookup searches one key space.
struct KeySpace {
  uint64_t model_fingerprint = 0;
  std::string policy_spec;
  uint32_t layout_version = kvcache::kKvLayoutVersion;
  int32_t layer_begin = 0, layer_end = 0;  // layers [layer_begin, layer_end)
  int32_t head_begin = 0, head_end = 0;    // KV heads [head_begin, head_end)

  friend bool operator==(const KeySpace&, const KeySpace&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const KeySpace& s) {
    return H::combine(std::move(h), s.model_fingerprint, s.policy_spec, s.layout_version,
                      s.layer_begin, s.layer_end, s.head_begin, s.head_end);
  }
};

// One snapshot of a sequence: all chunks stored under one prefix hash.
struct SnapshotKey {
  KeySpace space;
  uint64_t prefix_hash = 0;

  friend bool operator==(const SnapshotKey&, const SnapshotKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const SnapshotKey& k) {
    return H::combine(std::move(h), k.space, k.prefix_hash);
  }
};

struct BlockKey {
  KeySpace space;
  uint64_t prefix_hash = 0;
  uint32_t chunk_index = 0;

  SnapshotKey snapshot() const { return {space, prefix_hash}; }
  // A stable 64-bit digest of the canonical encoding (the disk tier's file name). Identical on
  // every machine and process.
  uint64_t Digest() const;
  // "fp=..,spec=..,layers=[a,b),heads=[c,d),prefix=..,chunk=n" for logs and errors.
  std::string ToString() const;

  friend bool operator==(const BlockKey&, const BlockKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const BlockKey& k) {
    return H::combine(std::move(h), k.space, k.prefix_hash, k.chunk_index);
  }
};

// The key a block's header implies.
BlockKey KeyFromHeader(const kvcache::KvBlockHeader& header);
KeySpace KeySpaceFromHeader(const kvcache::KvBlockHeader& header);

// Parses a block's header (header checksum, magic, version, sizes) and derives its key. The
// payload checksum is not checked here (VerifyBlock does both).
absl::StatusOr<std::pair<BlockKey, kvcache::KvBlockHeader>> ParseBlock(std::string_view block);

// Checks the whole block: header, payload size and payload XXH3. DataLoss for a checksum
// mismatch, InvalidArgument for a malformed or foreign block.
absl::StatusOr<std::pair<BlockKey, kvcache::KvBlockHeader>> VerifyBlock(std::string_view block);

void ToProto(const KeySpace& space, KeySpaceProto* out);
void ToProto(const BlockKey& key, BlockKeyProto* out);
// InvalidArgument for out-of-range fields (negative or empty ranges, oversized spec).
absl::StatusOr<KeySpace> FromProto(const KeySpaceProto& proto);
absl::StatusOr<BlockKey> FromProto(const BlockKeyProto& proto);

}  // namespace kvasir::cachestore
