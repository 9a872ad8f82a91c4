// Scheduler (see scheduler.h).
#include "worker/service/scheduler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "kvcache/policy.h"
#include "model/tokenizer/tokenizer.h"
#include "worker/kv_transfer.h"
#include "worker/service/scheduler_request.h"

namespace kvasir::worker::service {

std::string_view RequestStateName(RequestState state) {
  switch (state) {
    case RequestState::kQueued:
      return "queued";
    case RequestState::kPrefill:
      return "prefill";
    case RequestState::kDecode:
      return "decode";
    case RequestState::kFinished:
      return "finished";
    case RequestState::kFailed:
      return "failed";
    case RequestState::kCancelled:
      return "cancelled";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(Engine& engine,
                                                             SchedulerOptions options,
                                                             cachestore::StoreClient* store) {
  if (engine.shard().sharded()) {
    // A tensor-parallel group: its other ranks cannot share pages of the prefix cache
    // (worker/tensor_parallel.h); KV hand-offs go through every rank (ModelRunner::EncodeKv),
    // after the step (not streamed by layers).
    if (options.enable_prefix_caching) {
      KVASIR_LOG_SUBSYS(INFO, kWorker,
                        "tensor parallelism: prefix caching is off (not built for groups yet)");
    }
    options.enable_prefix_caching = false;
    options.kv_stream_layers = 0;
  }
  const int32_t context = engine.config().context_length;
  if (options.max_model_len <= 0) options.max_model_len = context;
  if (options.max_model_len > context) {
    return absl::InvalidArgumentError(absl::StrCat("max model len ", options.max_model_len,
                                                   " exceeds the model's context of ", context));
  }
  if (options.max_num_seqs < 1 || options.max_num_batched_tokens < 1 || options.prefill_chunk < 1 ||
      options.max_waiting < 0) {
    return absl::InvalidArgumentError(
        "max num seqs, max num batched tokens and prefill chunk must be >= 1, max waiting >= 0");
  }
  if (options.kv_stream_layers < 0) {
    return absl::InvalidArgumentError("kv stream layers must be >= 0 (0: no streaming)");
  }
  if (options.max_num_batched_tokens < options.max_num_seqs) {
    return absl::InvalidArgumentError(
        absl::StrCat("max num batched tokens (", options.max_num_batched_tokens,
                     ") must be at least max num seqs (", options.max_num_seqs,
                     "): every running sequence "
                     "needs one token per step"));
  }
  KVASIR_ASSIGN_OR_RETURN(
      auto policies, PolicyRegistry::Create(
                         engine.cache().geometry(), options.kv_policies, options.default_kv_policy,
                         [&engine](const kvcache::KvPolicy& p) { return engine.CheckAdapter(p); }));
  if (options.target_itl < absl::ZeroDuration()) {
    double step = 0;
    int64_t context = 0;
    absl::StatusOr<absl::Duration> target =
        CalibrateTargetItl(engine, options.max_num_seqs, &step, &context);
    if (target.ok()) {
      KVASIR_LOG_SUBSYS(INFO, kWorker,
                        "inter-token latency target %s (a step of %d decodes at %d tokens of "
                        "context took %.1f ms here; --target-itl-ms sets another, 0 none)",
                        absl::FormatDuration(*target), options.max_num_seqs,
                        static_cast<int>(context), step * 1000.0);
      options.target_itl = *target;
    } else {
      KVASIR_LOG_SUBSYS(WARN, kWorker, "no inter-token latency target: calibration failed (%s)",
                        target.status().ToString());
      options.target_itl = absl::ZeroDuration();
    }
  }
  return std::unique_ptr<Scheduler>(
      new Scheduler(engine, std::move(options), std::move(policies), store));
}

Scheduler::Scheduler(Engine& engine, SchedulerOptions options,
                     std::unique_ptr<PolicyRegistry> policies, cachestore::StoreClient* store)
    : engine_(engine), options_(std::move(options)), policies_(std::move(policies)), store_(store) {
  const kvcache::KvGeometry& g = engine_.cache().geometry();
  stream_bounds_ = LayerParts(g.n_layer, std::max(0, options_.kv_stream_layers));
  if (options_.enable_prefix_caching) {
    prefix_cache_ = std::make_unique<kvcache::PrefixCache>(engine_.cache());
    if (options_.prefix_snapshot_bytes > 0) {
      snapshots_ = std::make_unique<kvcache::PrefixSnapshots>(options_.prefix_snapshot_bytes);
    }
  }
  for (const PolicyListing& l : policies_->listing()) kv_by_policy_[l.kind];
  PublishStats();
}

Scheduler::~Scheduler() {
  // The transfer thread may be reading a sequence: let it finish that push, then free.
  {
    absl::MutexLock lock(&transfer_mu_);
    transfer_stop_ = true;
  }
  if (transfer_.joinable()) transfer_.join();
  for (auto& [id, r] : live_) {
    if (r->seq != nullptr) engine_.cache().FreeSequence(r->seq->id());
  }
  prefix_cache_.reset();
}

absl::Status Scheduler::Submit(SchedulerRequest request, OutputSink sink) {
  const int32_t n_vocab = engine_.tokenizer().n_vocab();
  if (request.prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  for (int32_t id : request.prompt) {
    if (id < 0 || id >= n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary [0, ", n_vocab, ")"));
    }
  }
  for (int32_t id : request.stop_ids) {
    if (id < 0 || id >= n_vocab) {
      return absl::InvalidArgumentError(absl::StrCat("stop token id ", id, " is out of range"));
    }
  }
  if (request.max_tokens < 0) return absl::InvalidArgumentError("max tokens must be >= 0");
  if (static_cast<int64_t>(request.prompt.size()) + request.max_tokens > options_.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt (", request.prompt.size(), " tokens) plus max tokens (", request.max_tokens,
        ") exceeds the maximum model length of ", options_.max_model_len));
  }
  if (request.logprobs > 20) return absl::InvalidArgumentError("logprobs must be <= 20");
  KVASIR_RETURN_IF_ERROR(request.sampling.Validate());
  for (int32_t id : request.resume) {
    if (id < 0 || id >= n_vocab) {
      return absl::InvalidArgumentError(absl::StrCat("resumed token id ", id, " is out of range"));
    }
  }
  if (static_cast<int64_t>(request.resume.size()) >= request.max_tokens &&
      !request.resume.empty()) {
    return absl::InvalidArgumentError("the resumed tokens already reach max tokens");
  }
  if (request.handoff == KvHandoff::kPrefill && !request.resume.empty()) {
    return absl::InvalidArgumentError("a prefill hand-off cannot resume generated tokens");
  }
  if (request.handoff != KvHandoff::kNone) {
    if (store_ == nullptr) {
      return absl::FailedPreconditionError(
          "this worker has no cachestore: it cannot hand KV over (start it with --cachestore)");
    }
    if (request.prompt.size() < 2) {
      return absl::InvalidArgumentError("a KV hand-off needs a prompt of at least 2 tokens");
    }
  }
  if (!request.kv_layer_bounds.empty() &&
      (request.handoff != KvHandoff::kDecode ||
       !ValidLayerParts(request.kv_layer_bounds, engine_.cache().geometry().n_layer))) {
    return absl::InvalidArgumentError(
        "kv layer bounds must go with a decode hand-off and tile the model's layers");
  }
  const int32_t kv_heads = engine_.config().n_head_kv;
  if ((!request.kv_head_bounds.empty() && (request.handoff != KvHandoff::kDecode ||
                                           !ValidLayerParts(request.kv_head_bounds, kv_heads))) ||
      (!request.resume_kv_head_bounds.empty() &&
       (request.resume.empty() || !ValidLayerParts(request.resume_kv_head_bounds, kv_heads)))) {
    return absl::InvalidArgumentError(
        "kv head bounds must go with a decode hand-off (or a resume) and tile the model's KV "
        "heads");
  }
  // One shared object per policy: requests that select the same one batch their attention.
  auto policy = policies_->Resolve(request.kv_policy);
  if (!policy.ok()) {
    const absl::string_view why = policy.status().message();
    return absl::InvalidArgumentError(
        absl::StartsWith(why, "kv_policy") ? std::string(why) : absl::StrCat("kv_policy: ", why));
  }
  if (engine_.shard().kv_replicas > 1 && (*policy)->reads_whole_query_group()) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_policy: '", (*policy)->spec(),
                     "' is not supported by this worker's tensor-parallel size (its KV heads are "
                     "replicated, and the policy chooses by all the query heads of a KV head)"));
  }
  if (!sink) return absl::InvalidArgumentError("no output sink");

