// The scheduler's per-request state (internal to worker/service/scheduler*.cc): what Scheduler
// keeps for one request between Submit and its last output, and the account of a push streamed
// in parts.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "kvcache/prefix_cache.h"
#include "model/tokenizer/tokenizer.h"
#include "worker/kv_transfer.h"
#include "worker/sampler.h"
#include "worker/service/scheduler.h"

namespace kvasir::worker::service {

struct Scheduler::Request {
  Request(const model::Tokenizer& tokenizer, SchedulerRequest r,
          std::shared_ptr<const kvcache::KvPolicy> p)
      : req(std::move(r)),
        policy(std::move(p)),
        sampler(req.sampling),
        decoder(tokenizer),
        filter(req.stop) {}

  SchedulerRequest req;
  OutputSink sink;
  std::shared_ptr<const kvcache::KvPolicy> policy;
  RequestState state = RequestState::kQueued;
  std::vector<int32_t> tokens;  // prompt, then the generated tokens
  int32_t prompt_len = 0;
  int32_t generated = 0;
  kvcache::SequenceKv* seq = nullptr;  // while admitted
  int64_t computed = 0;                // tokens whose KV is in seq
  Sampler sampler;
  model::StreamingDecoder decoder;
  StopStringFilter filter;
  uint64_t admission = 0;
  int32_t preemptions = 0;
  absl::Time arrival = absl::Now();
  double queue_seconds = -1;  // set at the first admission
  bool cancelled = false;
  bool pushing = false;   // its KV is being written to the store (transfer thread)
  bool fetching = false;  // its KV is being read from the store (transfer thread)
  // kDecode: the fetched KV, taken at admission (unset: no fetch was made).
  std::optional<absl::StatusOr<FetchedSnapshot>> fetched;
  bool store_skipped = false;  // kDecode: no fetch was made, the store having failed just before

  int64_t pending() const { return static_cast<int64_t>(tokens.size()) - computed; }
  // The tokens whose KV a hand-off moves: the prompt but its last token.
  std::span<const int32_t> handoff_tokens() const {
    return std::span<const int32_t>(req.prompt).first(req.prompt.size() - 1);
  }

  std::string kv_source;  // of the last admission (kDecode)
  int64_t kv_transfer_bytes = 0;
  double kv_transfer_seconds = 0;
  // kPrefill: the parts already on their way while its last step ran (null: none), the layer
  // bounds of the whole push, and when the prompt's computation ended.
  std::shared_ptr<StreamedParts> parts;
  std::vector<int32_t> pushed_bounds;
  std::vector<int32_t> pushed_head_bounds;  // empty: one part of every KV head
  kvcache::PrefixCache::Chain chain;        // its whole blocks' hashes (prefix caching)
  std::vector<uint64_t> snapshot_chain;     // the same, for prefix snapshots (set at admission)
  // The prefix cache's store tier: whether the store was asked for its blocks, the blocks the
  // prefix cache held then, those asked of the store, and those taken from it.
  bool store_asked = false;
  int64_t local_blocks = 0;
  int64_t asked_blocks = 0;
  int64_t store_blocks = 0;
  int64_t restored_tokens = 0;  // at the last admission: KV restored from a hand-off snapshot
  absl::Time computed_at;
  double push_wait_seconds = 0;
};

struct Scheduler::StreamedParts {
  absl::Status status;  // the first failure (encoding or writing a part)
  int64_t bytes = 0;
  double seconds = 0;
};

}  // namespace kvasir::worker::service
