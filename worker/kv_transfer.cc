#include "worker/kv_transfer.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvcache/codec.h"
#include "kvcache/prefix_hash.h"

namespace kvasir::worker {

uint64_t SnapshotHash(std::span<const int32_t> tokens) {
  const size_t block = kvcache::kDefaultHashBlockTokens;
  const std::vector<uint64_t> chain = kvcache::PrefixHashes(tokens, block);
  const uint64_t last = chain.empty() ? kvcache::PrefixHashSeed() : chain.back();
  const size_t whole = chain.size() * block;
  if (whole == tokens.size()) return last;
  return kvcache::PrefixHashNext(last, tokens.subspan(whole));
}

cachestore::KeySpace SnapshotKeySpace(uint64_t model_fingerprint, const kvcache::KvPolicy& policy,
                                      const kvcache::KvGeometry& geometry) {
  cachestore::KeySpace space;
  space.model_fingerprint = model_fingerprint;
  space.policy_spec = policy.spec();
  space.layer_begin = 0;
  space.layer_end = geometry.n_layer;
  space.head_begin = 0;
  space.head_end = geometry.n_head_kv;
  return space;
}

absl::StatusOr<KvTransferStats> PushSequence(cachestore::StoreClient& store,
                                             const kvcache::KvCache& cache,
                                             const kvcache::SequenceKv& seq,
                                             std::span<const int32_t> tokens,
                                             uint64_t model_fingerprint, absl::Duration timeout) {
  const absl::Time start = absl::Now();
  if (seq.n_tokens() != static_cast<int64_t>(tokens.size())) {
    return absl::InvalidArgumentError(absl::StrCat("the sequence holds ", seq.n_tokens(),
                                                   " tokens, the snapshot names ", tokens.size()));
  }
  kvcache::SnapshotInfo info;
  info.model_fingerprint = model_fingerprint;
  info.prefix_hash = SnapshotHash(tokens);
  KVASIR_ASSIGN_OR_RETURN(std::vector<std::string> blocks,
                          kvcache::EncodeSequence(cache, seq, info));
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
  stats.kv_bytes = cache.Usage(seq).bytes;
  stats.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return stats;
}

absl::StatusOr<FetchedSnapshot> FetchSnapshot(cachestore::StoreClient& store,
                                              const kvcache::KvPolicy& policy,
                                              const kvcache::KvGeometry& geometry,
                                              std::span<const int32_t> tokens,
                                              uint64_t model_fingerprint, absl::Duration timeout) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;
  const cachestore::KeySpace space = SnapshotKeySpace(model_fingerprint, policy, geometry);
  const uint64_t hash = SnapshotHash(tokens);
  KVASIR_ASSIGN_OR_RETURN(cachestore::LookupResult found,
                          store.Lookup(space, std::span<const uint64_t>(&hash, 1), timeout));
  if (found.matched_blocks != 1 || found.chunk_bytes.empty()) {
    return absl::NotFoundError("the store holds no complete KV snapshot of these tokens");
  }
  FetchedSnapshot f;
  f.tokens = static_cast<int64_t>(tokens.size());
  std::vector<cachestore::BlockKey> keys;
  std::vector<std::span<std::byte>> outs;
  keys.reserve(found.chunk_bytes.size());
  f.blocks.reserve(found.chunk_bytes.size());
  for (size_t i = 0; i < found.chunk_bytes.size(); ++i) {
    keys.push_back({space, hash, static_cast<uint32_t>(i)});
    f.blocks.emplace_back(found.chunk_bytes[i], '\0');
    outs.push_back(std::as_writable_bytes(std::span<char>(f.blocks.back())));
  }
  KVASIR_ASSIGN_OR_RETURN(auto sizes, store.GetBatch(keys, outs, deadline - absl::Now()));
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

absl::StatusOr<kvcache::SequenceKv*> RestoreSnapshot(
    kvcache::KvCache& cache, std::shared_ptr<const kvcache::KvPolicy> policy,
    FetchedSnapshot& snapshot, uint64_t model_fingerprint) {
  const absl::Time start = absl::Now();
  KVASIR_ASSIGN_OR_RETURN(
      kvcache::SequenceKv * seq,
      kvcache::DecodeSequence(cache, snapshot.blocks, std::move(policy), model_fingerprint));
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
