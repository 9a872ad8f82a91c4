#include "worker/kv_transfer.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvcache/codec.h"
#include "kvcache/prefix_hash.h"

namespace kvasir::worker {
namespace {

// The time left before `deadline` (the store client takes a timeout that is not positive for its
// default one, so a passed deadline must not reach it).
absl::StatusOr<absl::Duration> TimeLeft(absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) {
    return absl::DeadlineExceededError("the KV transfer's deadline passed");
  }
  return left;
}

}  // namespace

uint64_t SnapshotHash(std::span<const int32_t> tokens) {
  const size_t block = kvcache::kDefaultHashBlockTokens;
  const std::vector<uint64_t> chain = kvcache::PrefixHashes(tokens, block);
  const uint64_t last = chain.empty() ? kvcache::PrefixHashSeed() : chain.back();
  const size_t whole = chain.size() * block;
  if (whole == tokens.size()) return last;
  return kvcache::PrefixHashNext(last, tokens.subspan(whole));
}

cachestore::KeySpace SnapshotKeySpace(uint64_t model_fingerprint, const kvcache::KvPolicy& policy,
                                      const kvcache::KvGeometry& geometry, int32_t layer_begin,
                                      int32_t layer_end, int32_t head_begin, int32_t head_end) {
  cachestore::KeySpace space;
  space.model_fingerprint = model_fingerprint;
  space.policy_spec = policy.spec();
  space.layer_begin = layer_begin;
  space.layer_end = layer_end < 0 ? geometry.n_layer : layer_end;
  space.head_begin = head_begin;
  space.head_end = head_end < 0 ? geometry.model_kv_heads() : head_end;
  return space;
}

std::vector<int32_t> LayerParts(int32_t n_layer, int32_t layers_per_part) {
  std::vector<int32_t> bounds = {0};
  const int32_t step = layers_per_part <= 0 ? n_layer : layers_per_part;
  for (int32_t l = step; l < n_layer; l += step) bounds.push_back(l);
  bounds.push_back(n_layer);
  return bounds;
}

bool ValidLayerParts(std::span<const int32_t> bounds, int32_t n_layer) {
  if (bounds.size() < 2 || bounds.size() > 1025 || bounds.front() != 0 ||
      bounds.back() != n_layer) {
    return false;
  }
  for (size_t i = 1; i < bounds.size(); ++i) {
    if (bounds[i] <= bounds[i - 1]) return false;
  }
  return true;
}

