// Moving a sequence's compressed KV between workers through the cachestore: the data path that
// disaggregated serving (a prefill worker hands a sequence to a decode worker) and prefix reuse
// rest on. The sender encodes the sequence with the block codec (kvcache/codec.h: every table the
// policy keeps, its per-sequence state, a checksum per block) and writes the blocks to the store
// (two-phase puts; over UCX when the store offers it). The receiver finds the snapshot by the
// hash of its tokens, reads the blocks (one-sided UCX gets of the store's exported memory, or the
// RPC fallback), verifies every checksum, and restores the sequence in its own cache under the
// same policy, where it continues bit for bit as the sender's would have.
//
//   // prefill worker, after the prompt's last chunk:
//   KVASIR_ASSIGN_OR_RETURN(KvTransferStats sent, PushSequence(store, cache, seq, prompt, fp));
//   // decode worker:
//   KVASIR_ASSIGN_OR_RETURN(SequenceKv* seq, PullSequence(store, cache, policy, prompt, fp));
//
// A prefill can also stream its snapshot in parts of a few layers each (LayerParts): the part of
// layers [a, b) is encoded and written as soon as the last prompt chunk has run through layer
// b - 1, while the later layers compute, and the last part (with the policy state) when the step
// is done (EncodeSnapshotPart, PutBlocks, then PushSequence from the last part's first layer).
// The receiver is given the same bounds and reads every part (FetchSnapshot).
//
// The scheduler calls them for prefill/decode hand-offs, drains and resumes (service/scheduler.h);
// docs/disaggregation.md has the design and the measurements (`kvasir bench handoff`).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cachestore/block_key.h"
#include "cachestore/client.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"
#include "worker/model_runner.h"