  auto r = std::make_unique<Request>(engine_.tokenizer(), std::move(request), *std::move(policy));
  r->tokens = r->req.prompt;
  r->prompt_len = static_cast<int32_t>(r->tokens.size());
  if (!r->req.resume.empty()) {
    // Replay what was delivered, so that the sampler, the text decoder and the stop strings are
    // where the original request's were; the text they give now was delivered then.
    for (int32_t id : r->req.resume) {
      r->tokens.push_back(id);
      r->filter.Push(r->decoder.Push(id));
    }
    if (r->filter.stopped()) {
      return absl::InvalidArgumentError("the resumed tokens already end in a stop string");
    }
    r->generated = static_cast<int32_t>(r->req.resume.size());
    r->sampler.Skip(r->generated);
  }

  absl::MutexLock lock(&mu_);
  if (draining_) return absl::UnavailableError("the worker is draining");
  if (queued_ >= options_.max_waiting) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the worker's queue is full (", options_.max_waiting, " requests waiting)"));
  }
  if (r->req.id.empty()) r->req.id = absl::StrCat("req-", next_id_++);
  if (ids_.contains(r->req.id)) {
    return absl::AlreadyExistsError(absl::StrCat("request ", r->req.id, " is already live"));
  }
  ids_[r->req.id] = true;
  ++queued_;
  inbox_.emplace_back(std::move(r), std::move(sink));
  return absl::OkStatus();
}