namespace {

// What a part of layers [layer_begin, layer_end) of the snapshot of `tokens` is encoded with.
kvcache::SnapshotInfo PartInfo(std::span<const int32_t> tokens, uint64_t model_fingerprint,
                               int32_t layer_begin, int32_t layer_end) {
  kvcache::SnapshotInfo info;
  info.model_fingerprint = model_fingerprint;
  info.prefix_hash = SnapshotHash(tokens);
  info.layer_begin = layer_begin;
  info.layer_end = layer_end;
  info.n_tokens = static_cast<int64_t>(tokens.size());
  return info;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> EncodeSnapshotPart(
    const kvcache::KvCache& cache, const kvcache::SequenceKv& seq, std::span<const int32_t> tokens,
    uint64_t model_fingerprint, int32_t layer_begin, int32_t layer_end) {
  return kvcache::EncodeSequence(cache, seq,
                                 PartInfo(tokens, model_fingerprint, layer_begin, layer_end));
}

absl::StatusOr<KvTransferStats> PutBlocks(cachestore::StoreClient& store,
                                          std::span<const std::string> blocks,
                                          absl::Duration timeout) {
  const absl::Time start = absl::Now();
  std::vector<std::span<const std::byte>> spans;
  spans.reserve(blocks.size());
  KvTransferStats stats;
  for (const std::string& b : blocks) {
    spans.push_back(std::as_bytes(std::span<const char>(b)));
    stats.bytes += static_cast<int64_t>(b.size());
  }
  KVASIR_ASSIGN_OR_RETURN(auto results, store.PutBatch(spans, timeout));
  for (size_t i = 0; i < results.size(); ++i) {
    if (!results[i].ok()) {
      return absl::Status(results[i].status().code(),
                          absl::StrCat("KV block ", i, " of ", results.size(),
                                       " not stored: ", results[i].status().message()));
    }
  }
  stats.blocks = static_cast<int64_t>(blocks.size());
  stats.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return stats;
}

absl::StatusOr<KvTransferStats> PushSequence(cachestore::StoreClient& store,
                                             const kvcache::KvCache& cache,
                                             const kvcache::SequenceKv& seq,
                                             std::span<const int32_t> tokens,
                                             uint64_t model_fingerprint, absl::Duration timeout,
                                             int32_t layer_begin, ModelRunner* runner) {
  const absl::Time start = absl::Now();
  if (seq.n_tokens() != static_cast<int64_t>(tokens.size())) {
    return absl::InvalidArgumentError(absl::StrCat("the sequence holds ", seq.n_tokens(),
                                                   " tokens, the snapshot names ", tokens.size()));
  }
  const kvcache::SnapshotInfo info = PartInfo(tokens, model_fingerprint, layer_begin, -1);
  KVASIR_ASSIGN_OR_RETURN(std::vector<std::string> blocks,
                          runner != nullptr ? runner->EncodeKv(cache, seq, info)
                                            : kvcache::EncodeSequence(cache, seq, info));
  KVASIR_ASSIGN_OR_RETURN(KvTransferStats stats, PutBlocks(store, blocks, timeout));
  stats.kv_bytes = cache.Usage(seq).bytes;
  stats.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return stats;
}

absl::StatusOr<FetchedSnapshot> FetchSnapshot(cachestore::StoreClient& store,
                                              const kvcache::KvPolicy& policy,
                                              const kvcache::KvGeometry& geometry,
                                              std::span<const int32_t> tokens,
                                              uint64_t model_fingerprint, absl::Duration timeout,
                                              std::span<const int32_t> layer_bounds,
                                              std::span<const int32_t> head_bounds) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;
  const std::vector<int32_t> whole = LayerParts(geometry.n_layer, 0);
  if (layer_bounds.empty()) layer_bounds = whole;
  if (!ValidLayerParts(layer_bounds, geometry.n_layer)) {
    return absl::InvalidArgumentError("the KV snapshot's layer parts do not fit the model");
  }
  const std::vector<int32_t> all_heads = {0, geometry.model_kv_heads()};
  if (head_bounds.empty()) head_bounds = all_heads;
  if (!ValidLayerParts(head_bounds, geometry.model_kv_heads())) {
    return absl::InvalidArgumentError("the KV snapshot's head parts are not ranges of heads");
  }
  const uint64_t hash = SnapshotHash(tokens);
  FetchedSnapshot f;
  f.tokens = static_cast<int64_t>(tokens.size());
  std::vector<cachestore::BlockKey> keys;
  for (size_t p = 0; p + 1 < layer_bounds.size(); ++p) {
    for (size_t h = 0; h + 1 < head_bounds.size(); ++h) {
      const cachestore::KeySpace space =
          SnapshotKeySpace(model_fingerprint, policy, geometry, layer_bounds[p],
                           layer_bounds[p + 1], head_bounds[h], head_bounds[h + 1]);
      KVASIR_ASSIGN_OR_RETURN(const absl::Duration left, TimeLeft(deadline));
      KVASIR_ASSIGN_OR_RETURN(cachestore::LookupResult found,
                              store.Lookup(space, std::span<const uint64_t>(&hash, 1), left));
      if (found.matched_blocks != 1 || found.chunk_bytes.empty()) {
        const bool one = layer_bounds.size() == 2 && head_bounds.size() == 2;
        return absl::NotFoundError(
            one ? "the store holds no complete KV snapshot of these tokens"
                : absl::StrCat("the store holds no complete KV snapshot of these tokens (layers ",
                               layer_bounds[p], " to ", layer_bounds[p + 1] - 1, ", KV heads ",
                               head_bounds[h], " to ", head_bounds[h + 1] - 1, " are missing)"));
      }
      for (size_t i = 0; i < found.chunk_bytes.size(); ++i) {
        keys.push_back({space, hash, static_cast<uint32_t>(i)});
        f.blocks.emplace_back(found.chunk_bytes[i], '\0');
      }
    }
  }
  std::vector<std::span<std::byte>> outs;
  outs.reserve(f.blocks.size());
  for (std::string& b : f.blocks) outs.push_back(std::as_writable_bytes(std::span<char>(b)));
  KVASIR_ASSIGN_OR_RETURN(const absl::Duration left, TimeLeft(deadline));
  KVASIR_ASSIGN_OR_RETURN(auto sizes, store.GetBatch(keys, outs, left));
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (!sizes[i].ok()) {
      return absl::Status(sizes[i].status().code(),
                          absl::StrCat("KV block ", i, " of ", sizes.size(),
                                       " not read: ", sizes[i].status().message()));
    }
    f.blocks[i].resize(*sizes[i]);
    f.stats.bytes += static_cast<int64_t>(*sizes[i]);
  }
  f.stats.blocks = static_cast<int64_t>(f.blocks.size());
  f.stats.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return f;
}

