#include "coordinator/metrics.h"

namespace kvasir::coordinator {

namespace {

// vLLM's buckets, with finer steps at the low end for small models on CPUs.
const prometheus::Histogram::BucketBoundaries kTtftBuckets = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0};
const prometheus::Histogram::BucketBoundaries kItlBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5};
const prometheus::Histogram::BucketBoundaries kTransferBuckets = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0};
const prometheus::Histogram::BucketBoundaries kE2eBuckets = {
    0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0};

}  // namespace

CoordinatorMetrics::CoordinatorMetrics(prometheus::Registry& registry)
    : success_(prometheus::BuildCounter()
                   .Name("kvasir_request_success_total")
                   .Help("Requests that completed, by finish reason.")
                   .Register(registry)),
      failure_(prometheus::BuildCounter()
                   .Name("kvasir_request_failure_total")
                   .Help("Requests that ended with an error (or a client that went away), by kind.")
                   .Register(registry)),
      ttft_(prometheus::BuildHistogram()
                .Name("kvasir_time_to_first_token_seconds")
                .Help("Time from the request's arrival to its first generated token.")
                .Register(registry)
                .Add({}, kTtftBuckets)),
      itl_(prometheus::BuildHistogram()
               .Name("kvasir_inter_token_latency_seconds")
               .Help("Time between two generated tokens of a request.")
               .Register(registry)
               .Add({}, kItlBuckets)),
      e2e_(prometheus::BuildHistogram()
               .Name("kvasir_e2e_request_latency_seconds")
               .Help("Time from the request's arrival to its last token.")
               .Register(registry)
               .Add({}, kE2eBuckets)),
      prompt_tokens_(prometheus::BuildCounter()
                         .Name("kvasir_prompt_tokens_total")
                         .Help("Prompt tokens of completed requests.")
                         .Register(registry)
                         .Add({})),
      generation_tokens_(prometheus::BuildCounter()
                             .Name("kvasir_generation_tokens_total")
                             .Help("Tokens generated and sent to clients.")
                             .Register(registry)
                             .Add({})),
      running_(prometheus::BuildGauge()
                   .Name("kvasir_num_requests_running")
                   .Help("Requests in the workers' batches (from their last heartbeats).")
                   .Register(registry)
                   .Add({})),
      waiting_(prometheus::BuildGauge()
                   .Name("kvasir_num_requests_waiting")
                   .Help("Requests queued on the workers (from their last heartbeats).")
                   .Register(registry)
                   .Add({})),
      workers_alive_(prometheus::BuildGauge()
                         .Name("kvasir_num_workers")
                         .Help("Workers registered and alive.")
                         .Register(registry)
                         .Add({})),
      worker_deaths_(prometheus::BuildCounter()
                         .Name("kvasir_worker_deaths_total")
                         .Help("Workers marked dead (missed heartbeats or a broken connection).")
                         .Register(registry)
                         .Add({})),
      kv_usage_(prometheus::BuildGauge()
                    .Name("kvasir_kv_cache_usage_perc")
                    .Help("Fraction of each worker's KV cache pages in use (1 = full).")
                    .Register(registry)),
      restarts_(prometheus::BuildCounter()
                    .Name("kvasir_process_restarts_total")
                    .Help("Processes of the cluster restarted by the supervisor (kvasir up) "
                          "after they died, by process.")
                    .Register(registry)),
      fallbacks_(prometheus::BuildCounter()
                     .Name("kvasir_disagg_fallbacks_total")
                     .Help("Disaggregated requests that left the planned path (prefill worker, "
                           "then KV from the store), by reason.")
                     .Register(registry)),
      resumes_(prometheus::BuildCounter()
                   .Name("kvasir_request_resumes_total")
                   .Help("Requests resumed on another worker from the tokens they had delivered "
                         "(their worker was lost or drained), by reason.")
                   .Register(registry)),
      kv_transfer_bytes_(prometheus::BuildCounter()
                             .Name("kvasir_kv_transfer_bytes_total")
                             .Help("KV block bytes written to and read from the cachestore for "
                                   "disaggregated requests.")
                             .Register(registry)
                             .Add({})),
      kv_transfer_seconds_(prometheus::BuildHistogram()
                               .Name("kvasir_kv_transfer_seconds")
                               .Help("Time of one KV push to (prefill worker) or pull from (decode "
                                     "worker) the cachestore.")
                               .Register(registry)
                               .Add({}, kTransferBuckets)),
      kv_push_wait_seconds_(
          prometheus::BuildHistogram()
              .Name("kvasir_kv_push_wait_seconds")
              .Help("Time a prefill hand-off waits, after the prompt's computation ended, for its "
                    "KV push to finish (the part of the push that streaming by layers does not "
                    "hide behind the computation).")
              .Register(registry)
              .Add({}, kTransferBuckets)),
      router_prompt_blocks_(prometheus::BuildCounter()
                                .Name("kvasir_router_prompt_blocks_total")
                                .Help("Whole 16-token prompt blocks of routed requests whose KV "
                                      "policy caches prefixes.")
                                .Register(registry)
                                .Add({})),
      router_cached_blocks_(prometheus::BuildCounter()
                                .Name("kvasir_router_cached_blocks_total")
                                .Help("Of those, the blocks the chosen worker held in its prefix "
                                      "cache when the request was routed.")
                                .Register(registry)
                                .Add({})),
      router_stored_blocks_(prometheus::BuildCounter()
                                .Name("kvasir_router_stored_blocks_total")
                                .Help("Of those, the blocks after the worker's own that the "
                                      "cachestore held (the prefix cache's second tier).")
                                .Register(registry)
                                .Add({})),
      workers_by_role_(prometheus::BuildGauge()
                           .Name("kvasir_num_workers_by_role")
                           .Help("Workers registered and alive, by role (both, prefill, decode).")
                           .Register(registry)) {}