void Scheduler::Cancel(std::string_view id) {
  absl::MutexLock lock(&mu_);
  cancels_.emplace_back(id);
}

bool Scheduler::HasWork() const {
  absl::MutexLock lock(&mu_);
  return !inbox_.empty() || !cancels_.empty() || stats_.running > 0 || stats_.waiting > 0 ||
         stats_.pushing > 0 || stats_.fetching > 0;
}

bool Scheduler::WaitForWork(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return woken_ || !inbox_.empty() || !cancels_.empty() || stats_.running > 0 ||
           stats_.waiting > 0;
  };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  const bool work =
      !inbox_.empty() || !cancels_.empty() || stats_.running > 0 || stats_.waiting > 0;
  woken_ = false;
  return work;
}

void Scheduler::Wake() {
  absl::MutexLock lock(&mu_);
  woken_ = true;
}

SchedulerStats Scheduler::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

kvcache::PrefixCache::Events Scheduler::TakePrefixEvents() {
  absl::MutexLock lock(&mu_);
  return std::exchange(prefix_events_, kvcache::PrefixCache::Events());
}

int32_t Scheduler::prefix_block_tokens() const {
  return prefix_cache_ != nullptr ? prefix_cache_->block_tokens() : 0;
}

void Scheduler::PublishStats() {
  const kvcache::PagePool& pool = engine_.cache().pool();
  kvcache::PrefixCache::Events events;
  if (prefix_cache_ != nullptr) {
    if (prefix_resync_.exchange(false)) prefix_cache_->Resync();
    events = prefix_cache_->TakeEvents();
    events.stored = std::move(prefix_stored_);
    prefix_stored_.clear();
  }
  for (auto& [kind, p] : kv_by_policy_) p.sequences = 0, p.bytes = 0, p.full_bytes = 0;
  for (const Request* r : running_) {
    if (r->seq == nullptr) continue;
    const std::string& spec = r->policy->spec();
    PolicyKvBytes& p = kv_by_policy_[spec.substr(0, spec.find(':'))];
    const kvcache::KvUsage u = engine_.cache().Usage(*r->seq);
    ++p.sequences;
    p.bytes += u.bytes;
    p.full_bytes += u.full_bytes;
  }
  for (auto& [kind, p] : kv_by_policy_) {
    p.byte_steps += static_cast<double>(p.bytes);
    p.full_byte_steps += static_cast<double>(p.full_bytes);
  }
  absl::MutexLock lock(&mu_);
  if (events.reset || !events.added.empty() || !events.removed.empty() || !events.stored.empty()) {
    prefix_events_.Merge(std::move(events));
  }
  stats_.kv_by_policy = kv_by_policy_;
  stats_.running = static_cast<int32_t>(running_.size());
  stats_.pushing = pushes_in_flight_;
  stats_.fetching = fetches_in_flight_;
  stats_.waiting = static_cast<int32_t>(waiting_.size());
  stats_.prefix_cache_pages = prefix_cache_ != nullptr ? prefix_cache_->UnusedPages() : 0;
  stats_.kv_pages_used = pool.pages_used() - stats_.prefix_cache_pages;
  stats_.kv_pages_total = pool.capacity_pages();
  stats_.prefix_cache_queries_total = prefix_queries_total_;
  stats_.prefix_cache_hits_total = prefix_hits_total_;
  stats_.prefix_store_queries_total = prefix_store_queries_total_;
  stats_.prefix_store_hits_total = prefix_store_hits_total_;
  stats_.prefix_store_blocks_written_total = prefix_store_written_total_;
  stats_.prefix_store_blocks_skipped_total = prefix_store_skipped_total_;
  stats_.prefix_store_writing = puts_in_flight_;
  stats_.preemptions_total = preemptions_total_;
  stats_.steps_total = steps_total_;
  stats_.target_itl_seconds = absl::ToDoubleSeconds(options_.target_itl);
  stats_.step_cost_estimate_seconds = step_estimate_;
  stats_.step_cost_margin = step_cost_.margin();
  stats_.steps_over_target_total = steps_over_target_;
  stats_.prompt_tokens_total = prompt_tokens_total_;
  stats_.generation_tokens_total = generation_tokens_total_;
}

