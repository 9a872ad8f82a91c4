#include "worker/service/metrics.h"

namespace kvasir::worker::service {

WorkerMetrics::WorkerMetrics(prometheus::Registry& registry, const std::string& worker_name)
    : running_(prometheus::BuildGauge()
                   .Name("kvasir_num_requests_running")
                   .Help("Requests admitted to the batch (prefill or decode) on this worker.")
                   .Register(registry)
                   .Add({})),
      waiting_(prometheus::BuildGauge()
                   .Name("kvasir_num_requests_waiting")
                   .Help("Requests queued on this worker, preempted ones included.")
                   .Register(registry)
                   .Add({})),
      kv_usage_(prometheus::BuildGauge()
                    .Name("kvasir_kv_cache_usage_perc")
                    .Help("Fraction of the KV cache pages in use (1 = full).")
                    .Register(registry)
                    .Add({{"worker", worker_name}})),
      kv_bytes_(prometheus::BuildGauge()
                    .Name("kvasir_kv_cache_bytes")
                    .Help("KV bytes the running sequences hold now, by KV policy kind.")
                    .Register(registry)),
      kv_full_bytes_(prometheus::BuildGauge()
                         .Name("kvasir_kv_cache_full_bytes")
                         .Help("KV bytes a full cache would hold for the same running sequences, "
                               "by KV policy kind (bytes / full bytes: the compression ratio).")
                         .Register(registry)),
      kv_byte_steps_(prometheus::BuildCounter()
                         .Name("kvasir_kv_cache_byte_steps_total")
                         .Help("KV bytes held by the running sequences, summed over every step, "
                               "by KV policy kind.")
                         .Register(registry)),
      kv_full_byte_steps_(prometheus::BuildCounter()
                              .Name("kvasir_kv_cache_full_byte_steps_total")
                              .Help("What a full cache would have held, summed over the same "
                                    "steps: rate(byte_steps) / rate(full_byte_steps) is the "
                                    "compression ratio over a window.")
                              .Register(registry)),
      preemptions_(prometheus::BuildCounter()
                       .Name("kvasir_num_preemptions_total")
                       .Help("Requests preempted (KV memory full) and later recomputed.")
                       .Register(registry)
                       .Add({})),
      prompt_tokens_(prometheus::BuildCounter()
                         .Name("kvasir_prompt_tokens_total")
                         .Help("Prompt tokens computed (recomputation after preemption included).")
                         .Register(registry)
                         .Add({})),
      generation_tokens_(prometheus::BuildCounter()
                             .Name("kvasir_generation_tokens_total")
                             .Help("Tokens sampled.")
                             .Register(registry)
                             .Add({})),
      steps_(prometheus::BuildCounter()
                 .Name("kvasir_scheduler_steps_total")
                 .Help("Forward steps run by the scheduler.")
                 .Register(registry)
                 .Add({})),
      target_itl_(prometheus::BuildGauge()
                      .Name("kvasir_scheduler_target_itl_seconds")
                      .Help("The inter-token latency target steps are sized to (0: none).")
                      .Register(registry)
                      .Add({})),
      step_estimate_(prometheus::BuildGauge()
                         .Name("kvasir_scheduler_step_cost_estimate_seconds")
                         .Help("The step-time model's estimate of the last step, before it ran.")
                         .Register(registry)
                         .Add({})),
      step_margin_(prometheus::BuildGauge()
                       .Name("kvasir_scheduler_step_cost_margin")
                       .Help("How much sized steps overran the step-time model (a high quantile "
                             "of observed / estimated time, >= 1); prefill is sized to the target "
                             "divided by it.")
                       .Register(registry)
                       .Add({})),
      steps_over_target_(prometheus::BuildCounter()
                             .Name("kvasir_scheduler_steps_over_target_total")
                             .Help("Steps with decoding sequences that took longer than the "
                                   "inter-token latency target.")
                             .Register(registry)
                             .Add({})),
      prefix_queries_(prometheus::BuildCounter()
                          .Name("kvasir_prefix_cache_queries_total")
                          .Help("Prompt tokens looked up in the prefix cache (requests whose KV "
                                "policy shares blocks), by tier: local (every prompt token), "
                                "store (the tokens not found locally that the store was asked "
                                "for).")
                          .Register(registry)),
      prefix_hits_(prometheus::BuildCounter()
                       .Name("kvasir_prefix_cache_hits_total")
                       .Help("Prompt tokens found in the prefix cache (their KV taken, not "
                             "computed), by tier.")
                       .Register(registry)),
      store_writes_(prometheus::BuildCounter()
                        .Name("kvasir_prefix_cache_store_writes_total")
                        .Help("Prefix-cache blocks written to the cachestore (result=written), "
                              "or not (result=skipped: the queue was full, the store failed).")
                        .Register(registry)) {
  // Every series exists from the start (0), so that rates work from the first sample.
  for (const char* tier : {"local", "store"}) {
    prefix_queries_.Add({{"tier", tier}});
    prefix_hits_.Add({{"tier", tier}});
  }
  for (const char* result : {"written", "skipped"}) store_writes_.Add({{"result", result}});
}

void WorkerMetrics::Update(const SchedulerStats& stats) {
  absl::MutexLock lock(&mu_);
  running_.Set(stats.running);
  waiting_.Set(stats.waiting);
  kv_usage_.Set(stats.kv_usage());
  for (const auto& [kind, p] : stats.kv_by_policy) {
    kv_bytes_.Add({{"policy", kind}}).Set(static_cast<double>(p.bytes));
    kv_full_bytes_.Add({{"policy", kind}}).Set(static_cast<double>(p.full_bytes));
    auto last = last_.kv_by_policy.find(kind);
    const PolicyKvBytes before = last != last_.kv_by_policy.end() ? last->second : PolicyKvBytes();
    kv_byte_steps_.Add({{"policy", kind}}).Increment(p.byte_steps - before.byte_steps);
    kv_full_byte_steps_.Add({{"policy", kind}})
        .Increment(p.full_byte_steps - before.full_byte_steps);
  }
  preemptions_.Increment(static_cast<double>(stats.preemptions_total - last_.preemptions_total));
  prompt_tokens_.Increment(
      static_cast<double>(stats.prompt_tokens_total - last_.prompt_tokens_total));
  generation_tokens_.Increment(
      static_cast<double>(stats.generation_tokens_total - last_.generation_tokens_total));
  steps_.Increment(static_cast<double>(stats.steps_total - last_.steps_total));
  target_itl_.Set(stats.target_itl_seconds);
  step_estimate_.Set(stats.step_cost_estimate_seconds);
  step_margin_.Set(stats.step_cost_margin);
  steps_over_target_.Increment(
      static_cast<double>(stats.steps_over_target_total - last_.steps_over_target_total));
  auto add = [](prometheus::Family<prometheus::Counter>& family, const char* key, const char* value,
                int64_t now, int64_t before) {
    family.Add({{key, value}}).Increment(static_cast<double>(now - before));
  };
  add(prefix_queries_, "tier", "local", stats.prefix_cache_queries_total,
      last_.prefix_cache_queries_total);
  add(prefix_hits_, "tier", "local", stats.prefix_cache_hits_total, last_.prefix_cache_hits_total);
  add(prefix_queries_, "tier", "store", stats.prefix_store_queries_total,
      last_.prefix_store_queries_total);
  add(prefix_hits_, "tier", "store", stats.prefix_store_hits_total, last_.prefix_store_hits_total);
  add(store_writes_, "result", "written", stats.prefix_store_blocks_written_total,
      last_.prefix_store_blocks_written_total);
  add(store_writes_, "result", "skipped", stats.prefix_store_blocks_skipped_total,
      last_.prefix_store_blocks_skipped_total);
  last_ = stats;
}

}  // namespace kvasir::worker::service
