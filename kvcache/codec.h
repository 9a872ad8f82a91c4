// The KV block codec: a sequence's compressed KV (every table's slots) and its policy state, as
// self-describing blocks that the transport moves and the cachestore keeps. A snapshot of a
// sequence after n tokens is cut into blocks of at most `max_block_bytes` of payload; every block
// carries the whole header (model fingerprint, policy spec, layout version, layer and head
// ranges, the prefix hash of the tokens, its place in the snapshot) and an XXH3 checksum of its
// payload and of its header. Decoding verifies every checksum before it uses a byte, and refuses
// blocks of another model, policy or layout. The layout is in docs/kvcache.md.
//
// A snapshot may come in parts, each a range of layers encoded on its own (so that a prefill can
// hand each range over as soon as its layers are computed, see worker/kv_transfer.h): the part
// that ends the layer range carries the policy state, the others none, and DecodeSequence
// takes the blocks of every part together. Parts may also cover ranges of KV heads (the ranks of
// a tensor-parallel group, each its own heads, in the model's head numbering): a cache holding
// heads [a, b) of the model takes those heads from whichever parts hold them, so that groups of
// different sizes hand KV over. The policy state travels split by KV heads
// (KvPolicy::SaveSplitState): every part that ends the layer range carries its heads' records.
//
//   KVASIR_ASSIGN_OR_RETURN(auto blocks, EncodeSequence(cache, seq, info));
//   ... move the blocks ...
//   KVASIR_ASSIGN_OR_RETURN(SequenceKv* restored, DecodeSequence(other_cache, blocks, policy,
//                                                               info.model_fingerprint));
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache {

inline constexpr uint32_t kKvBlockMagic = 0x424B564B;  // "KVKB" little-endian
// 2: the policy state is split by KV heads (each part that ends the layers carries its heads').
inline constexpr uint16_t kKvLayoutVersion = 2;

struct SnapshotInfo {
  uint64_t model_fingerprint = 0;
  uint64_t prefix_hash = 0;  // PrefixHashes(tokens).back() (0 if not keyed by a prefix)
  int32_t layer_begin = 0;   // layers [layer_begin, layer_end) are included
  int32_t layer_end = -1;    // -1: all layers
  int32_t head_begin = 0;    // KV heads [head_begin, head_end) of the cache are included
  int32_t head_end = -1;     // -1: all KV heads
  // A tensor-parallel rank's cache holds KV heads [head_offset, head_offset + its n_head_kv) of
  // a model with `total_heads` KV heads (-1: the cache's own count): the header then names the
  // model's heads, so that a cache of another split takes the heads it holds from such parts.
  int32_t head_offset = 0;
  int32_t total_heads = -1;
  int64_t max_block_bytes = 4 << 20;  // payload bytes per block
  // The tokens the snapshot holds the KV of; -1: seq.n_tokens(). Set while a step is under way
  // (its tokens are in the tables of the layers it ran, n_tokens advances at its end); only a
  // part without the policy state (one that does not end the layer range) can be taken then.
  int64_t n_tokens = -1;
};

// The header of a block, as DecodeBlockHeader reads it.
struct KvBlockHeader {
  uint16_t layout_version = 0;
  uint64_t model_fingerprint = 0;
  uint64_t prefix_hash = 0;
  int64_t n_tokens = 0;
  int32_t n_layer = 0, n_head_kv = 0, head_dim = 0;
  int32_t layer_begin = 0, layer_end = 0, head_begin = 0, head_end = 0;
  DType dtype = DType::kF32;
  std::string policy_spec;
  uint32_t chunk_index = 0, chunk_count = 0;
  uint64_t payload_offset = 0;  // where this block's payload sits in the snapshot
  uint64_t payload_bytes = 0;
  uint64_t snapshot_bytes = 0;  // payload bytes of the whole snapshot
  uint64_t payload_xxh3 = 0;
  size_t header_bytes = 0;  // where the payload starts in the block
};

// Encodes the sequence's tables in the given layer/head ranges, and the policy's state when the
// range ends at the last layer and the last KV head.
absl::StatusOr<std::vector<std::string>> EncodeSequence(const KvCache& cache, const SequenceKv& seq,
                                                        const SnapshotInfo& info);

// Parses and verifies one block's header (header checksum, magic, version); does not check the
// payload. DataLoss for a corrupted header, InvalidArgument for a foreign or truncated block.
absl::StatusOr<KvBlockHeader> DecodeBlockHeader(std::string_view block);

// Verifies every block (checksums, same snapshot, complete, model fingerprint, policy spec equal
// to policy->spec(), geometry equal to the cache's) and restores the sequence in `cache` under
// `policy`. The blocks may be those of several parts, in any order, whose layer and KV-head
// ranges cover every layer of the heads the cache holds exactly once: the cache holds the
// model's KV heads [head_offset, head_offset + its n_head_kv) (a tensor-parallel rank; 0: from
// the first). DataLoss names the block whose checksum failed. On error nothing stays allocated.
absl::StatusOr<SequenceKv*> DecodeSequence(KvCache& cache, std::span<const std::string> blocks,
                                           std::shared_ptr<const KvPolicy> policy,
                                           uint64_t model_fingerprint, int32_t head_offset = 0);

}  // namespace kvasir::kvcache
