// The worker's Prometheus metrics (served on its own /metrics): scheduler gauges and token
// counters, names mirroring vLLM's with the kvasir_ prefix. Values are refreshed from the
// scheduler's stats when scraped (Update), so the serving path touches no metric.
#pragma once

#include <string>

#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "worker/service/scheduler.h"

namespace kvasir::worker::service {

class WorkerMetrics {
 public:
  // Registers the families in `registry`, which must outlive this object.
  WorkerMetrics(prometheus::Registry& registry, const std::string& worker_name);

  // Sets the gauges and advances the counters to `stats`. Safe from any thread.
  void Update(const SchedulerStats& stats);

 private:
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Gauge& kv_usage_;
  prometheus::Family<prometheus::Gauge>& kv_bytes_;
  prometheus::Family<prometheus::Gauge>& kv_full_bytes_;
  prometheus::Family<prometheus::Counter>& kv_byte_steps_;
  prometheus::Family<prometheus::Counter>& kv_full_byte_steps_;
  prometheus::Counter& preemptions_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Counter& steps_;
  prometheus::Gauge& target_itl_;
  prometheus::Gauge& step_estimate_;
  prometheus::Gauge& step_margin_;
  prometheus::Counter& steps_over_target_;
  prometheus::Family<prometheus::Counter>& prefix_queries_;  // {tier="local"|"store"}
  prometheus::Family<prometheus::Counter>& prefix_hits_;
  prometheus::Family<prometheus::Counter>& store_writes_;  // {result="written"|"skipped"}
  absl::Mutex mu_;
  SchedulerStats last_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvasir::worker::service
