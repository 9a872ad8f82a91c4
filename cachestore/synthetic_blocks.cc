// Synthetic KV snapshots (see synthetic_blocks.h).
#include "cachestore/synthetic_blocks.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvcache/codec.h"
#include "kvcache/full_policy.h"
#include "kvcache/kv_cache.h"

namespace kvasir::cachestore {
namespace {

// Bytes of a block header for the "full" policy (fixed fields plus the spec), measured by
// encoding a one-slot sequence.
absl::StatusOr<uint64_t> HeaderBytes() {
  kvcache::KvGeometry g;
  g.n_layer = g.n_head = g.n_head_kv = 1;
  g.head_dim = g.n_rot = 2;
  KVASIR_ASSIGN_OR_RETURN(auto cache,
                          kvcache::KvCache::Create(g, {.page_size = 1, .capacity_bytes = 1 << 12}));
  auto policy = std::make_shared<kvcache::FullPolicy>();
  kvcache::SequenceKv& seq = cache->CreateSequence(policy);
  KVASIR_ASSIGN_OR_RETURN(auto blocks, kvcache::EncodeSequence(*cache, seq, {}));
  KVASIR_ASSIGN_OR_RETURN(auto header, kvcache::DecodeBlockHeader(blocks[0]));
  return header.header_bytes;
}

}  // namespace

KeySpace SyntheticKeySpace(const SyntheticSnapshotOptions& o) {
  KeySpace s;
  s.model_fingerprint = o.model_fingerprint;
  s.policy_spec = "full";
  s.layout_version = kvcache::kKvLayoutVersion;
  s.layer_begin = 0;
  s.layer_end = o.n_layer;
  s.head_begin = o.head_begin;
  s.head_end = o.head_end < 0 ? o.n_head_kv : o.head_end;
  return s;
}

absl::StatusOr<std::vector<std::string>> MakeSyntheticSnapshot(const SyntheticSnapshotOptions& o) {
  if (o.n_layer <= 0 || o.n_head_kv <= 0 || o.head_dim <= 0) {
    return absl::InvalidArgumentError("synthetic snapshot: bad geometry");
  }
  KVASIR_ASSIGN_OR_RETURN(const uint64_t header_bytes, HeaderBytes());
  if (o.block_bytes <= header_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "synthetic snapshot: blocks must be larger than the ", header_bytes, "-byte header"));
  }
  kvcache::KvGeometry g;
  g.n_layer = o.n_layer;
  g.n_head = g.n_head_kv = o.n_head_kv;
  g.head_dim = g.n_rot = o.head_dim;
  const uint64_t slot_bytes = static_cast<uint64_t>(o.head_dim) * sizeof(float);
  const uint64_t tables = 2ull * o.n_layer * o.n_head_kv;
  const uint64_t slots =
      std::max<uint64_t>(1, (o.payload_bytes + tables * slot_bytes - 1) / (tables * slot_bytes));
  if (slots > (1u << 30)) return absl::InvalidArgumentError("synthetic snapshot too large");
  const int32_t page_size = 64;
  const uint64_t pages = tables * ((slots + page_size - 1) / page_size);
  KVASIR_ASSIGN_OR_RETURN(
      auto cache,
      kvcache::KvCache::Create(
          g, {.page_size = page_size,
              .capacity_bytes = static_cast<int64_t>(pages * page_size * slot_bytes + (1 << 20))}));
  auto policy = std::make_shared<kvcache::FullPolicy>();
  kvcache::SequenceKv& seq = cache->CreateSequence(policy);
  uint64_t state = o.seed * 0x9e3779b97f4a7c15ull + 1;
  std::vector<uint64_t> slot(slot_bytes / sizeof(uint64_t) + 1);
  for (int32_t l = 0; l < o.n_layer; ++l) {
    for (int32_t h = 0; h < o.n_head_kv; ++h) {
      for (kvcache::HeadTable* t : {&seq.k(l, h), &seq.v(l, h)}) {
        KVASIR_RETURN_IF_ERROR(cache->Reserve(*t, static_cast<int32_t>(slots), 0));
        t->length = static_cast<int32_t>(slots);
        for (uint64_t s = 0; s < slots; ++s) {
          for (uint64_t& x : slot) {  // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            x = state;
          }
          std::memcpy(cache->SlotPtr(*t, static_cast<int32_t>(s)), slot.data(), slot_bytes);
        }
      }
    }
  }
  seq.set_n_tokens(static_cast<int64_t>(slots));
  kvcache::SnapshotInfo info;
  info.model_fingerprint = o.model_fingerprint;
  info.prefix_hash = o.prefix_hash;
  info.head_begin = o.head_begin;
  info.head_end = o.head_end;
  info.max_block_bytes = static_cast<int64_t>(o.block_bytes - header_bytes);
  return kvcache::EncodeSequence(*cache, seq, info);
}

}  // namespace kvasir::cachestore
