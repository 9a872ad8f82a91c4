// The scheduler's prefix snapshots (see scheduler.h, SchedulerOptions::prefix_snapshot_bytes): the
// prefix reuse of the policies whose blocks cannot be shared page by page.
#include <algorithm>
#include <vector>

#include "common/log.h"
#include "kvcache/codec.h"
#include "kvcache/prefix_snapshots.h"
#include "worker/service/scheduler.h"
#include "worker/service/scheduler_request.h"

namespace kvasir::worker::service {

bool Scheduler::UsesSnapshots(const Request& r) const {
  return snapshots_ != nullptr && !kvcache::PrefixCache::Shares(*r.policy);
}

void Scheduler::AttachSnapshot(Request& r) {
  const int32_t block = prefix_cache_->block_tokens();
  // The last token is always computed: its logits give the next sample.
  const int64_t n = static_cast<int64_t>(r.tokens.size());
  r.snapshot_chain = kvcache::PrefixCache::ChainOf(r.tokens, r.policy->spec(), r.req.cache_salt,
                                                   block, (n - 1) / block);
  prefix_queries_total_ += n;
  const int64_t b = snapshots_->Longest(r.snapshot_chain);
  if (b >= 0) {
    auto seq = kvcache::DecodeSequence(engine_.cache(), *snapshots_->Get(r.snapshot_chain[b]),
                                       r.policy, engine_.files().fingerprint());
    if (seq.ok() && (*seq)->n_tokens() == (b + 1) * block) {
      r.seq = *seq;
      r.computed = r.seq->n_tokens();
      prefix_hits_total_ += r.computed;
      return;
    }
    if (seq.ok()) engine_.cache().FreeSequence((*seq)->id());
    KVASIR_LOG_SUBSYS(INFO, kWorker, "request=%s: a prefix snapshot not taken (%s)", r.req.id,
                      seq.ok() ? "its token count differs" : seq.status().ToString());
  }
  r.seq = &engine_.cache().CreateSequence(r.policy);
  r.computed = 0;
}

void Scheduler::KeepSnapshot(Request& r) {
  const int32_t block = prefix_cache_->block_tokens();
  if (!SnapshotAt(r, r.computed)) return;
  const size_t b = static_cast<size_t>(r.computed / block - 1);
  if (b >= r.snapshot_chain.size() || snapshots_->Has(r.snapshot_chain[b])) return;
  kvcache::SnapshotInfo info;
  info.model_fingerprint = engine_.files().fingerprint();
  info.prefix_hash = r.snapshot_chain[b];
  auto blocks = kvcache::EncodeSequence(engine_.cache(), *r.seq, info);
  if (!blocks.ok()) {
    KVASIR_LOG_SUBSYS(WARN, kWorker, "a prefix snapshot not encoded: %s",
                      blocks.status().ToString());
    return;
  }
  snapshots_->Put(r.snapshot_chain[b], *std::move(blocks));
}

bool Scheduler::SnapshotAt(const Request& r, int64_t tokens) const {
  const int64_t block = prefix_cache_->block_tokens();
  const int64_t total = static_cast<int64_t>(r.tokens.size());
  if (tokens <= 0 || tokens >= total || tokens % block != 0) return false;
  const int64_t interval = std::max<int64_t>(block, options_.prefix_snapshot_interval);
  return tokens % interval == 0 || tokens == (total - 1) / block * block;
}

int32_t Scheduler::AlignChunk(const Request& r, int32_t n) const {
  if (!UsesSnapshots(r) || n <= 1) return n;
  const int64_t block = prefix_cache_->block_tokens();
  // The first snapshot point the chunk passes (not its end), block by block.
  for (int64_t t = (r.computed / block + 1) * block; t < r.computed + n; t += block) {
    if (SnapshotAt(r, t)) return static_cast<int32_t>(t - r.computed);
  }
  return n;
}

}  // namespace kvasir::worker::service