void CoordinatorMetrics::DisaggFallback(const std::string& reason) {
  fallbacks_.Add({{"reason", reason}}).Increment();
}

void CoordinatorMetrics::RequestResumed(const std::string& reason) {
  resumes_.Add({{"reason", reason}}).Increment();
}

void CoordinatorMetrics::SetProcessRestarts(const std::string& process, int64_t total) {
  absl::MutexLock lock(&mu_);
  prometheus::Counter& counter = restarts_.Add({{"process", process}});
  int64_t& seen = restarts_seen_[process];
  if (total > seen) {
    counter.Increment(static_cast<double>(total - seen));
    seen = total;
  }
}

void CoordinatorMetrics::RequestSucceeded(const std::string& finished_reason) {
  success_.Add({{"finished_reason", finished_reason}}).Increment();
}

void CoordinatorMetrics::RequestFailed(const std::string& reason) {
  failure_.Add({{"reason", reason}}).Increment();
}

void CoordinatorMetrics::UpdateWorkers(const std::vector<WorkerView>& workers, int64_t deaths) {
  absl::MutexLock lock(&mu_);
  double running = 0, waiting = 0;
  absl::flat_hash_map<std::string, prometheus::Gauge*> live;
  for (const WorkerView& w : workers) {
    running += w.load.running();
    waiting += w.load.waiting();
    prometheus::Gauge* gauge;
    auto it = kv_gauges_.find(w.name);
    if (it != kv_gauges_.end()) {
      gauge = it->second;
      kv_gauges_.erase(it);
    } else {
      gauge = &kv_usage_.Add({{"worker", w.name}});
    }
    gauge->Set(w.load.kv_usage());
    live[w.name] = gauge;
  }
  for (auto& [name, gauge] : kv_gauges_) kv_usage_.Remove(gauge);  // workers that are gone
  kv_gauges_ = std::move(live);
  running_.Set(running);
  waiting_.Set(waiting);
  workers_alive_.Set(static_cast<double>(workers.size()));
  for (const char* role : {"both", "prefill", "decode"}) {
    double n = 0;
    for (const WorkerView& w : workers) n += w.role == role ? 1 : 0;
    workers_by_role_.Add({{"role", role}}).Set(n);
  }
  if (deaths > deaths_seen_) {
    worker_deaths_.Increment(static_cast<double>(deaths - deaths_seen_));
    deaths_seen_ = deaths;
  }
}

}  // namespace kvasir::coordinator
