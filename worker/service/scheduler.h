// The continuous-batching scheduler of a worker: it owns the requests on this worker and, step
// by step, packs decode tokens and prefill chunks of several sequences into one forward pass
// under a token budget, admits waiting requests first-come first-served while sequences and KV
// memory allow, preempts the newest request by recompute when the KV pages run out, samples, and
// hands each request's new tokens and text to its sink.
//
// Request lifecycle (KvHandoff splits it between a prefill and a decode worker; Drain and
// SchedulerRequest::resume move a request to another worker mid-generation):
//
//   kQueued ──admit──▶ kPrefill ──last prompt chunk──▶ kDecode ──stop/length──▶ kFinished
//      ▲                  │                              │
//      └─────preempt──────┴──────────────────────────────┘      any state ──▶ kFailed, kCancelled
//
// A preempted request loses its KV and goes back to the front of the queue with the tokens it
// generated so far; when admitted again it recomputes prompt + generated tokens, then continues
// sampling with the same sampler state, so its output is the same as without the preemption.
//
// Thread contract: Submit, Cancel, WaitForWork, HasWork and stats() are safe from any thread.
// Step and CancelAll run on the executor thread only (the engine's KV cache and runner belong to
// it), and sinks are called there: they must not block. With a store, a transfer thread does the
// network part of hand-offs off the step loop: it writes the KV of prefills (KvHandoff::kPrefill:
// the parts of the first layers as the step that ends the prompt computes the later ones, the
// executor encoding each part as its layers are done; then the last part, which it encodes itself
// from the sequence, untouched by any step until the push is done) and fetches the blocks of
// decode requests (KvHandoff::kDecode) while they wait; the executor restores fetched blocks into
// the cache at admission.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachestore/client.h"
#include "kvcache/prefix_cache.h"
#include "kvcache/prefix_snapshots.h"
#include "worker/engine.h"
#include "worker/kv_transfer.h"
#include "worker/policy_registry.h"
#include "worker/sampler.h"
#include "worker/service/step_cost.h"