void Scheduler::TakeInbox() {
  std::vector<std::pair<std::unique_ptr<Request>, OutputSink>> inbox;
  std::vector<std::string> cancels;
  {
    absl::MutexLock lock(&mu_);
    inbox.swap(inbox_);
    cancels.swap(cancels_);
  }
  for (auto& [r, sink] : inbox) {
    r->sink = std::move(sink);
    Request* raw = r.get();
    live_[raw->req.id] = std::move(r);
    waiting_.push_back(raw);
  }
  for (const std::string& id : cancels) {
    auto it = live_.find(id);
    if (it == live_.end()) continue;
    Request& r = *it->second;
    if (r.pushing || r.fetching) {  // the transfer thread uses it: it ends when that is done
      r.cancelled = true;
      continue;
    }
    RequestOutput out;
    Finish(r, RequestState::kCancelled, absl::CancelledError("the request was cancelled"), "", out);
  }
}

bool Scheduler::CanAdmit(const Request& r) const {
  if (running_.empty()) return true;  // alone it may still fit; if not, Step fails it cleanly
  const kvcache::KvCache& cache = engine_.cache();
  const int32_t page = cache.pool().page_size();
  // What the request's policy holds for its tokens so far (a full cache: all of them; a policy
  // with a budget: at most its budget), plus room for every running sequence to grow by one
  // block of tokens (none for one at its budget), so that admitting does not immediately
  // preempt the others.
  int64_t need =
      r.policy->PlannedPages(cache.geometry(), page, static_cast<int64_t>(r.tokens.size()));
  for (const Request* other : running_) {
    const int64_t n = other->computed;
    need += other->policy->PlannedPages(cache.geometry(), page, n + page) -
            other->policy->PlannedPages(cache.geometry(), page, n);
  }
  // Blocks only the prefix cache holds count as free: an allocation evicts them when it needs
  // their pages (the cache is the pool's reclaimer).
  const int64_t unused = prefix_cache_ != nullptr ? prefix_cache_->UnusedPages() : 0;
  return cache.pool().pages_free() + unused >= need;
}