absl::StatusOr<FetchedRun> FetchBlockRun(cachestore::StoreClient& store,
                                         const cachestore::KeySpace& space,
                                         std::span<const uint64_t> hashes, absl::Duration timeout) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;
  FetchedRun run;
  KVASIR_ASSIGN_OR_RETURN(const absl::Duration left, TimeLeft(deadline));
  KVASIR_ASSIGN_OR_RETURN(auto sizes, store.LookupRun(space, hashes, left));
  if (sizes.empty()) return run;
  std::vector<cachestore::BlockKey> keys;
  std::vector<std::string> bytes;
  std::vector<size_t> first;  // index in keys of each block's first chunk
  for (size_t b = 0; b < sizes.size(); ++b) {
    first.push_back(keys.size());
    for (size_t c = 0; c < sizes[b].size(); ++c) {
      keys.push_back({space, hashes[b], static_cast<uint32_t>(c)});
      bytes.emplace_back(sizes[b][c], '\0');
    }
  }
  first.push_back(keys.size());
  std::vector<std::span<std::byte>> outs;
  outs.reserve(bytes.size());
  for (std::string& b : bytes) outs.push_back(std::as_writable_bytes(std::span<char>(b)));
  KVASIR_ASSIGN_OR_RETURN(const absl::Duration get_left, TimeLeft(deadline));
  KVASIR_ASSIGN_OR_RETURN(auto got, store.GetBatch(keys, outs, get_left));
  // The run ends at the first block a chunk of which was not read (evicted since the lookup).
  for (size_t b = 0; b + 1 < first.size(); ++b) {
    std::vector<std::string> chunks;
    for (size_t k = first[b]; k < first[b + 1]; ++k) {
      if (!got[k].ok()) break;
      bytes[k].resize(*got[k]);
      run.stats.bytes += static_cast<int64_t>(*got[k]);
      chunks.push_back(std::move(bytes[k]));
    }
    if (chunks.size() != first[b + 1] - first[b]) break;
    run.stats.blocks += static_cast<int64_t>(chunks.size());
    run.blocks.push_back(std::move(chunks));
  }
  run.stats.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return run;
}

absl::StatusOr<kvcache::SequenceKv*> RestoreSnapshot(
    kvcache::KvCache& cache, std::shared_ptr<const kvcache::KvPolicy> policy,
    FetchedSnapshot& snapshot, uint64_t model_fingerprint, ModelRunner* runner) {
  const absl::Time start = absl::Now();
  KVASIR_ASSIGN_OR_RETURN(
      kvcache::SequenceKv * seq,
      runner != nullptr
          ? runner->DecodeKv(cache, snapshot.blocks, std::move(policy), model_fingerprint)
          : kvcache::DecodeSequence(cache, snapshot.blocks, std::move(policy), model_fingerprint));
  if (seq->n_tokens() != snapshot.tokens) {
    const int64_t held = seq->n_tokens();
    cache.FreeSequence(seq->id());
    return absl::DataLossError(
        absl::StrCat("the stored KV snapshot holds ", held, " tokens, expected ", snapshot.tokens));
  }
  snapshot.stats.kv_bytes = cache.Usage(*seq).bytes;
  snapshot.stats.seconds += absl::ToDoubleSeconds(absl::Now() - start);
  return seq;
}

absl::StatusOr<kvcache::SequenceKv*> PullSequence(cachestore::StoreClient& store,
                                                  kvcache::KvCache& cache,
                                                  std::shared_ptr<const kvcache::KvPolicy> policy,
                                                  std::span<const int32_t> tokens,
                                                  uint64_t model_fingerprint,
                                                  absl::Duration timeout, KvTransferStats* stats) {
  KVASIR_ASSIGN_OR_RETURN(
      FetchedSnapshot fetched,
      FetchSnapshot(store, *policy, cache.geometry(), tokens, model_fingerprint, timeout));
  KVASIR_ASSIGN_OR_RETURN(kvcache::SequenceKv * seq,
                          RestoreSnapshot(cache, std::move(policy), fetched, model_fingerprint));
  if (stats != nullptr) *stats = fetched.stats;
  return seq;
}

}  // namespace kvasir::worker
