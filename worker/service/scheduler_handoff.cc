// The scheduler's KV hand-offs and drain (see scheduler.h): fetches of decode requests' KV ahead
// of their admission, pushes of finished prefills (streamed in parts of layers while the last
// step runs), the transfer thread that does the network part of both, and the migration of every
// request when the worker drains.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "kvcache/prefix_cache.h"
#include "worker/kv_transfer.h"
#include "worker/service/scheduler.h"
#include "worker/service/scheduler_request.h"

namespace kvasir::worker::service {

void Scheduler::NoteStoreFailure(const absl::Status& status) {
  if (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status)) {
    KVASIR_LOG_SUBSYS(WARN, kWorker,
                      "the cachestore did not answer (%s); KV hand-offs skip it for %s",
                      status.ToString(), absl::FormatDuration(options_.kv_store_retry_after));
    store_down_until_ = absl::Now() + options_.kv_store_retry_after;
  }
}

void Scheduler::PrefetchKv() {
  int32_t ahead = 0;
  for (Request* r : waiting_) {
    if (ahead++ >= options_.max_num_seqs) break;
    if (r->req.handoff == KvHandoff::kDecode && !r->fetching && !r->fetched.has_value() &&
        !r->store_skipped) {
      StartFetch(*r);
    } else if (r->req.handoff != KvHandoff::kDecode && !r->store_asked && PrefixStoreOn()) {
      StartBlockFetch(*r);
    }
  }
}

void Scheduler::StartBlockFetch(Request& r) {
  r.store_asked = true;
  if (!kvcache::PrefixCache::Shares(*r.policy) || StoreDown()) return;
  // The blocks Attach may take at admission: never the last token (a prefill hand-off's last
  // prompt token is the decode side's, so not the one before it either).
  const int64_t n = r.req.handoff == KvHandoff::kPrefill
                        ? static_cast<int64_t>(r.req.prompt.size()) - 1
                        : static_cast<int64_t>(r.tokens.size());
  const int32_t block = prefix_cache_->block_tokens();
  const std::vector<uint64_t> chain = kvcache::PrefixCache::ChainOf(
      r.tokens, r.policy->spec(), r.req.cache_salt, block, (n - 1) / block);
  r.local_blocks = prefix_cache_->CachedRun(chain);
  r.asked_blocks = static_cast<int64_t>(chain.size());
  if (r.local_blocks == r.asked_blocks) return;
  TransferJob job{.kind = TransferJob::kBlockFetch, .request = &r};
  job.space =
      SnapshotKeySpace(engine_.files().fingerprint(), *r.policy, engine_.cache().geometry());
  job.hashes.assign(chain.begin() + r.local_blocks, chain.end());
  r.fetching = true;
  ++fetches_in_flight_;
  EnqueueTransfer(std::move(job));
}

void Scheduler::TakeBlockRun(Request& r, std::span<const uint64_t> hashes,
                             absl::StatusOr<FetchedRun> run) {
  if (!run.ok()) {
    NoteStoreFailure(run.status());
    KVASIR_LOG_SUBSYS(INFO, kWorker, "request=%s: the store's prefix blocks not read (%s)",
                      r.req.id, run.status().ToString());
    return;
  }
  const uint64_t fingerprint = engine_.files().fingerprint();
  for (size_t i = 0; i < run->blocks.size(); ++i) {
    absl::Status kept = prefix_cache_->AdoptBlock(hashes[i], run->blocks[i], r.policy, fingerprint);
    if (!kept.ok()) {
      KVASIR_LOG_SUBSYS(INFO, kWorker, "request=%s: a stored prefix block not taken (%s)", r.req.id,
                        kept.ToString());
      break;
    }
    ++r.store_blocks;
  }
}

void Scheduler::PutNewBlocks(const Request& r, std::span<const int64_t> blocks) {
  const int32_t block = prefix_cache_->block_tokens();
  kvcache::SnapshotInfo info{.model_fingerprint = engine_.files().fingerprint()};
  for (int64_t b : blocks) {
    // Blocks restored from a hand-off were written by the worker that computed them.
    if ((b + 1) * block <= r.restored_tokens) continue;
    if (StoreDown() || put_bytes_in_flight_ >= options_.prefix_store_queue_bytes) {
      ++prefix_store_skipped_total_;
      continue;
    }
    TransferJob job{.kind = TransferJob::kBlockPut};
    job.hashes = {r.chain.hashes[b]};
    job.blocks = prefix_cache_->EncodeBlock(r.chain.hashes[b], r.policy, info);
    if (!job.blocks.ok()) {
      KVASIR_LOG_SUBSYS(WARN, kWorker, "a prefix block not encoded: %s",
                        job.blocks.status().ToString());
      continue;
    }
    for (const std::string& bytes : *job.blocks) {
      put_bytes_in_flight_ += static_cast<int64_t>(bytes.size());
    }
    ++puts_in_flight_;
    EnqueueTransfer(std::move(job));
  }
}