namespace kvasir::worker::service {

enum class RequestState { kQueued, kPrefill, kDecode, kFinished, kFailed, kCancelled };

// A request's part in disaggregated serving (docs/disaggregation.md). The prefill side computes
// the KV of all prompt tokens but the last and writes it to the cachestore; the decode side reads
// it, computes the last prompt token itself (which gives the logits of the first sample, so its
// sampler, stop strings and text start exactly as in a monolithic run) and decodes on.
enum class KvHandoff {
  kNone,     // prefill and decode here
  kPrefill,  // prefill prompt[0, n-1), push its KV, finish with finish_reason "prefilled"
  kDecode,   // pull the KV of prompt[0, n-1) from the store (recompute it when that fails)
};
std::string_view RequestStateName(RequestState state);

struct SchedulerOptions {
  int32_t max_num_seqs = 16;  // sequences in one step (running requests) at most
  // Token budget of one step (decode + prefill tokens). Every running decode waits for the whole
  // step, so this bounds the inter-token latency tail; on the CPU 256 gave the same throughput as
  // 512 with a p99 inter-token latency 35-45 % lower (docs/performance.md, serving).
  int32_t max_num_batched_tokens = 256;
  int32_t prefill_chunk = 512;  // prompt tokens of one sequence in one step at most
  // Inter-token latency target (0: none). While sequences are decoding, a step takes only as
  // many prefill tokens as an online model of this machine's step time (step_cost.h) predicts to
  // fit within it / the model's margin (at least kMinPrefillChunk), shared among the prompts being
  // prefilled so that a long one does not hold back the others; with nothing decoding, prefill
  // takes the whole token budget (stall-free batching, docs/serving.md). Negative: Create measures
  // a default (CalibrateTargetItl in step_cost.h; what kvasir-worker does unless told otherwise).
  absl::Duration target_itl = absl::ZeroDuration();
  int32_t max_waiting = 512;  // queued requests at most; Submit refuses beyond
  // One KV push or pull to the store; past it the decode side recomputes. Transfers on one host
  // take milliseconds to tens of them (docs/disaggregation.md), a deadline costs a whole one.
  absl::Duration kv_transfer_timeout = absl::Seconds(3);
  // After the store did not answer (unavailable, timeout), hand-offs skip it this long: decode
  // requests recompute at once ("recompute:store_down") and prefill requests fail fast, instead
  // of each one holding the executor thread for a whole transfer timeout.
  absl::Duration kv_store_retry_after = absl::Seconds(5);
  // KvHandoff::kPrefill: the KV is written in parts of this many layers, each as soon as the step
  // that ends the prompt has run through its layers, so that writing overlaps computing; 0: the
  // whole snapshot once the step is done (docs/disaggregation.md).
  int32_t kv_stream_layers = 4;
  // Requests whose prompts start alike share the KV pages of their common whole blocks (16
  // tokens) instead of computing them again; finished requests' blocks stay until the pages are
  // wanted (kvcache/prefix_cache.h). Policies whose blocks cannot be shared (the compressing
  // ones) reuse whole-sequence snapshots instead (prefix_snapshot_bytes).
  bool enable_prefix_caching = false;
  // With prefix caching and a store: the store is the cache's second tier. Every whole block a
  // request computes is also written to the store (off the step loop), and a request looks up in
  // the store the blocks it does not find here before it is admitted, so that blocks survive
  // their eviction here and reach every worker (and, with the store's disk tier, a restart).
  bool enable_prefix_store = true;
  // Encoded blocks waiting for the transfer thread at most; further blocks are not written.
  int64_t prefix_store_queue_bytes = int64_t{256} << 20;
  // With prefix caching, for the policies whose blocks cannot be shared (the compressing ones):
  // whole-sequence snapshots every prefix_snapshot_interval prompt tokens and at the prompt's
  // last whole block (prompt chunks are cut there for them), restored by later prompts that
  // start the same way (kvcache/prefix_snapshots.h); at most prefix_snapshot_bytes encoded
  // bytes, least recently used first out. The interval is a multiple of the block (16 tokens).
  int64_t prefix_snapshot_bytes = int64_t{256} << 20;
  int32_t prefix_snapshot_interval = 256;
  int32_t max_model_len = 0;  // tokens of one sequence at most; 0: the model's context
  // Policies the operator configured (files allowed), and the one of requests that name none: a
  // configured name or a spec ("" = the first configured, else "full"). See PolicyRegistry.
  std::vector<PolicyConfig> kv_policies;
  std::string default_kv_policy;
};

struct SchedulerRequest {
  std::string id;               // unique among live requests ("" gets one)
  std::vector<int32_t> prompt;  // token ids, BOS included when the model wants it
  SamplingParams sampling;
  int32_t max_tokens = 16;
  std::vector<std::string> stop;  // stop strings (not part of the output)
  std::vector<int32_t> stop_ids;  // stop tokens besides the end-of-generation ids
  bool ignore_eos = false;
  std::string kv_policy;  // "" = the default; a configured name; a spec without files
  int32_t logprobs = -1;  // < 0: none; n: the chosen token's logprob and the n most likely
  KvHandoff handoff = KvHandoff::kNone;  // kPrefill and kDecode need a scheduler with a store
  // Resuming a request that another worker started (it died, or was drained): the tokens it had
  // already delivered. They are not delivered again; the sampler, stop strings and text continue
  // from after them, so the output goes on as the original's would have. With kDecode their KV
  // is taken from the store when it is there (the drained worker's snapshot of prompt + resume,
  // else the prefill's snapshot of the prompt), else recomputed.
  std::vector<int32_t> resume;
  // KvHandoff::kDecode: the layer parts the prefill worker wrote the prompt's KV in (its
  // RequestOutput::kv_layer_bounds); empty: one part. And its KV-head parts (those of a
  // tensor-parallel group, in the model's heads; empty: one part of every head).
  std::vector<int32_t> kv_layer_bounds;
  std::vector<int32_t> kv_head_bounds;
  // With `resume`: the KV-head parts of the drained worker's snapshot (its "migrated" output's
  // kv_head_bounds; empty: one part).
  std::vector<int32_t> resume_kv_head_bounds;
  // Enters the prefix cache's hash chain: requests with another salt (another tenant) never
  // share a cached block.
  uint64_t cache_salt = 0;
};

struct TokenLogprobs {
  int32_t id = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // most likely first
};

// What one step produced for one request. The last output of a request has finished set.
struct RequestOutput {
  std::string id;
  std::vector<int32_t> ids;             // new tokens
  std::string text;                     // text that became final
  std::vector<TokenLogprobs> logprobs;  // one per id when asked
  RequestState state = RequestState::kQueued;
  bool finished = false;
  // "stop" or "length" when finished normally; "prefilled" (KvHandoff::kPrefill: the KV is in
  // the store); "migrated" (the worker drains: resume it elsewhere, see Scheduler::Drain).
  std::string finish_reason;
  absl::Status status;  // why, when kFailed or kCancelled
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;  // so far
  int32_t preemptions = 0;
  double queue_seconds = 0;  // arrival to first admission (set on every output)
  // KvHandoff::kDecode: where the prompt's KV came from at the last admission: "store", or
  // "recompute:<why>" (not found, checksum, timeout, unavailable, ...). "" otherwise.
  std::string kv_source;
  int64_t kv_transfer_bytes = 0;   // block bytes pushed (kPrefill) or pulled (kDecode)
  double kv_transfer_seconds = 0;  // the time that push or pull took (a streamed push: its parts')
  // "prefilled": the layer parts the KV was written in (LayerParts bounds), for the kDecode
  // request; and the time from the end of the prompt's computation to the end of the push.
  // "prefilled" and "migrated": the KV-head parts it was written in (a tensor-parallel group's
  // ranks' heads; empty: one part), for the request that takes it.
  std::vector<int32_t> kv_layer_bounds;
  std::vector<int32_t> kv_head_bounds;
  double kv_push_wait_seconds = 0;
};

using OutputSink = std::function<void(const RequestOutput& output)>;

// The composition of the last step (for tests and metrics).
struct StepStats {
  int32_t num_seqs = 0;
  int32_t prefill_tokens = 0;  // tokens of sequences still in (or finishing) their prefill
  int32_t decode_tokens = 0;
  int32_t preempted = 0;
  std::vector<std::string> ids;  // requests in the step, in batch order
};

// What the running sequences of one policy kind hold, against a full cache of the same tokens.
struct PolicyKvBytes {
  int32_t sequences = 0;
  int64_t bytes = 0;       // KV slots held (KvUsage::bytes)
  int64_t full_bytes = 0;  // what a full cache would hold for the same tokens
  // Totals over every step since the start of bytes and full_bytes (a time-weighted ratio that
  // does not depend on when it is sampled).
  double byte_steps = 0;
  double full_byte_steps = 0;
};

struct SchedulerStats {
  int32_t running = 0;
  int32_t waiting = 0;
  int32_t pushing = 0;        // finished prefill hand-offs whose KV is being written to the store
  int32_t fetching = 0;       // waiting decode hand-offs whose KV is being read from the store
  int64_t kv_pages_used = 0;  // held by sequences (blocks only the prefix cache holds are free)
  int64_t kv_pages_total = 0;
  int64_t prefix_cache_pages = 0;  // held only by the prefix cache: given back when wanted
  // Prompt tokens of admitted requests whose policy shares blocks, and how many of them were
  // found in the prefix cache (their KV taken, not computed).
  int64_t prefix_cache_queries_total = 0;
  int64_t prefix_cache_hits_total = 0;
  // The store tier: prompt tokens asked of the store (those not found here, for requests that
  // looked), and those taken from it.
  int64_t prefix_store_queries_total = 0;
  int64_t prefix_store_hits_total = 0;
  int64_t prefix_store_blocks_written_total = 0;  // blocks written to the store
  int64_t prefix_store_blocks_skipped_total = 0;  // not written: queue full, or the store down
  int32_t prefix_store_writing = 0;               // blocks being written now
  int64_t preemptions_total = 0;
  int64_t steps_total = 0;
  // The latency target (0: none), the step-time model's estimate for the last step before it
  // ran, and the steps with decodes that took longer than the target.
  double target_itl_seconds = 0;
  double step_cost_estimate_seconds = 0;
  double step_cost_margin = 1;  // StepCostModel::margin()
  int64_t steps_over_target_total = 0;
  int64_t prompt_tokens_total = 0;      // prompt tokens computed (recomputation included)
  int64_t generation_tokens_total = 0;  // tokens sampled
  // By policy kind ("full", "h2o", ...): every kind that ran since the start (now idle ones with
  // 0 sequences and bytes) and the kinds of the configured policies.
  std::map<std::string, PolicyKvBytes> kv_by_policy;
  double kv_usage() const {
    return kv_pages_total > 0 ? static_cast<double>(kv_pages_used) / kv_pages_total : 0.0;
  }
};

class Scheduler {
 public:
  // Prompt tokens a prefilling request gets per step at least under a latency target.
  static constexpr int64_t kMinPrefillChunk = 8;
  // The engine (and the store, when given) must outlive the scheduler. InvalidArgument for bad
  // options. Without a store, requests with a KV hand-off are refused.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(
      Engine& engine, SchedulerOptions options, cachestore::StoreClient* store = nullptr);
  ~Scheduler();