void Scheduler::Admit(Request& r) {
  if (r.req.handoff == KvHandoff::kPrefill) {
    r.tokens.resize(r.req.prompt.size() - 1);  // the last prompt token is the decode side's
  }
  r.restored_tokens = 0;
  if (r.req.handoff == KvHandoff::kDecode && TakeFetchedKv(r)) {
    r.restored_tokens = r.computed;
  } else if (UsesSnapshots(r)) {
    AttachSnapshot(r);
  } else {
    r.seq = &engine_.cache().CreateSequence(r.policy);
    r.computed = 0;
    if (prefix_cache_ != nullptr && kvcache::PrefixCache::Shares(*r.policy)) {
      // The last token is always computed: its logits give the next sample.
      const int64_t n = static_cast<int64_t>(r.tokens.size());
      r.computed = prefix_cache_->Attach(*r.seq, r.tokens, r.req.cache_salt, n - 1, r.chain);
      // Tokens beyond the run held here when the store was asked came from the store.
      const int32_t block = prefix_cache_->block_tokens();
      const int64_t from_store =
          r.store_asked
              ? std::clamp<int64_t>(r.computed - r.local_blocks * block, 0, r.store_blocks * block)
              : 0;
      prefix_queries_total_ += n;
      prefix_hits_total_ += r.computed - from_store;
      if (r.store_asked && r.asked_blocks > r.local_blocks) {
        prefix_store_queries_total_ += (r.asked_blocks - r.local_blocks) * block;
        prefix_store_hits_total_ += from_store;
      }
      // Asked once per admission: a preempted request looks again when it comes back.
      r.store_asked = false;
      r.store_blocks = 0;
    }
  }
  r.state = RequestState::kPrefill;
  r.admission = ++next_admission_;
  if (r.queue_seconds < 0) r.queue_seconds = absl::ToDoubleSeconds(absl::Now() - r.arrival);
  running_.push_back(&r);
}

void Scheduler::Preempt(Request& r) {
  KVASIR_LOG_SUBSYS(INFO, kWorker, "preempting request=%s tokens=%d (KV memory full)", r.req.id,
                    static_cast<int>(r.tokens.size()));
  engine_.cache().FreeSequence(r.seq->id());
  r.seq = nullptr;
  r.computed = 0;
  r.state = RequestState::kQueued;
  ++r.preemptions;
  ++preemptions_total_;
  running_.erase(std::find(running_.begin(), running_.end(), &r));
  waiting_.push_front(&r);
  // Its KV will be wanted again: PrefetchKv fetches the snapshot once more.
  r.store_skipped = false;
}

void Scheduler::Remove(Request& r) {
  if (r.seq != nullptr) {
    engine_.cache().FreeSequence(r.seq->id());
    r.seq = nullptr;
  }
  auto run = std::find(running_.begin(), running_.end(), &r);
  if (run != running_.end()) running_.erase(run);
  auto wait = std::find(waiting_.begin(), waiting_.end(), &r);
  if (wait != waiting_.end()) waiting_.erase(wait);
}

void Scheduler::Emit(Request& r, RequestOutput& out) {
  out.id = r.req.id;
  out.state = r.state;
  out.prompt_tokens = r.prompt_len;
  out.completion_tokens = r.generated;
  out.preemptions = r.preemptions;
  out.queue_seconds = std::max(0.0, r.queue_seconds);
  out.kv_source = r.kv_source;
  out.kv_transfer_bytes = r.kv_transfer_bytes;
  out.kv_transfer_seconds = r.kv_transfer_seconds;
  if (out.finish_reason == "prefilled") {
    out.kv_layer_bounds = r.pushed_bounds;
    out.kv_push_wait_seconds = r.push_wait_seconds;
  }
  if (out.finish_reason == "prefilled" || out.finish_reason == "migrated") {
    out.kv_head_bounds = r.pushed_head_bounds;
  }
  r.sink(out);
}