std::vector<int32_t> Scheduler::PushedHeadParts() {
  std::vector<int32_t> parts = engine_.runner().KvHeadParts(engine_.cache());
  // One part of every head: said by no bounds at all.
  if (parts.size() == 2 && parts[0] == 0 && parts[1] == engine_.config().n_head_kv) parts.clear();
  return parts;
}

void Scheduler::StartFetch(Request& r) {
  r.store_skipped = StoreDown();
  if (r.store_skipped) return;
  TransferJob job{.kind = TransferJob::kFetch, .request = &r};
  if (!r.req.resume.empty()) {
    // A drained worker's snapshot first: every token but the last (whose KV it had not computed).
    job.snapshots.push_back({.tokens = {r.tokens.begin(), r.tokens.end() - 1},
                             .head_bounds = r.req.resume_kv_head_bounds});
  }
  const std::span<const int32_t> prompt = r.handoff_tokens();
  job.snapshots.push_back({.tokens = {prompt.begin(), prompt.end()},
                           .layer_bounds = r.req.kv_layer_bounds,
                           .head_bounds = r.req.kv_head_bounds});
  r.fetching = true;
  ++fetches_in_flight_;
  EnqueueTransfer(std::move(job));
}

bool Scheduler::TakeFetchedKv(Request& r) {
  if (r.store_skipped) {
    r.kv_source = "recompute:store_down";
    return false;
  }
  absl::StatusOr<FetchedSnapshot> fetched =
      r.fetched.has_value() ? std::move(*r.fetched) : absl::NotFoundError("no fetch was made");
  r.fetched.reset();
  absl::StatusOr<kvcache::SequenceKv*> seq =
      fetched.ok() ? RestoreSnapshot(engine_.cache(), r.policy, *fetched,
                                     engine_.files().fingerprint(), &engine_.runner())
                   : absl::StatusOr<kvcache::SequenceKv*>(fetched.status());
  if (!seq.ok()) {
    const absl::Status& s = seq.status();
    const char* why = absl::IsNotFound(s)            ? "not_found"
                      : absl::IsDataLoss(s)          ? "checksum"
                      : absl::IsDeadlineExceeded(s)  ? "timeout"
                      : absl::IsUnavailable(s)       ? "unavailable"
                      : absl::IsResourceExhausted(s) ? "no_memory"
                                                     : "error";
    KVASIR_LOG_SUBSYS(INFO, kWorker, "request=%s: KV not taken from the store (%s); recomputing",
                      r.req.id, s.ToString());
    r.kv_source = absl::StrCat("recompute:", why);
    return false;
  }
  r.seq = *seq;
  r.computed = r.seq->n_tokens();
  r.kv_source = "store";
  r.kv_transfer_bytes += fetched->stats.bytes;
  r.kv_transfer_seconds += fetched->stats.seconds;
  return true;
}

void Scheduler::StartPush(Request& r) {
  if (StoreDown()) {
    // Aborted, not Unavailable: the worker is fine, the coordinator must not drop it.
    RequestOutput out;
    Finish(r, RequestState::kFailed,
           absl::AbortedError("the cachestore did not answer recently; the KV is not written"), "",
           out);
    return;
  }
  running_.erase(std::find(running_.begin(), running_.end(), &r));
  r.pushing = true;
  r.computed_at = absl::Now();
  ++pushes_in_flight_;
  TransferJob job{.kind = TransferJob::kPush, .request = &r};
  const std::span<const int32_t> prompt = r.handoff_tokens();
  job.snapshots.push_back({.tokens = {prompt.begin(), prompt.end()}});
  // The parts streamed during the step are on their way: the last one follows them.
  const int32_t n_layer = engine_.cache().geometry().n_layer;
  r.pushed_bounds = r.parts != nullptr ? stream_bounds_ : LayerParts(n_layer, 0);
  job.layer_begin = r.pushed_bounds[r.pushed_bounds.size() - 2];
  r.pushed_head_bounds = PushedHeadParts();
  job.parts = std::move(r.parts);
  EnqueueTransfer(std::move(job));
}