  // Queues a request. Checked at once: InvalidArgument (empty prompt, token ids outside the
  // vocabulary, prompt + max_tokens over max_model_len, bad sampling values; a KV policy that is
  // not configured, malformed or names a file: the message starts with "kv_policy"),
  // AlreadyExists (a live request has this id), ResourceExhausted (the queue is full).
  // On OK the sink will see the request's outputs, the last one with finished set.
  absl::Status Submit(SchedulerRequest request, OutputSink sink);
  // Cancels a live request: its KV is freed at the next step and its sink gets a last output in
  // state kCancelled. Unknown ids are ignored.
  void Cancel(std::string_view id);

  // Runs one step: takes in submissions and cancellations, schedules, runs the forward pass and
  // delivers outputs. False when there was nothing to do.
  bool Step();
  // Fails every live request with `status` (on shutdown). Executor thread.
  void CancelAll(const absl::Status& status);

  // Starts draining (safe from any thread): new requests are refused with Unavailable, and at
  // the next step every live request ends with finish_reason "migrated" after the KV of a
  // decoding one was written to the store (when there is one), so that whoever sent it resumes
  // it on another worker (SchedulerRequest::resume). Requests of KvHandoff::kPrefill finish
  // normally. Returns the number of live requests.
  int32_t Drain();
  bool draining() const;
  // True once draining and no request is left.
  bool drained() const;