// Ends the request: frees its KV, emits `out` as its last output and forgets it.
void Scheduler::Finish(Request& r, RequestState state, absl::Status status, std::string reason,
                       RequestOutput& out) {
  Remove(r);
  r.state = state;
  out.finished = true;
  out.finish_reason = std::move(reason);
  out.status = std::move(status);
  Emit(r, out);
  const std::string id = r.req.id;
  {
    absl::MutexLock lock(&mu_);
    ids_.erase(id);
    // Requests leave the queue count when they finish; waiting ones are counted in it.
  }
  live_.erase(id);  // destroys r
}

void Scheduler::SampleNext(Request& r, std::span<const float> logits, RequestOutput& out) {
  const model::Tokenizer& tok = engine_.tokenizer();
  if (r.req.logprobs >= 0) {
    // log-softmax of the raw logits (before temperature and filters), as OpenAI reports them.
    const float max = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (float x : logits) sum += std::exp(static_cast<double>(x) - max);
    const float log_sum = static_cast<float>(std::log(sum));
    TokenLogprobs lp;
    const int32_t top = std::min<int32_t>(r.req.logprobs, static_cast<int32_t>(logits.size()));
    if (top > 0) {
      std::vector<int32_t> order(logits.size());
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + top, order.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
      });
      for (int32_t i = 0; i < top; ++i) {
        lp.top.emplace_back(order[i], logits[order[i]] - max - log_sum);
      }
    }
    const int32_t id = r.sampler.Sample(logits, r.tokens);
    lp.id = id;
    lp.logprob = logits[id] - max - log_sum;
    out.logprobs.push_back(std::move(lp));
    out.ids.push_back(id);
  } else {
    out.ids.push_back(r.sampler.Sample(logits, r.tokens));
  }
  const int32_t id = out.ids.back();
  ++generation_tokens_total_;
  const bool stop_token =
      (!r.req.ignore_eos && tok.IsEog(id)) ||
      std::find(r.req.stop_ids.begin(), r.req.stop_ids.end(), id) != r.req.stop_ids.end();
  std::string reason;
  if (stop_token) {  // the stop token ends the output and is not part of it
    out.ids.pop_back();
    if (!out.logprobs.empty()) out.logprobs.pop_back();
    reason = "stop";
  } else {
    r.tokens.push_back(id);
    ++r.generated;
    out.text += r.filter.Push(r.decoder.Push(id));
    if (r.filter.stopped()) {
      reason = "stop";
    } else if (r.generated >= r.req.max_tokens ||
               static_cast<int64_t>(r.tokens.size()) >= options_.max_model_len) {
      reason = "length";
    }
  }
  if (!reason.empty()) {
    if (!r.filter.stopped()) out.text += r.filter.Push(r.decoder.Flush());
    out.text += r.filter.Flush();
    Finish(r, RequestState::kFinished, absl::OkStatus(), std::move(reason), out);
    return;
  }
  r.state = RequestState::kDecode;
  Emit(r, out);
}

void Scheduler::CancelAll(const absl::Status& status) {
  TakeInbox();
  CompleteTransfers(absl::InfiniteDuration());  // each within its transfer deadline
  std::vector<Request*> all;
  for (auto& [id, r] : live_) all.push_back(r.get());
  for (Request* r : all) {
    RequestOutput out;
    Finish(*r,
           status.code() == absl::StatusCode::kCancelled ? RequestState::kCancelled
                                                         : RequestState::kFailed,
           status, "", out);
  }
  {
    absl::MutexLock lock(&mu_);
    queued_ = 0;
  }
  PublishStats();
}