void Scheduler::StreamParts(std::span<Request* const> requests, int32_t layer) {
  // Only parts that end before the last layer: the last one carries the policy state, whole
  // once the step is done (StartPush).
  const auto end = std::find(stream_bounds_.begin() + 1, stream_bounds_.end() - 1, layer + 1);
  if (end == stream_bounds_.end() - 1) return;
  const int32_t begin = *(end - 1);
  const uint64_t fingerprint = engine_.files().fingerprint();
  for (Request* r : requests) {
    if (r->parts == nullptr) r->parts = std::make_shared<StreamedParts>();
    EnqueueTransfer({.kind = TransferJob::kPart,
                     .parts = r->parts,
                     .blocks = EncodeSnapshotPart(engine_.cache(), *r->seq, r->handoff_tokens(),
                                                  fingerprint, begin, layer + 1)});
  }
}

void Scheduler::EnqueueTransfer(TransferJob job) {
  absl::MutexLock lock(&transfer_mu_);
  transfer_queue_.push_back(std::move(job));
  if (!transfer_.joinable()) transfer_ = std::thread([this] { TransferLoop(); });
}

void Scheduler::TransferLoop() {
  const uint64_t fingerprint = engine_.files().fingerprint();
  while (true) {
    TransferJob job;
    {
      absl::MutexLock lock(&transfer_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(transfer_mu_) {
        return transfer_stop_ || !transfer_queue_.empty();
      };
      transfer_mu_.Await(absl::Condition(&ready));
      if (transfer_stop_) return;
      job = std::move(transfer_queue_.front());
      transfer_queue_.pop_front();
    }
    if (job.kind == TransferJob::kPart) {
      // Blocks the executor encoded; after a failure the push's later parts are not written.
      StreamedParts& parts = *job.parts;
      if (!parts.status.ok()) continue;
      if (!job.blocks.ok()) {
        parts.status = job.blocks.status();
        continue;
      }
      auto sent = PutBlocks(*store_, *job.blocks, options_.kv_transfer_timeout);
      if (!sent.ok()) {
        parts.status = sent.status();
        continue;
      }
      parts.bytes += sent->bytes;
      parts.seconds += sent->seconds;
      continue;
    }
    TransferDone done{.request = job.request, .kind = job.kind};
    if (job.kind == TransferJob::kBlockPut) {
      for (const std::string& bytes : *job.blocks) done.bytes += static_cast<int64_t>(bytes.size());
      done.status = PutBlocks(*store_, *job.blocks, options_.kv_transfer_timeout).status();
      done.hashes = std::move(job.hashes);
    } else if (job.kind == TransferJob::kBlockFetch) {
      done.run = FetchBlockRun(*store_, job.space, job.hashes, options_.kv_transfer_timeout);
      done.hashes = std::move(job.hashes);
    } else if (job.kind == TransferJob::kPush) {
      if (job.parts != nullptr && !job.parts->status.ok()) {
        done.status = job.parts->status;
      } else {
        // Reads the sequence, which the executor leaves alone while the request is pushing.
        // A tensor-parallel group's runner has every rank encode its heads.
        auto sent = PushSequence(*store_, engine_.cache(), *job.request->seq,
                                 job.snapshots.front().tokens, fingerprint,
                                 options_.kv_transfer_timeout, job.layer_begin, &engine_.runner());
        done.status = sent.status();
        if (sent.ok()) {
          done.bytes = sent->bytes;
          done.seconds = sent->seconds;
        }
        if (job.parts != nullptr) {
          done.bytes += job.parts->bytes;
          done.seconds += job.parts->seconds;
        }
      }
    } else {
      // The network only: the cache is the executor's (it restores at admission).
      for (const Snapshot& snapshot : job.snapshots) {
        done.fetched = FetchSnapshot(*store_, *job.request->policy, engine_.cache().geometry(),
                                     snapshot.tokens, fingerprint, options_.kv_transfer_timeout,
                                     snapshot.layer_bounds, snapshot.head_bounds);
        if (!absl::IsNotFound(done.fetched.status())) break;
      }
    }
    {
      absl::MutexLock lock(&transfer_mu_);
      transfer_done_.push_back(std::move(done));
    }
    Wake();
  }
}

void Scheduler::CompleteTransfers(absl::Duration wait) {
  const bool all = wait == absl::InfiniteDuration();
  while (pushes_in_flight_ + fetches_in_flight_ + puts_in_flight_ > 0) {
    std::vector<TransferDone> done;
    {
      absl::MutexLock lock(&transfer_mu_);
      auto any = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(transfer_mu_) {
        return !transfer_done_.empty();
      };
      transfer_mu_.AwaitWithTimeout(absl::Condition(&any), wait);
      done.swap(transfer_done_);
    }
    if (done.empty()) return;
    for (TransferDone& d : done) {
      if (d.kind == TransferJob::kBlockPut) {
        --puts_in_flight_;
        put_bytes_in_flight_ -= d.bytes;
        if (d.status.ok()) {
          ++prefix_store_written_total_;
          prefix_stored_.push_back(d.hashes.front());
        } else {
          ++prefix_store_skipped_total_;
          NoteStoreFailure(d.status);
        }
        continue;
      }
      Request& r = *d.request;
      RequestOutput out;
      if (d.kind == TransferJob::kFetch || d.kind == TransferJob::kBlockFetch) {
        --fetches_in_flight_;
        r.fetching = false;
        if (d.kind == TransferJob::kBlockFetch) {
          TakeBlockRun(r, d.hashes, std::move(d.run));
        } else {
          if (!d.fetched.ok()) NoteStoreFailure(d.fetched.status());
          r.fetched = std::move(d.fetched);
        }
        if (r.cancelled) {
          Finish(r, RequestState::kCancelled, absl::CancelledError("the request was cancelled"), "",
                 out);
        }
        continue;
      }
      --pushes_in_flight_;
      r.pushing = false;
      if (r.cancelled) {
        Finish(r, RequestState::kCancelled, absl::CancelledError("the request was cancelled"), "",
               out);
      } else if (!d.status.ok()) {
        NoteStoreFailure(d.status);
        Finish(r, RequestState::kFailed,
               absl::AbortedError(
                   absl::StrCat("writing the KV to the cachestore failed: ", d.status.ToString())),
               "", out);
      } else {
        r.kv_transfer_bytes += d.bytes;
        r.kv_transfer_seconds += d.seconds;
        r.push_wait_seconds = absl::ToDoubleSeconds(absl::Now() - r.computed_at);
        Finish(r, RequestState::kFinished, absl::OkStatus(), "prefilled", out);
      }
    }
    if (!all) return;
  }
}

int32_t Scheduler::Drain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  woken_ = true;
  return static_cast<int32_t>(ids_.size());
}