  // True when a Step would do something.
  bool HasWork() const;
  // Blocks until there is work or `timeout` passes; returns HasWork().
  bool WaitForWork(absl::Duration timeout) const;
  // Wakes WaitForWork (for shutdown).
  void Wake();

  SchedulerStats stats() const;
  // The prefix cache's blocks kept and dropped since the last call (for the coordinator's
  // router; any thread). ResyncPrefixEvents makes the next call list every block (reset), as
  // after a new registration or lost events.
  kvcache::PrefixCache::Events TakePrefixEvents();
  void ResyncPrefixEvents() { prefix_resync_.store(true); }
  // Tokens per prefix-cache block; 0 without prefix caching.
  int32_t prefix_block_tokens() const;
  // Whether the store is the prefix cache's second tier (SchedulerOptions::enable_prefix_store).
  bool prefix_store() const { return PrefixStoreOn(); }
  const StepStats& last_step() const { return last_step_; }
  const SchedulerOptions& options() const { return options_; }
  const PolicyRegistry& policies() const { return *policies_; }
  int32_t max_model_len() const { return options_.max_model_len; }

 private:
  struct Request;
  struct Planned {
    Request* request;
    int32_t count;  // tokens fed this step, from request->computed on
  };

  Scheduler(Engine& engine, SchedulerOptions options, std::unique_ptr<PolicyRegistry> policies,
            cachestore::StoreClient* store);
  // The decode hand-offs at the head of the queue (as many as one step could admit) have their
  // KV fetched ahead by the transfer thread; those further back wait their turn, so that fetched
  // blocks do not pile up in memory behind a long queue.
  void PrefetchKv();
  void StartFetch(Request& r);
  // The KV-head parts a push writes (ModelRunner::KvHeadParts; empty: one part of every head).
  std::vector<int32_t> PushedHeadParts();
  // The prefix cache's store tier (SchedulerOptions::enable_prefix_store).
  bool PrefixStoreOn() const {
    return prefix_cache_ != nullptr && store_ != nullptr && options_.enable_prefix_store;
  }
  // Asks the store for the blocks of `r`'s prompt that the prefix cache does not hold (once).
  void StartBlockFetch(Request& r);
  // Keeps the blocks a fetch read (of `hashes`, from the first on) in the prefix cache, where
  // `r`'s admission finds them.
  void TakeBlockRun(Request& r, std::span<const uint64_t> hashes, absl::StatusOr<FetchedRun> run);
  // Writes the blocks of `r` that the prefix cache kept now (block indices) to the store.
  void PutNewBlocks(const Request& r, std::span<const int64_t> blocks);
  // KvHandoff::kDecode at admission: restores the fetched KV, or false (recompute).
  bool TakeFetchedKv(Request& r);
  // KvHandoff::kPrefill once its prompt is computed: hands the push to the transfer thread (the
  // request leaves the batch and finishes when its push is done, in CompleteTransfers).
  void StartPush(Request& r);
  // The step's hook after `layer`: encodes the parts of `requests` (prefill hand-offs whose
  // prompt ends in this step) that end with this layer and hands them to the transfer thread.
  void StreamParts(std::span<Request* const> requests, int32_t layer);
  // Takes the results of finished pushes and fetches; waits up to `wait` for one (Infinite:
  // until none is in flight).
  void CompleteTransfers(absl::Duration wait);
  void TransferLoop();
  // Draining: ends every request but prefill hand-offs with "migrated".
  void MigrateAll();
  // The store failed to answer: skip it for options_.kv_store_retry_after.
  void NoteStoreFailure(const absl::Status& status);
  bool StoreDown() const { return absl::Now() < store_down_until_; }
  void TakeInbox();
  // Whether `r` fits beside the running sequences (blocks only the prefix cache holds count as
  // free).
  bool CanAdmit(const Request& r) const;
  void Admit(Request& r);
  // Prefix snapshots (SchedulerOptions::prefix_snapshot_bytes), for `r`'s policy?
  bool UsesSnapshots(const Request& r) const;
  // At admission: `r`'s sequence from the longest snapshot of its prompt, or an empty one.
  void AttachSnapshot(Request& r);
  // After a step: keeps a snapshot of `r` when it ended on a block boundary within its prompt.
  void KeepSnapshot(Request& r);
  // Whether `r` takes a snapshot after `tokens` of its prompt (a multiple of the interval, or
  // its last whole block; never its end).
  bool SnapshotAt(const Request& r, int64_t tokens) const;
  // The prefill tokens of `r` in a step, `n` at most, cut to end where `r` takes a snapshot
  // (SnapshotAt) when it crosses one.
  int32_t AlignChunk(const Request& r, int32_t n) const;
  void Preempt(Request& r);
  void Finish(Request& r, RequestState state, absl::Status status, std::string reason,
              RequestOutput& out);
  void SampleNext(Request& r, std::span<const float> logits, RequestOutput& out);
  void Remove(Request& r);
  void Emit(Request& r, RequestOutput& out);
  void PublishStats();