bool Scheduler::Step() {
  const absl::Time step_start = absl::Now();
  TakeInbox();
  CompleteTransfers(absl::ZeroDuration());
  PrefetchKv();
  last_step_ = StepStats();
  if (draining()) MigrateAll();
  // Idle unless a push is in flight (below, the step then waits a little for a transfer).
  if (running_.empty() && waiting_.empty() && pushes_in_flight_ == 0) {
    PublishStats();
    absl::MutexLock lock(&mu_);
    queued_ = static_cast<int32_t>(inbox_.size());
    return false;
  }

  // Requests with nothing to generate finish at once.
  for (size_t i = 0; i < waiting_.size();) {
    Request& r = *waiting_[i];
    if (r.req.max_tokens == 0 && !r.fetching) {
      RequestOutput out;
      Finish(r, RequestState::kFinished, absl::OkStatus(), "length", out);
    } else {
      ++i;
    }
  }

  // Plan: decode tokens of running sequences first, then their prefill chunks, then admit.
  std::vector<Planned> plan;
  int64_t budget = options_.max_num_batched_tokens;
  StepCostModel::Features decoding;
  for (Request* r : running_) {
    if (r->pending() == 1 && budget > 0) {
      plan.push_back({r, 1});
      --budget;
      decoding.decodes += 1;
      decoding.context_k += static_cast<double>(r->computed) / 1000.0;
    }
  }
  // Under a latency target, the prefill tokens that fit beside the decodes, shared among the
  // prompts being prefilled (each at least kMinPrefillChunk) so that none waits for a long one.
  int64_t share = options_.prefill_chunk;
  const double target = absl::ToDoubleSeconds(options_.target_itl);
  if (target > 0 && decoding.decodes > 0) {
    budget = std::min(budget, step_cost_.PrefillBudget(decoding, target, kMinPrefillChunk, budget));
    int64_t prefilling = 0;
    for (const Request* r : running_) prefilling += r->pending() > 1 ? 1 : 0;
    if (prefilling > 0) share = std::max(kMinPrefillChunk, budget / prefilling);
  }
  // Under a target the prompts take turns at the head of the line (a tight budget may hold one
  // chunk per step); otherwise first come, first served.
  const size_t first = target > 0 && !running_.empty() ? steps_total_ % running_.size() : 0;
  for (size_t i = 0; i < running_.size(); ++i) {
    Request* r = running_[(first + i) % running_.size()];
    if (r->pending() > 1 && budget > 0) {
      const int32_t n = AlignChunk(*r, static_cast<int32_t>(std::min<int64_t>(
                                           {r->pending(), budget, options_.prefill_chunk, share})));
      plan.push_back({r, n});
      budget -= n;
    }
  }
  while (budget > 0 && static_cast<int32_t>(running_.size()) < options_.max_num_seqs &&
         !waiting_.empty()) {
    Request& r = *waiting_.front();
    // First come, first served: nobody overtakes the head, also while its KV is on its way from
    // the store (within the transfer deadline).
    if (r.fetching || !CanAdmit(r)) break;
    waiting_.pop_front();
    Admit(r);
    const int32_t n = AlignChunk(
        r, static_cast<int32_t>(std::min<int64_t>({r.pending(), budget, options_.prefill_chunk})));
    plan.push_back({&r, n});
    budget -= n;
  }
  if (plan.empty() && pushes_in_flight_ + fetches_in_flight_ > 0) {
    // Nothing to run until a transfer is done: wait a little for one (not a spin).
    CompleteTransfers(absl::Milliseconds(20));
    PublishStats();
    return true;
  }

  // Run it; when the KV pages run out, preempt the newest sequence and try again.
  std::vector<StepSequence> batch;
  std::vector<Request*> streaming;  // prefill hand-offs whose prompt ends in this step
  while (!plan.empty()) {
    batch.clear();
    streaming.clear();
    for (const Planned& p : plan) {
      batch.push_back({p.request->seq,
                       std::span<const int32_t>(p.request->tokens)
                           .subspan(static_cast<size_t>(p.request->computed), p.count),
                       false});
      if (p.request->req.handoff == KvHandoff::kPrefill && p.count == p.request->pending() &&
          stream_bounds_.size() > 2 && !StoreDown()) {
        streaming.push_back(p.request);
      }
    }
    LayerDoneHook on_layer_done;
    if (!streaming.empty()) {
      on_layer_done = [this, &streaming](int32_t layer) { StreamParts(streaming, layer); };
    }
    absl::Status status = engine_.runner().Forward(batch, logits_, on_layer_done);
    if (status.ok()) break;
    if (!absl::IsResourceExhausted(status)) {
      KVASIR_LOG_SUBSYS(ERROR, kWorker, "forward step failed: %s", status.ToString());
      for (const Planned& p : plan) {
        RequestOutput out;
        Finish(*p.request, RequestState::kFailed,
               absl::InternalError(absl::StrCat("forward pass failed: ", status.message())), "",
               out);
      }
      plan.clear();
      break;
    }
    Request* victim = *std::max_element(
        running_.begin(), running_.end(),
        [](const Request* a, const Request* b) { return a->admission < b->admission; });
    plan.erase(std::remove_if(plan.begin(), plan.end(),
                              [victim](const Planned& p) { return p.request == victim; }),
               plan.end());
    if (running_.size() == 1) {
      RequestOutput out;
      Finish(*victim, RequestState::kFailed,
             absl::ResourceExhaustedError(
                 absl::StrCat("the request needs more KV cache memory than this worker has (",
                              victim->tokens.size(), " tokens; raise --kv-cache-memory)")),
             "", out);
    } else {
      Preempt(*victim);
      ++last_step_.preempted;
    }
  }

  // What the step computed, for the cost model (below, once its outputs are out). A step that
  // preempted is not a clean sample; without a preemption the plan is the one made above, whose
  // decodes are `decoding`.
  const bool observe = !plan.empty() && last_step_.preempted == 0;
  StepCostModel::Features computed = decoding;
  for (const Planned& p : plan) {
    if (p.request->state != RequestState::kDecode) computed.prefill_tokens += p.count;
  }

  // Outputs: a sequence whose pending tokens are all computed samples its next token.
  ++steps_total_;
  const int32_t n_vocab = engine_.config().n_vocab;
  for (size_t i = 0; i < plan.size(); ++i) {
    Request& r = *plan[i].request;
    const bool decode = r.state == RequestState::kDecode;
    (decode ? last_step_.decode_tokens : last_step_.prefill_tokens) += plan[i].count;
    if (!decode) prompt_tokens_total_ += plan[i].count;
    last_step_.ids.push_back(r.req.id);
    r.computed = r.seq->n_tokens();
    if (UsesSnapshots(r)) KeepSnapshot(r);
    if (prefix_cache_ != nullptr) {
      const std::vector<int64_t> kept =
          prefix_cache_->Insert(*r.seq, r.tokens, r.computed, r.chain);
      if (!kept.empty() && PrefixStoreOn()) PutNewBlocks(r, kept);
    }
    if (r.pending() > 0) continue;  // more prompt chunks to come
    if (r.req.handoff == KvHandoff::kPrefill) {
      StartPush(r);
      continue;
    }
    RequestOutput out;
    SampleNext(r, std::span<const float>(logits_).subspan(i * n_vocab, n_vocab), out);
  }
  last_step_.num_seqs = static_cast<int32_t>(plan.size());
  // The step's time, from its start to its tokens sampled and sent, is what a decoding sequence
  // waits between two tokens: it teaches the cost model.
  if (observe) {
    const double took = absl::ToDoubleSeconds(absl::Now() - step_start);
    step_estimate_ = step_cost_.Predict(computed);
    if (target > 0 && computed.decodes > 0 && took > target) {
      ++steps_over_target_;
      KVASIR_LOG_SUBSYS(DEBUG, kWorker,
                        "step over the latency target: %.1f ms (estimate %.1f ms, margin %.3f) "
                        "for %g decodes at %.2fk tokens of context and %g prompt tokens",
                        took * 1e3, step_estimate_ * 1e3, step_cost_.margin(), computed.decodes,
                        computed.context_k, computed.prefill_tokens);
    }
    step_cost_.Observe(computed, took);
  }
  PublishStats();
  {
    absl::MutexLock lock(&mu_);
    queued_ = static_cast<int32_t>(inbox_.size() + waiting_.size());
  }
  return true;
}

}  // namespace kvasir::worker::service
