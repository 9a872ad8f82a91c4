// The cachestore's Prometheus metrics, all named kvasir_cachestore_*: hits and misses, bytes and
// blocks stored by tier, evictions, bytes moved in and out (counters, and a bytes-per-second gauge
// over the last second), lease expiries, checksum failures, request durations. The store keeps
// plain counters (StoreStats); Update mirrors them into the registry, so the two never disagree.
#pragma once

#include <string>
#include <string_view>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachestore/store.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace kvasir::cachestore {

// The RPC methods whose durations are recorded (label `op`).
inline constexpr std::string_view kMetricOps[] = {"lookup",  "reserve",    "write",     "commit",
                                                  "abort",   "put_inline", "open_read", "read",
                                                  "release", "pin",        "unpin",     "remove"};

class StoreMetrics {
 public:
  // Registers the families in `registry`, which must outlive this object.
  explicit StoreMetrics(prometheus::Registry& registry);

  // Brings counters and gauges up to `stats` (counters advance by the difference since the last
  // call). Safe from any thread.
  void Update(const StoreStats& stats);
  // Also sets the bytes-per-second gauges from the bytes moved since the previous call (the
  // service's one-second timer calls it).
  void UpdateRates(const StoreStats& stats, absl::Time now);
  // Records one request's duration; `op` is one of kMetricOps (others are ignored).
  void ObserveRequest(std::string_view op, absl::Duration duration);

 private:
  absl::Mutex mu_;
  StoreStats last_ ABSL_GUARDED_BY(mu_);
  StoreStats last_rate_stats_ ABSL_GUARDED_BY(mu_);
  absl::Time last_rate_time_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();

  prometheus::Counter &get_hits_, &get_misses_, &lookup_hits_, &lookup_misses_;
  prometheus::Gauge &memory_bytes_, &disk_bytes_, &memory_blocks_, &disk_blocks_;
  prometheus::Gauge &memory_capacity_, &disk_capacity_, &reserved_bytes_;
  prometheus::Counter &memory_evictions_, &disk_evictions_;
  prometheus::Counter &bytes_in_, &bytes_out_;
  prometheus::Gauge &in_rate_, &out_rate_;
  prometheus::Counter &reservation_expiries_, &read_expiries_;
  prometheus::Counter &checksum_failures_, &disk_loads_;
  prometheus::Gauge &reservations_, &read_leases_, &pinned_blocks_;
  prometheus::Family<prometheus::Histogram>& durations_;
  std::vector<prometheus::Histogram*> op_durations_;  // [size of kMetricOps]
};

}  // namespace kvasir::cachestore