bool Scheduler::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

bool Scheduler::drained() const {
  absl::MutexLock lock(&mu_);
  return draining_ && ids_.empty();
}

void Scheduler::MigrateAll() {
  std::vector<Request*> all;
  for (auto& [id, r] : live_) {
    // A request whose KV is being fetched migrates at a later step, once the fetch is done.
    if (r->req.handoff != KvHandoff::kPrefill && !r->fetching) all.push_back(r.get());
  }
  // Oldest first: the order the requests would have finished in anyway.
  std::sort(all.begin(), all.end(),
            [](const Request* a, const Request* b) { return a->arrival < b->arrival; });
  for (Request* r : all) {
    // A decoding sequence has the KV of every token but the last sampled one: the snapshot the
    // resuming worker looks for first. Without a store (or when it fails) that worker recomputes.
    if (store_ != nullptr && r->seq != nullptr && r->state == RequestState::kDecode &&
        r->pending() == 1 && !StoreDown()) {
      auto sent = PushSequence(
          *store_, engine_.cache(), *r->seq, std::span<const int32_t>(r->tokens).first(r->computed),
          engine_.files().fingerprint(), options_.kv_transfer_timeout, 0, &engine_.runner());
      if (sent.ok()) {
        r->pushed_head_bounds = PushedHeadParts();
        r->kv_transfer_bytes += sent->bytes;
        r->kv_transfer_seconds += sent->seconds;
      } else {
        NoteStoreFailure(sent.status());
        KVASIR_LOG_SUBSYS(WARN, kWorker,
                          "request=%s: its KV was not written (%s); migrating "
                          "without it",
                          r->req.id, sent.status().ToString());
      }
    }
    RequestOutput out;
    Finish(*r, RequestState::kFinished, absl::OkStatus(), "migrated", out);
  }
}

}  // namespace kvasir::worker::service
