// The scheduler's KV hand-off (disaggregated prefill and decode) on two engines over the same
// model and an in-process cachestore: for every policy, a request prefilled on one scheduler and
// decoded on the other gives the monolithic run's tokens and text, greedy and seeded; a decode
// request whose KV is not in the store recomputes the prompt and still gives the same output; and
// the store keeps no reservation or lease. The prefix cache's store tier: blocks one worker
// computed are taken by another (and after a restart of the store, from its disk tier) with the
// output of a cold run, never across tenants.
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cachestore/service.h"
#include "gtest/gtest.h"
#include "model/model_files.h"
#include "tests/testing/paths.h"
#include "tests/testing/safetensors_builder.h"
#include "transport/fault/fault_schedule.h"
#include "worker/engine.h"
#include "worker/service/scheduler.h"

namespace kvasir::worker::service {
namespace {

struct Collected {
  std::vector<int32_t> ids;
  std::string text;
  bool finished = false;
  std::string finish_reason;
  absl::Status status;
  std::string kv_source;
  int64_t kv_transfer_bytes = 0;
  std::vector<int32_t> kv_layer_bounds;
};

std::unique_ptr<Engine> LoadModel(const std::string& model) {
  EngineOptions options;
  options.model = model;
  options.num_threads = 1;
  options.prefault = false;
  auto engine = Engine::Load(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

// A sink that gathers a request's outputs into `c` (which must outlive the request).
OutputSink CollectInto(Collected& c) {
  return [&c](const RequestOutput& out) {
    c.ids.insert(c.ids.end(), out.ids.begin(), out.ids.end());
    c.text += out.text;
    c.finished = out.finished;
    c.finish_reason = out.finish_reason;
    c.status = out.status;
    c.kv_source = out.kv_source;
    c.kv_transfer_bytes = out.kv_transfer_bytes;
    c.kv_layer_bounds = out.kv_layer_bounds;
  };
}

// Runs one request alone on `scheduler` until it finishes.
Collected RunAlone(Scheduler& scheduler, SchedulerRequest request) {
  Collected c;
  absl::Status s = scheduler.Submit(std::move(request), CollectInto(c));
  EXPECT_TRUE(s.ok()) << s;
  for (int steps = 0; s.ok() && scheduler.Step(); ++steps) {
    if (steps > 10000) {
      ADD_FAILURE() << "the scheduler did not finish";
      break;
    }
  }
  return c;
}

std::unique_ptr<Engine> LoadStories() {
  return LoadModel(testing::SharedPath("models/stories260K.gguf"));
}

class HandoffTest : public ::testing::TestWithParam<std::string> {
 protected:
  virtual std::string Model() const { return testing::SharedPath("models/stories260K.gguf"); }

  void SetUp() override {
    prefill_engine_ = LoadModel(Model());
    decode_engine_ = LoadModel(Model());
    ASSERT_NE(prefill_engine_, nullptr);
    ASSERT_NE(decode_engine_, nullptr);
    cachestore::ServiceOptions so;
    so.http = false;
    so.store.memory_capacity_bytes = 64 << 20;
    so.store.arena_bytes = 32 << 20;
    auto service = cachestore::StoreService::Start(so);
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = std::move(*service);
    store_ = Client();
    ASSERT_NE(store_, nullptr);
    options_.prefill_chunk = 16;  // the prompt in several chunks, as under load
    options_.kv_transfer_timeout = absl::Seconds(2);
    auto mono = Scheduler::Create(*prefill_engine_, options_);
    auto prefill = Scheduler::Create(*prefill_engine_, options_, store_.get());
    auto decode = Scheduler::Create(*decode_engine_, options_, store_.get());
    ASSERT_TRUE(mono.ok() && prefill.ok() && decode.ok());
    mono_ = std::move(*mono);
    prefill_ = std::move(*prefill);
    decode_ = std::move(*decode);
  }

  // A client of this fixture's store whose calls go past `faults` (none: a plain one).
  std::unique_ptr<cachestore::StoreClient> Client(
      std::shared_ptr<transport::fault::FaultSchedule> faults = nullptr) {
    cachestore::ClientOptions co;
    co.port = service_->port();
    co.faults = std::move(faults);
    auto client = cachestore::StoreClient::Connect(co);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  // The monolithic run of `base`, after its prompt's KV was prefilled into the store.
  Collected MonolithicAndPrefilled(const SchedulerRequest& base) {
    const Collected mono = RunAlone(*mono_, base);
    EXPECT_TRUE(mono.status.ok()) << mono.status;
    SchedulerRequest p = base;
    p.handoff = KvHandoff::kPrefill;
    const Collected pre = RunAlone(*prefill_, p);
    EXPECT_EQ(pre.finish_reason, "prefilled");
    prefilled_bounds_ = pre.kv_layer_bounds;
    return mono;
  }

  // The decode half of `base`, given the parts its prefill wrote the KV in.
  SchedulerRequest DecodeOf(const SchedulerRequest& base) const {
    SchedulerRequest d = base;
    d.handoff = KvHandoff::kDecode;
    d.kv_layer_bounds = prefilled_bounds_;
    return d;
  }

  SchedulerRequest Request(const std::string& id, const std::string& text,
                           SamplingParams sampling) {
    SchedulerRequest r;
    r.id = id;
    r.prompt = prefill_engine_->tokenizer().Encode(text, true, false);
    r.sampling = sampling;
    r.max_tokens = 32;
    r.kv_policy = GetParam();
    return r;
  }

  // Runs `base` on one scheduler, then prefilled on prefill_ and decoded on decode_, and checks
  // that the decode side took the KV from the store (in the layer parts of the prefill's
  // options) and produced the same output.
  void ExpectDisaggregatedEqualsMonolithic(const SchedulerRequest& base) {
    const Collected mono = RunAlone(*mono_, base);
    ASSERT_TRUE(mono.status.ok()) << mono.status;
    ASSERT_FALSE(mono.ids.empty());
    SchedulerRequest p = base;
    p.handoff = KvHandoff::kPrefill;
    const Collected pre = RunAlone(*prefill_, p);
    ASSERT_TRUE(pre.status.ok()) << pre.status;
    EXPECT_EQ(pre.finish_reason, "prefilled");
    EXPECT_TRUE(pre.ids.empty());
    EXPECT_GT(pre.kv_transfer_bytes, 0);
    EXPECT_EQ(pre.kv_layer_bounds, LayerParts(prefill_engine_->cache().geometry().n_layer,
                                              prefill_->options().kv_stream_layers));
    SchedulerRequest d = base;
    d.handoff = KvHandoff::kDecode;
    d.kv_layer_bounds = pre.kv_layer_bounds;
    const Collected dec = RunAlone(*decode_, d);
    ASSERT_TRUE(dec.status.ok()) << dec.status;
    EXPECT_EQ(dec.kv_source, "store");
    EXPECT_EQ(dec.kv_transfer_bytes, pre.kv_transfer_bytes);
    EXPECT_EQ(dec.ids, mono.ids);
    EXPECT_EQ(dec.text, mono.text);
    EXPECT_EQ(dec.finish_reason, mono.finish_reason);
  }

  SchedulerOptions options_;
  std::unique_ptr<Engine> prefill_engine_, decode_engine_;
  std::unique_ptr<cachestore::StoreService> service_;
  std::unique_ptr<cachestore::StoreClient> store_;
  std::unique_ptr<Scheduler> mono_, prefill_, decode_;
  std::vector<int32_t> prefilled_bounds_;  // of the last MonolithicAndPrefilled
};

constexpr char kPrompt[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun "
    "with her big red ball. One day, she saw a small dog in the park and";

TEST_P(HandoffTest, PrefillHereDecodeThereEqualsOneWorker) {
  SamplingParams seeded;
  seeded.temperature = 0.9f;
  seeded.seed = 11;
  ASSERT_EQ(prefill_engine_->cache().geometry().n_layer, 5);
  // The KV written in parts of 1 and of 4 layers while the last prompt chunk computes, and whole
  // after it: each part's key space is its own, so every round writes and reads anew.
  for (int32_t stream_layers : {1, 4, 0}) {
    SCOPED_TRACE(stream_layers);
    SchedulerOptions o = options_;
    o.kv_stream_layers = stream_layers;
    auto prefill = Scheduler::Create(*prefill_engine_, o, store_.get());
    ASSERT_TRUE(prefill.ok()) << prefill.status();
    prefill_ = std::move(*prefill);
    for (const SamplingParams& sampling : {SamplingParams::Greedy(), seeded}) {
      SCOPED_TRACE(sampling.temperature);
      const SchedulerRequest base = Request("r", kPrompt, sampling);
      ASSERT_GT(base.prompt.size(), 40u);
      ASSERT_NO_FATAL_FAILURE(ExpectDisaggregatedEqualsMonolithic(base));
    }
  }
  // A decode request that names other parts than those written finds nothing and recomputes.
  SchedulerRequest wrong = Request("w", kPrompt, SamplingParams::Greedy());
  wrong.handoff = KvHandoff::kDecode;
  wrong.kv_layer_bounds = {0, 2, 5};
  const Collected recomputed = RunAlone(*decode_, wrong);
  EXPECT_EQ(recomputed.kv_source, "recompute:not_found");
  wrong.kv_layer_bounds = {0, 6};
  EXPECT_TRUE(absl::IsInvalidArgument(decode_->Submit(wrong, [](const RequestOutput&) {})));
  // Nothing was prefilled for this prompt: the decode side recomputes it, same output.
  const SchedulerRequest other =
      Request("o", "The little dog ran to the big tree and", SamplingParams::Greedy());
  const Collected mono = RunAlone(*mono_, other);
  SchedulerRequest d = other;
  d.handoff = KvHandoff::kDecode;
  const Collected dec = RunAlone(*decode_, d);
  ASSERT_TRUE(dec.status.ok()) << dec.status;
  EXPECT_EQ(dec.kv_source, "recompute:not_found");
  EXPECT_EQ(dec.ids, mono.ids);
  // Every KV page is back, and the store holds no reservation or lease.
  EXPECT_EQ(prefill_engine_->cache().pool().pages_used(), 0);
  EXPECT_EQ(decode_engine_->cache().pool().pages_used(), 0);
  auto stats = store_->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->active_reservations(), 0u);
  EXPECT_EQ(stats->active_read_leases(), 0u);
}

// Runs `request` on `scheduler` until it has delivered at least `tokens` tokens (or finished).
void RunUntil(Scheduler& scheduler, SchedulerRequest request, size_t tokens, Collected& c) {
  absl::Status s = scheduler.Submit(std::move(request), CollectInto(c));
  EXPECT_TRUE(s.ok()) << s;
  for (int steps = 0; s.ok() && !c.finished && c.ids.size() < tokens && steps < 10000; ++steps) {
    scheduler.Step();
  }
}

// A decoding request drained mid-way (its KV written to the store) and resumed on another
// worker from the tokens it delivered gives, in all, the monolithic run's tokens and text.
TEST_P(HandoffTest, DrainedMidDecodeResumesElsewhereWithTheSameOutput) {
  SamplingParams seeded;
  seeded.temperature = 0.9f;
  seeded.seed = 5;
  for (const SamplingParams& sampling : {SamplingParams::Greedy(), seeded}) {
    SCOPED_TRACE(sampling.temperature);
    // A fresh decode scheduler each round: a drained one takes nothing more.
    auto created = Scheduler::Create(*decode_engine_, options_, store_.get());
    ASSERT_TRUE(created.ok()) << created.status();
    Scheduler& decoder = **created;
    const SchedulerRequest base = Request("r", kPrompt, sampling);
    const Collected mono = RunAlone(*mono_, base);
    ASSERT_TRUE(mono.status.ok()) << mono.status;
    ASSERT_GT(mono.ids.size(), 12u);
    SchedulerRequest d = base;
    d.handoff = KvHandoff::kDecode;
    Collected first;
    RunUntil(decoder, d, 10, first);
    ASSERT_FALSE(first.finished);
    EXPECT_EQ(decoder.Drain(), 1);
    decoder.Step();
    ASSERT_TRUE(first.finished);
    EXPECT_EQ(first.finish_reason, "migrated");
    EXPECT_GT(first.kv_transfer_bytes, 0);  // the KV of prompt + delivered tokens
    EXPECT_TRUE(decoder.drained());
    EXPECT_TRUE(absl::IsUnavailable(decoder.Submit(d, [](const RequestOutput&) {})));
    EXPECT_EQ(decode_engine_->cache().pool().pages_used(), 0);

    SchedulerRequest resumed = d;
    resumed.id = "r-resumed";
    resumed.resume = first.ids;
    const Collected rest = RunAlone(*prefill_, resumed);  // another worker with the store
    ASSERT_TRUE(rest.status.ok()) << rest.status;
    EXPECT_EQ(rest.kv_source, "store");
    std::vector<int32_t> all = first.ids;
    all.insert(all.end(), rest.ids.begin(), rest.ids.end());
    EXPECT_EQ(all, mono.ids);
    EXPECT_EQ(first.text + rest.text, mono.text);
    EXPECT_EQ(rest.finish_reason, mono.finish_reason);
  }
  auto stats = store_->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->active_reservations(), 0u);
  EXPECT_EQ(stats->active_read_leases(), 0u);
}

// Without a store (or its blocks), a resumed request recomputes prompt + delivered tokens and
// goes on as the original: the worker-lost case of a monolithic cluster.
TEST_P(HandoffTest, ResumedWithoutTheStoreRecomputesWithTheSameOutput) {
  SamplingParams seeded;
  seeded.temperature = 0.9f;
  seeded.seed = 7;
  for (const SamplingParams& sampling : {SamplingParams::Greedy(), seeded}) {
    SCOPED_TRACE(sampling.temperature);
    SchedulerRequest base = Request("r", kPrompt, sampling);
    base.stop = {"zzqx"};  // a stop string that never matches still holds text back
    const Collected mono = RunAlone(*mono_, base);
    ASSERT_TRUE(mono.status.ok()) << mono.status;
    ASSERT_GT(mono.ids.size(), 12u);
    Collected first;
    RunUntil(*mono_, base, 9, first);
    ASSERT_FALSE(first.finished);
    mono_->Cancel("r");
    mono_->Step();
    SchedulerRequest resumed = base;
    resumed.id = "r2";
    resumed.resume = first.ids;
    const Collected rest = RunAlone(*mono_, resumed);
    ASSERT_TRUE(rest.status.ok()) << rest.status;
    std::vector<int32_t> all = first.ids;
    all.insert(all.end(), rest.ids.begin(), rest.ids.end());
    EXPECT_EQ(all, mono.ids);
    EXPECT_EQ(first.text + rest.text, mono.text);
    EXPECT_EQ(rest.finish_reason, mono.finish_reason);
  }
  // Resumed tokens are checked like the prompt's.
  SchedulerRequest bad = Request("b", kPrompt, SamplingParams::Greedy());
  bad.resume = {-1};
  EXPECT_TRUE(absl::IsInvalidArgument(mono_->Submit(bad, [](const RequestOutput&) {})));
  bad.resume.assign(bad.max_tokens, 1);
  EXPECT_TRUE(absl::IsInvalidArgument(mono_->Submit(bad, [](const RequestOutput&) {})));
}

// A transfer past its deadline and a cachestore that is gone both end in a recompute on the
// decode side, with the same output, within the request's time.
// Fault tests: one policy is enough (the fallback does not depend on it), and each waits for
// transfer deadlines.
using HandoffFaultTest = HandoffTest;

TEST_P(HandoffFaultTest, TimeoutAndLostStoreFallBackToRecompute) {
  const SchedulerRequest base = Request("r", kPrompt, SamplingParams::Greedy());
  const Collected mono = MonolithicAndPrefilled(base);
  SchedulerRequest p = base;
  p.handoff = KvHandoff::kPrefill;
  const SchedulerRequest d = DecodeOf(base);
  // A deadline no transfer can meet.
  SchedulerOptions hurried;
  hurried.prefill_chunk = 16;
  hurried.kv_transfer_timeout = absl::Microseconds(1);
  auto impatient = Scheduler::Create(*decode_engine_, hurried, store_.get());
  ASSERT_TRUE(impatient.ok());
  const Collected timed_out = RunAlone(**impatient, d);
  ASSERT_TRUE(timed_out.status.ok()) << timed_out.status;
  EXPECT_EQ(timed_out.kv_source, "recompute:timeout");
  EXPECT_EQ(timed_out.ids, mono.ids);
  impatient->reset();
  // The store goes away.
  service_.reset();
  const absl::Time start = absl::Now();
  const Collected lost = RunAlone(*decode_, d);
  ASSERT_TRUE(lost.status.ok()) << lost.status;
  EXPECT_TRUE(absl::StartsWith(lost.kv_source, "recompute:")) << lost.kv_source;
  EXPECT_EQ(lost.ids, mono.ids);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // Now the decode side skips the store at once, and the prefill side fails fast (not
  // Unavailable: the worker itself is fine).
  const absl::Time again = absl::Now();
  const Collected skipped = RunAlone(*decode_, d);
  EXPECT_EQ(skipped.kv_source, "recompute:store_down");
  EXPECT_EQ(skipped.ids, mono.ids);
  EXPECT_LT(absl::Now() - again, absl::Seconds(1));
  const Collected refused = RunAlone(*prefill_, p);  // waits for its own transfer deadline
  EXPECT_TRUE(absl::IsAborted(refused.status)) << refused.status;
  const absl::Time third = absl::Now();
  const Collected refused_fast = RunAlone(*prefill_, p);
  EXPECT_TRUE(absl::IsAborted(refused_fast.status)) << refused_fast.status;
  EXPECT_LT(absl::Now() - third, absl::Seconds(1));
  EXPECT_EQ(decode_engine_->cache().pool().pages_used(), 0);
}

// A block damaged on its way from the store (the fault schedule flips a bit in the bytes read)
// fails its checksum: the decode side recomputes, same output, and no lease stays open.
TEST_P(HandoffFaultTest, CorruptedBlockFallsBackToRecompute) {
  const SchedulerRequest base = Request("r", kPrompt, SamplingParams::Greedy());
  const Collected mono = MonolithicAndPrefilled(base);
  auto faults = std::make_shared<transport::fault::FaultSchedule>();
  faults->Add({.op = "read_block",
               .after = 0,
               .count = 1,
               .action = transport::fault::FaultAction::kCorrupt});
  auto damaged = Client(faults);
  ASSERT_NE(damaged, nullptr);
  auto decoder = Scheduler::Create(*decode_engine_, options_, damaged.get());
  ASSERT_TRUE(decoder.ok());
  const SchedulerRequest d = DecodeOf(base);
  const Collected dec = RunAlone(**decoder, d);
  ASSERT_TRUE(dec.status.ok()) << dec.status;
  EXPECT_EQ(faults->injected(), 1);
  EXPECT_EQ(dec.kv_source, "recompute:checksum");
  EXPECT_EQ(dec.ids, mono.ids);
  EXPECT_EQ(dec.text, mono.text);
  EXPECT_EQ(decode_engine_->cache().pool().pages_used(), 0);
  // The blocks in the store are intact: an undamaged read takes them.
  const Collected again = RunAlone(*decode_, d);
  EXPECT_EQ(again.kv_source, "store");
  EXPECT_EQ(again.ids, mono.ids);
  auto stats = store_->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->active_reservations(), 0u);
  EXPECT_EQ(stats->active_read_leases(), 0u);
}

// A decode worker whose KV pages are all held by its prefix cache (blocks of earlier requests)
// still restores a hand-off from the store: the cache's unused blocks make room first.
TEST_P(HandoffFaultTest, AFullPrefixCacheMakesRoomForAHandoff) {
  const SchedulerRequest base = Request("r", kPrompt, SamplingParams::Greedy());
  const Collected mono = MonolithicAndPrefilled(base);
  EngineOptions small;
  small.model = Model();
  small.num_threads = 1;
  small.prefault = false;
  small.kv_cache_bytes = 600 * 512;  // 600 pages: 15 blocks of 16 tokens (40 pages each)
  auto engine = Engine::Load(small);
  ASSERT_TRUE(engine.ok()) << engine.status();
  SchedulerOptions o = options_;
  o.enable_prefix_caching = true;
  auto created = Scheduler::Create(**engine, o, store_.get());
  ASSERT_TRUE(created.ok()) << created.status();
  Scheduler& s = **created;
  // Requests of their own fill the pool with cached blocks.
  for (int i = 0; i < 6; ++i) {
    SchedulerRequest filler = Request(absl::StrCat("f", i), kPrompt, SamplingParams::Greedy());
    filler.prompt[1] = 100 + i;  // blocks of their own
    filler.max_tokens = 40;
    filler.ignore_eos = true;
    ASSERT_TRUE(RunAlone(s, filler).status.ok());
  }
  ASSERT_GT(s.stats().prefix_cache_pages, 400);
  const Collected dec = RunAlone(s, DecodeOf(base));
  ASSERT_TRUE(dec.status.ok()) << dec.status;
  EXPECT_EQ(dec.kv_source, "store");
  EXPECT_EQ(dec.ids, mono.ids);
}

// The push of a finished prefill runs off the step loop: while it is slow (the store client
// delays it), another request keeps decoding on the same scheduler; a request cancelled during
// its push ends cancelled once the push is done; nothing is left in the cache.
TEST_P(HandoffFaultTest, PushRunsOffTheStepLoop) {
  auto faults = std::make_shared<transport::fault::FaultSchedule>();
  faults->Add({.op = "put_batch",
               .action = transport::fault::FaultAction::kDelay,
               .delay = absl::Milliseconds(400)});
  auto slow = Client(faults);
  ASSERT_NE(slow, nullptr);
  auto created = Scheduler::Create(*prefill_engine_, options_, slow.get());
  ASSERT_TRUE(created.ok());
  Scheduler& s = **created;

  SchedulerRequest p = Request("p", kPrompt, SamplingParams::Greedy());
  p.handoff = KvHandoff::kPrefill;
  SchedulerRequest other = Request("o", "The little dog ran", SamplingParams::Greedy());
  other.max_tokens = 200;
  other.ignore_eos = true;
  Collected pre, dec;
  ASSERT_TRUE(s.Submit(p, CollectInto(pre)).ok());
  ASSERT_TRUE(s.Submit(other, CollectInto(dec)).ok());
  size_t tokens_at_push = 0;
  for (int i = 0; i < 10000 && !pre.finished; ++i) {
    s.Step();
    if (s.stats().pushing == 1 && tokens_at_push == 0) tokens_at_push = dec.ids.size() + 1;
  }
  ASSERT_TRUE(pre.finished);
  EXPECT_EQ(pre.finish_reason, "prefilled") << pre.status;
  EXPECT_GT(pre.kv_transfer_bytes, 0);
  ASSERT_GT(tokens_at_push, 0u);
  // During the 400 ms push the other request went on decoding.
  EXPECT_GT(dec.ids.size(), tokens_at_push + 5) << dec.ids.size();

  // Cancelled while its KV is written: it ends cancelled after the push.
  SchedulerRequest c = p;
  c.id = "c";
  c.prompt.push_back(c.prompt.back());  // another snapshot than p's
  Collected cancelled;
  ASSERT_TRUE(s.Submit(c, CollectInto(cancelled)).ok());
  for (int i = 0; i < 10000 && s.stats().pushing == 0 && !cancelled.finished; ++i) s.Step();
  ASSERT_EQ(s.stats().pushing, 1);
  s.Cancel("c");
  for (int i = 0; i < 10000 && !cancelled.finished; ++i) s.Step();
  EXPECT_TRUE(absl::IsCancelled(cancelled.status)) << cancelled.status;
  s.Cancel("o");
  for (int i = 0; i < 10000 && s.Step(); ++i) {
  }
  EXPECT_EQ(prefill_engine_->cache().pool().pages_used(), 0);
}

// The fetch of a decode request's KV runs off the step loop too: while it is slow, a running
// request keeps decoding; then the request is restored from the fetched blocks with the
// monolithic output; a request cancelled during its fetch ends cancelled when it is done; only
// the head of the queue fetches ahead.
TEST_P(HandoffFaultTest, FetchRunsOffTheStepLoop) {
  const SchedulerRequest base = Request("r", kPrompt, SamplingParams::Greedy());
  const Collected mono = MonolithicAndPrefilled(base);
  auto faults = std::make_shared<transport::fault::FaultSchedule>();
  faults->Add({.op = "get_batch",
               .action = transport::fault::FaultAction::kDelay,
               .delay = absl::Milliseconds(400)});
  auto slow = Client(faults);
  ASSERT_NE(slow, nullptr);
  SchedulerOptions two_seqs = options_;
  two_seqs.max_num_seqs = 2;
  auto created = Scheduler::Create(*decode_engine_, two_seqs, slow.get());
  ASSERT_TRUE(created.ok());
  Scheduler& s = **created;
  SchedulerRequest other = Request("o", "The little dog ran", SamplingParams::Greedy());
  other.max_tokens = 200;
  other.ignore_eos = true;
  Collected running, dec;
  ASSERT_TRUE(s.Submit(other, CollectInto(running)).ok());
  for (int i = 0; i < 3; ++i) s.Step();
  const SchedulerRequest d = DecodeOf(base);
  ASSERT_TRUE(s.Submit(d, CollectInto(dec)).ok());
  s.Step();
  ASSERT_EQ(s.stats().fetching, 1);
  const size_t before = running.ids.size();
  for (int i = 0; i < 10000 && s.stats().fetching == 1; ++i) s.Step();
  EXPECT_GT(running.ids.size(), before + 5);  // decoding went on during the 400 ms fetch
  for (int i = 0; i < 10000 && !dec.finished; ++i) s.Step();
  ASSERT_TRUE(dec.status.ok()) << dec.status;
  EXPECT_EQ(dec.kv_source, "store");
  EXPECT_EQ(dec.ids, mono.ids);
  EXPECT_EQ(dec.text, mono.text);

  SchedulerRequest c = d;
  c.id = "c";
  Collected cancelled;
  ASSERT_TRUE(s.Submit(c, CollectInto(cancelled)).ok());
  s.Step();
  ASSERT_EQ(s.stats().fetching, 1);
  s.Cancel("c");
  for (int i = 0; i < 10000 && !cancelled.finished; ++i) s.Step();
  EXPECT_TRUE(absl::IsCancelled(cancelled.status)) << cancelled.status;

  // Only the head of the queue fetches ahead (max_num_seqs requests), not all of it.
  std::vector<Collected> queued(3);
  for (int i = 0; i < 3; ++i) {
    SchedulerRequest w = d;
    w.id = absl::StrCat("w", i);
    ASSERT_TRUE(s.Submit(w, CollectInto(queued[i])).ok());
  }
  s.Step();
  EXPECT_EQ(s.stats().fetching, 2);
  for (int i = 0; i < 3; ++i) s.Cancel(absl::StrCat("w", i));
  s.Cancel("o");
  for (int i = 0; i < 10000 && s.Step(); ++i) {
  }
  for (const Collected& q : queued) EXPECT_TRUE(absl::IsCancelled(q.status)) << q.status;
  EXPECT_EQ(decode_engine_->cache().pool().pages_used(), 0);
  // Read leases are released in the background (docs/cachestore.md): none stays for long.
  uint64_t leases = 1;
  for (int i = 0; i < 100 && leases > 0; ++i) {
    auto stats = store_->Stats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    leases = stats->active_read_leases();
    if (leases > 0) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(leases, 0u);
}

INSTANTIATE_TEST_SUITE_P(Full, HandoffFaultTest, ::testing::Values("full"));

// The same on the default model (SmolLM2-135M-Instruct, 30 layers, 3 KV heads), when installed.
class HandoffDefaultModelTest : public HandoffTest {
 protected:
  std::string Model() const override { return "default"; }
  void SetUp() override {
    if (!model::ResolveModelPath("default").ok()) {
      GTEST_SKIP() << "the default model (SmolLM2-135M-Instruct) is not installed";
    }
    HandoffTest::SetUp();
  }
};

TEST_P(HandoffDefaultModelTest, PrefillHereDecodeThereEqualsOneWorker) {
  ExpectDisaggregatedEqualsMonolithic(Request("r", kPrompt, SamplingParams::Greedy()));
}

INSTANTIATE_TEST_SUITE_P(Policies, HandoffDefaultModelTest,
                         ::testing::Values("full", "streaming:sink=4,window=16",
                                           "h2o:budget=24,recent=8", "dmc:mode=free,ratio=3",
                                           "pod:sink=4,window=16", "lococo:slots=16,chunk=4"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param.substr(0, info.param.find(':'));
                         });

TEST(HandoffRefusalTest, NeedsAStoreAndTwoPromptTokens) {
  auto engine = LoadStories();
  ASSERT_NE(engine, nullptr);
  auto scheduler = Scheduler::Create(*engine, {});
  ASSERT_TRUE(scheduler.ok());
  SchedulerRequest r;
  r.prompt = engine->tokenizer().Encode("Once upon a time", true, false);
  r.handoff = KvHandoff::kPrefill;
  EXPECT_TRUE(absl::IsFailedPrecondition((*scheduler)->Submit(r, [](const RequestOutput&) {})));
}

// Two workers (engines) over the stories model with prefix caching, sharing a store whose
// disk tier is a temporary directory.
class PrefixStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (auto* engine : {&engine_a_, &engine_b_, &engine_ref_}) {
      *engine = LoadStories();
      ASSERT_NE(*engine, nullptr);
    }
    ASSERT_NO_FATAL_FAILURE(StartStore());
    options_.enable_prefix_caching = true;
    options_.prefill_chunk = 32;
    a_ = MakeScheduler(*engine_a_, client_a_);
    b_ = MakeScheduler(*engine_b_, client_b_);
    auto ref = Scheduler::Create(*engine_ref_, {});
    ASSERT_TRUE(a_ != nullptr && b_ != nullptr && ref.ok());
    ref_ = std::move(*ref);
  }

  void StartStore() {
    cachestore::ServiceOptions so;
    so.http = false;
    so.store.memory_capacity_bytes = 64 << 20;
    so.store.arena_bytes = 32 << 20;
    so.store.disk_dir = dir_.path();
    so.store.disk_fsync = false;
    auto service = cachestore::StoreService::Start(so);
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = std::move(*service);
    for (auto* client : {&client_a_, &client_b_}) {
      cachestore::ClientOptions co;
      co.port = service_->port();
      auto c = cachestore::StoreClient::Connect(co);
      ASSERT_TRUE(c.ok()) << c.status();
      *client = std::move(*c);
    }
  }

  std::unique_ptr<Scheduler> MakeScheduler(Engine& engine,
                                           std::unique_ptr<cachestore::StoreClient>& client) {
    auto s = Scheduler::Create(engine, options_, client.get());
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  // Steps `s` until the prefix blocks it writes are in the store.
  static void AwaitWrites(Scheduler& s) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (s.stats().prefix_store_writing > 0 && absl::Now() < deadline) {
      s.Step();
      absl::SleepFor(absl::Milliseconds(2));
    }
    ASSERT_EQ(s.stats().prefix_store_writing, 0);
  }

  SchedulerRequest Greedy(const std::string& id, std::vector<int32_t> prompt) {
    SchedulerRequest r;
    r.id = id;
    r.prompt = std::move(prompt);
    r.max_tokens = 24;
    return r;
  }

  // A prompt of 70 tokens, and one that shares its first 50.
  std::vector<int32_t> Prompt() {
    std::vector<int32_t> p =
        engine_a_->tokenizer().Encode(std::string(kPrompt) + " " + kPrompt, true, false);
    p.resize(70);
    return p;
  }
  std::vector<int32_t> Sibling() {
    std::vector<int32_t> p = Prompt();
    p.resize(50);
    for (int32_t id : engine_a_->tokenizer().Encode(" the dog ran to the tree", false, false)) {
      p.push_back(id);
    }
    return p;
  }

  testing::ScopedTempDir dir_;
  SchedulerOptions options_;
  std::unique_ptr<Engine> engine_a_, engine_b_, engine_ref_;
  std::unique_ptr<cachestore::StoreService> service_;
  std::unique_ptr<cachestore::StoreClient> client_a_, client_b_;
  std::unique_ptr<Scheduler> a_, b_, ref_;
};

TEST_F(PrefixStoreTest, BlocksOneWorkerComputedAreTakenByAnother) {
  const Collected cold_a = RunAlone(*ref_, Greedy("a", Prompt()));
  const Collected cold_b = RunAlone(*ref_, Greedy("b", Sibling()));
  ASSERT_FALSE(cold_b.ids.empty());
  const Collected a = RunAlone(*a_, Greedy("a", Prompt()));
  EXPECT_EQ(a.ids, cold_a.ids);
  ASSERT_NO_FATAL_FAILURE(AwaitWrites(*a_));
  // Prompt and output: 70 + 24 tokens computed, 5 whole blocks (the last sampled token's KV is
  // not computed).
  EXPECT_EQ(a_->stats().prefix_store_blocks_written_total, 5);
  EXPECT_EQ(a_->stats().prefix_store_hits_total, 0);

  // Worker b holds nothing: the 3 whole blocks of its 50 shared tokens come from the store.
  const Collected b = RunAlone(*b_, Greedy("b", Sibling()));
  EXPECT_EQ(b.ids, cold_b.ids);
  EXPECT_EQ(b.text, cold_b.text);
  const SchedulerStats sb = b_->stats();
  EXPECT_EQ(sb.prefix_store_hits_total, 48);
  EXPECT_EQ(sb.prefix_store_queries_total,
            16 * ((static_cast<int64_t>(Sibling().size()) - 1) / 16));
  EXPECT_EQ(sb.prefix_cache_hits_total, 0);  // none from its own cache
  ASSERT_NO_FATAL_FAILURE(AwaitWrites(*b_));
  // Only the blocks it computed itself went to the store.
  EXPECT_EQ(b_->stats().prefix_store_blocks_written_total + 3,
            (static_cast<int64_t>(Sibling().size()) + 23) / 16);

  // Another tenant on b: nothing from the store, the same output.
  SchedulerRequest salted = Greedy("a-salted", Prompt());
  salted.cache_salt = 42;
  const Collected s = RunAlone(*b_, salted);
  EXPECT_EQ(s.ids, cold_a.ids);
  EXPECT_EQ(b_->stats().prefix_store_hits_total, 48);
  EXPECT_EQ(b_->stats().prefix_cache_hits_total, 0);

  // A policy that does not share blocks neither writes nor asks.
  SchedulerRequest h2o = Greedy("h2o", Prompt());
  h2o.kv_policy = "h2o:budget=24,recent=8";
  ASSERT_NO_FATAL_FAILURE(AwaitWrites(*b_));  // the salted request's blocks
  const int64_t queries = b_->stats().prefix_store_queries_total;
  const int64_t written = b_->stats().prefix_store_blocks_written_total;
  EXPECT_TRUE(RunAlone(*b_, h2o).status.ok());
  ASSERT_NO_FATAL_FAILURE(AwaitWrites(*b_));
  EXPECT_EQ(b_->stats().prefix_store_queries_total, queries);
  EXPECT_EQ(b_->stats().prefix_store_blocks_written_total, written);
}

TEST_F(PrefixStoreTest, StoredBlocksSurviveARestartOfTheStore) {
  const Collected cold = RunAlone(*ref_, Greedy("b", Sibling()));
  RunAlone(*a_, Greedy("a", Prompt()));
  ASSERT_NO_FATAL_FAILURE(AwaitWrites(*a_));
  ASSERT_EQ(a_->stats().prefix_store_blocks_written_total, 5);
  // Everything goes: both workers' caches and the store's memory.
  a_.reset();
  b_.reset();
  client_a_.reset();
  client_b_.reset();
  service_.reset();
  ASSERT_NO_FATAL_FAILURE(StartStore());
  b_ = MakeScheduler(*engine_b_, client_b_);
  ASSERT_NE(b_, nullptr);
  const Collected b = RunAlone(*b_, Greedy("b", Sibling()));
  EXPECT_EQ(b.ids, cold.ids);
  EXPECT_EQ(b_->stats().prefix_store_hits_total, 48);
}

INSTANTIATE_TEST_SUITE_P(Policies, HandoffTest,
                         ::testing::Values("full", "streaming:sink=4,window=16",
                                           "h2o:budget=24,recent=8", "dmc:mode=free,ratio=3",
                                           "pod:sink=4,window=16", "lococo:slots=16,chunk=4"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param.substr(0, info.param.find(':'));
                         });

}  // namespace
}  // namespace kvasir::worker::service