namespace kvasir::worker {

struct KvTransferStats {
  int64_t blocks = 0;
  int64_t bytes = 0;     // block bytes moved (payload and headers)
  int64_t kv_bytes = 0;  // what the policy holds (KvUsage::bytes): bytes / kv_bytes is the overhead
  double seconds = 0;
};

// The hash a snapshot of exactly `tokens` is stored under: the prefix hash chain over the whole
// blocks, extended by the partial last block when there is one (so two prompts that differ only
// in their tail never share a key), or the chain's seed for an empty prompt.
uint64_t SnapshotHash(std::span<const int32_t> tokens);

// The key space of the part of layers [layer_begin, layer_end) (-1: to the last) and the model's
// KV heads [head_begin, head_end) (-1: to the model's last, KvGeometry::model_kv_heads) of a
// snapshot under `policy`.
cachestore::KeySpace SnapshotKeySpace(uint64_t model_fingerprint, const kvcache::KvPolicy& policy,
                                      const kvcache::KvGeometry& geometry, int32_t layer_begin = 0,
                                      int32_t layer_end = -1, int32_t head_begin = 0,
                                      int32_t head_end = -1);

// The layer bounds of a snapshot in parts of `layers_per_part` layers: {0, k, 2k, ..., n_layer}
// (the last part may be shorter); {0, n_layer}, one part, for 0 or at least n_layer.
std::vector<int32_t> LayerParts(int32_t n_layer, int32_t layers_per_part);
// True when `bounds` start at 0, rise strictly and end at n_layer (at most 1024 parts). The same
// check serves the KV-head parts of a tensor-parallel group's snapshot (n_layer: the model's KV
// heads).
bool ValidLayerParts(std::span<const int32_t> bounds, int32_t n_layer);

// Encodes the part of layers [layer_begin, layer_end) of `seq` as the snapshot of `tokens`. A
// part that ends before the last layer may be taken during the step that computes the last of
// `tokens`, once it has run through layer_end - 1 (SnapshotInfo::n_tokens).
absl::StatusOr<std::vector<std::string>> EncodeSnapshotPart(const kvcache::KvCache& cache,
                                                            const kvcache::SequenceKv& seq,
                                                            std::span<const int32_t> tokens,
                                                            uint64_t model_fingerprint,
                                                            int32_t layer_begin, int32_t layer_end);

// Writes encoded blocks to the store (blocks and bytes in the stats; no kv_bytes). A block the
// store already holds, or that another writer is storing now, counts as sent.
absl::StatusOr<KvTransferStats> PutBlocks(cachestore::StoreClient& store,
                                          std::span<const std::string> blocks,
                                          absl::Duration timeout);

// Encodes `seq` after `tokens` (its n_tokens must equal tokens.size()) from layer `layer_begin`
// on (the last part of a streamed snapshot; 0: the whole) and writes every block. With `runner`
// the runner encodes (ModelRunner::EncodeKv: a tensor-parallel group, every rank its KV heads, in
// the parts runner->KvHeadParts names), else the codec on `cache`.
absl::StatusOr<KvTransferStats> PushSequence(
    cachestore::StoreClient& store, const kvcache::KvCache& cache, const kvcache::SequenceKv& seq,
    std::span<const int32_t> tokens, uint64_t model_fingerprint,
    absl::Duration timeout = absl::Seconds(10), int32_t layer_begin = 0,
    ModelRunner* runner = nullptr);

// A snapshot's blocks read from the store (FetchSnapshot), not yet restored in a cache.
struct FetchedSnapshot {
  std::vector<std::string> blocks;  // verified by the store client (header, checksum, key)
  int64_t tokens = 0;               // the tokens it holds the KV of
  KvTransferStats stats;            // blocks, bytes and the fetch's seconds (no kv_bytes yet)
};

// The network half of PullSequence, safe off the cache's thread: finds the snapshot of exactly
// `tokens` under `policy`, in the parts `layer_bounds` names (LayerParts; empty: one part) times
// those `head_bounds` names (the model's KV heads, a tensor-parallel writer's KvHeadParts; empty:
// one part of all of them), and reads their blocks. NotFound when the store does not hold
// every part whole.
absl::StatusOr<FetchedSnapshot> FetchSnapshot(
    cachestore::StoreClient& store, const kvcache::KvPolicy& policy,
    const kvcache::KvGeometry& geometry, std::span<const int32_t> tokens,
    uint64_t model_fingerprint, absl::Duration timeout = absl::Seconds(10),
    std::span<const int32_t> layer_bounds = {}, std::span<const int32_t> head_bounds = {});

// The prefix cache's store tier (kvcache::PrefixCache::EncodeBlock: one snapshot per block of
// tokens, under the block's chain hash): reads the stored blocks of `hashes` from the first on,
// as far as the store holds them whole and they read without error. One entry per block (its
// encoded blocks), hashes[0]'s first; empty when the first is not stored.
struct FetchedRun {
  std::vector<std::vector<std::string>> blocks;
  KvTransferStats stats;
};
absl::StatusOr<FetchedRun> FetchBlockRun(cachestore::StoreClient& store,
                                         const cachestore::KeySpace& space,
                                         std::span<const uint64_t> hashes, absl::Duration timeout);

// The cache half: restores a fetched snapshot in `cache` (DataLoss for a block that fails the
// codec's checks, ResourceExhausted without room; nothing stays allocated on error), through
// `runner` when given (ModelRunner::DecodeKv: every rank of a tensor-parallel group its heads).
// Adds the restore's time and the KV bytes held to `snapshot.stats`.
absl::StatusOr<kvcache::SequenceKv*> RestoreSnapshot(
    kvcache::KvCache& cache, std::shared_ptr<const kvcache::KvPolicy> policy,
    FetchedSnapshot& snapshot, uint64_t model_fingerprint, ModelRunner* runner = nullptr);

// Finds the snapshot of exactly `tokens` under `policy`, reads and verifies its blocks, and
// restores the sequence in `cache` (FetchSnapshot, then RestoreSnapshot). NotFound when the store
// does not hold it whole; DataLoss when a block fails its checksum; ResourceExhausted when `cache`
// has no room. On error nothing stays allocated in `cache`, and the store's read leases are
// released.
absl::StatusOr<kvcache::SequenceKv*> PullSequence(cachestore::StoreClient& store,
                                                  kvcache::KvCache& cache,
                                                  std::shared_ptr<const kvcache::KvPolicy> policy,
                                                  std::span<const int32_t> tokens,
                                                  uint64_t model_fingerprint,
                                                  absl::Duration timeout = absl::Seconds(10),
                                                  KvTransferStats* stats = nullptr);

}  // namespace kvasir::worker