  Engine& engine_;
  SchedulerOptions options_;
  std::unique_ptr<PolicyRegistry> policies_;
  cachestore::StoreClient* store_ = nullptr;
  absl::Time store_down_until_ = absl::InfinitePast();  // executor thread

  // Executor-thread state.
  std::deque<Request*> waiting_;   // in arrival order (preempted ones go back to the front)
  std::vector<Request*> running_;  // in admission order
  absl::flat_hash_map<std::string, std::unique_ptr<Request>> live_;
  std::vector<float> logits_;
  uint64_t next_admission_ = 0;
  StepStats last_step_;
  int64_t steps_total_ = 0;
  int64_t preemptions_total_ = 0;
  StepCostModel step_cost_;
  double step_estimate_ = 0;
  int64_t steps_over_target_ = 0;
  int64_t prompt_tokens_total_ = 0;
  int64_t generation_tokens_total_ = 0;
  std::map<std::string, PolicyKvBytes> kv_by_policy_;
  std::unique_ptr<kvcache::PrefixCache> prefix_cache_;   // with enable_prefix_caching
  std::unique_ptr<kvcache::PrefixSnapshots> snapshots_;  // with enable_prefix_caching
  int64_t prefix_queries_total_ = 0;
  int64_t prefix_hits_total_ = 0;
  int64_t prefix_store_queries_total_ = 0;
  int64_t prefix_store_hits_total_ = 0;
  int64_t prefix_store_written_total_ = 0;
  int64_t prefix_store_skipped_total_ = 0;
  std::vector<uint64_t> prefix_stored_;  // blocks written since the last PublishStats
  int32_t pushes_in_flight_ = 0;
  int32_t fetches_in_flight_ = 0;
  int32_t puts_in_flight_ = 0;          // kBlockPut
  int64_t put_bytes_in_flight_ = 0;     // their encoded bytes
  std::vector<int32_t> stream_bounds_;  // LayerParts of options_.kv_stream_layers

