// The coordinator's Prometheus metrics, served on its /metrics. Names mirror vLLM's with the
// kvasir_ prefix (kvasir_time_to_first_token_seconds for vllm:time_to_first_token_seconds, ...);
// durations in seconds, counters end in _total, labels stay low-cardinality (a finish reason,
// an error kind, a worker name).
#pragma once

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/registry.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace kvasir::coordinator {

class CoordinatorMetrics {
 public:
  // Registers the families in `registry`, which must outlive this object.
  explicit CoordinatorMetrics(prometheus::Registry& registry);

  // A request that completed: finished_reason "stop" or "length".
  void RequestSucceeded(const std::string& finished_reason);
  // A request that failed, by kind: "invalid_request", "unauthorized", "model_not_found",
  // "context_length_exceeded", "body_too_large", "rate_limited", "unavailable", "timeout",
  // "cancelled", "internal".
  void RequestFailed(const std::string& reason);

  prometheus::Histogram& time_to_first_token() { return ttft_; }
  prometheus::Histogram& inter_token_latency() { return itl_; }
  prometheus::Histogram& e2e_latency() { return e2e_; }
  prometheus::Counter& prompt_tokens() { return prompt_tokens_; }
  prometheus::Counter& generation_tokens() { return generation_tokens_; }

  // kvasir_disagg_fallbacks_total{reason}: a disaggregated request that did not take the planned
  // path (no prefill worker, the prefill failed, the decode worker recomputed the prompt because
  // the KV was not found, failed its checksum, timed out, ...).
  void DisaggFallback(const std::string& reason);
  // kvasir_request_resumes_total{reason}: a request that went on, on another worker, from the
  // tokens it had delivered: its worker was lost mid-stream ("worker_lost") or drained
  // ("drained").
  void RequestResumed(const std::string& reason);
  // kvasir_kv_transfer_bytes_total: KV block bytes written to and read from the cachestore for
  // disaggregated requests.
  prometheus::Counter& kv_transfer_bytes() { return kv_transfer_bytes_; }
  // kvasir_kv_transfer_seconds: the time of one KV push (prefill worker) or pull (decode worker).
  prometheus::Histogram& kv_transfer_seconds() { return kv_transfer_seconds_; }
  // kvasir_kv_push_wait_seconds: from the end of a prefill's computation to the end of its push.
  prometheus::Histogram& kv_push_wait_seconds() { return kv_push_wait_seconds_; }
  // The router: whole prompt blocks of routed requests under a policy that caches them, and how
  // many of them the chosen worker held (its prefix cache, from its events).
  prometheus::Counter& router_prompt_blocks() { return router_prompt_blocks_; }
  prometheus::Counter& router_cached_blocks() { return router_cached_blocks_; }
  prometheus::Counter& router_stored_blocks() { return router_stored_blocks_; }

  // kvasir_process_restarts_total{process}: the supervisor's total for one process (a counter:
  // it only moves up, by the difference to the last total seen).
  void SetProcessRestarts(const std::string& process, int64_t total);

  // Refreshes the gauges from the registry (before a scrape).
  void UpdateWorkers(const std::vector<WorkerView>& workers, int64_t deaths);

 private:
  prometheus::Family<prometheus::Counter>& success_;
  prometheus::Family<prometheus::Counter>& failure_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& e2e_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Gauge& workers_alive_;
  prometheus::Counter& worker_deaths_;
  prometheus::Family<prometheus::Gauge>& kv_usage_;
  prometheus::Family<prometheus::Counter>& restarts_;
  prometheus::Family<prometheus::Counter>& fallbacks_;
  prometheus::Family<prometheus::Counter>& resumes_;
  prometheus::Counter& kv_transfer_bytes_;
  prometheus::Histogram& kv_transfer_seconds_;
  prometheus::Histogram& kv_push_wait_seconds_;
  prometheus::Counter& router_prompt_blocks_;
  prometheus::Counter& router_cached_blocks_;
  prometheus::Counter& router_stored_blocks_;
  prometheus::Family<prometheus::Gauge>& workers_by_role_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, int64_t> restarts_seen_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, prometheus::Gauge*> kv_gauges_ ABSL_GUARDED_BY(mu_);
  int64_t deaths_seen_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvasir::coordinator