  // The transfer thread's queue and results.
  struct StreamedParts;  // what the parts of one streamed push came to (transfer thread)
  struct Snapshot {
    std::vector<int32_t> tokens;
    std::vector<int32_t> layer_bounds;  // empty: one part
    std::vector<int32_t> head_bounds;   // the model's KV heads; empty: one part of all
  };
  struct TransferJob {
    // kBlockFetch, kBlockPut: the prefix cache's store tier.
    enum Kind { kPush, kPart, kFetch, kBlockFetch, kBlockPut } kind = kPush;
    Request* request = nullptr;  // kPush, kFetch, kBlockFetch
    // kPush: the snapshot (from its layer layer_begin on). kFetch: the snapshots to try, in order.
    std::vector<Snapshot> snapshots;
    int32_t layer_begin = 0;
    std::shared_ptr<StreamedParts> parts;  // kPush and kPart of a streamed push
    absl::StatusOr<std::vector<std::string>> blocks = absl::InternalError("");  // kPart, kBlockPut
    cachestore::KeySpace space;                                                 // kBlockFetch
    std::vector<uint64_t> hashes;  // kBlockFetch: the blocks to read; kBlockPut: its block
  };
  struct TransferDone {
    Request* request = nullptr;
    TransferJob::Kind kind = TransferJob::kPush;
    absl::Status status;  // of a push (its parts included)
    int64_t bytes = 0;    // of a push; of a kBlockPut: its encoded bytes
    double seconds = 0;
    absl::StatusOr<FetchedSnapshot> fetched = absl::NotFoundError("");  // of a fetch
    absl::StatusOr<FetchedRun> run = absl::NotFoundError("");           // of a kBlockFetch
    std::vector<uint64_t> hashes;  // of a kBlockPut (its block) and a kBlockFetch (asked)
  };
  // Queues a job for the transfer thread (started with the first).
  void EnqueueTransfer(TransferJob job);
  absl::Mutex transfer_mu_;
  std::deque<TransferJob> transfer_queue_ ABSL_GUARDED_BY(transfer_mu_);
  std::vector<TransferDone> transfer_done_ ABSL_GUARDED_BY(transfer_mu_);
  bool transfer_stop_ ABSL_GUARDED_BY(transfer_mu_) = false;
  std::thread transfer_;  // started with the first push

  // Shared with other threads.
  mutable absl::Mutex mu_;
  std::vector<std::pair<std::unique_ptr<Request>, OutputSink>> inbox_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> cancels_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, bool> ids_ ABSL_GUARDED_BY(mu_);  // live ids
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  int32_t queued_ ABSL_GUARDED_BY(mu_) = 0;  // inbox + waiting
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  mutable bool woken_ ABSL_GUARDED_BY(mu_) = false;
  SchedulerStats stats_ ABSL_GUARDED_BY(mu_);
  kvcache::PrefixCache::Events prefix_events_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> prefix_resync_{false};
};

}  // namespace kvasir::worker::service
