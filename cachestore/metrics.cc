// Cachestore metrics (see metrics.h).
#include "cachestore/metrics.h"

#include <iterator>

namespace kvasir::cachestore {
namespace {

prometheus::Family<prometheus::Counter>& CounterFamily(prometheus::Registry& r, const char* name,
                                                       const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r);
}

prometheus::Family<prometheus::Gauge>& GaugeFamily(prometheus::Registry& r, const char* name,
                                                   const char* help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r);
}

// Adds the difference between two monotone counters (never negative).
void Advance(prometheus::Counter& counter, uint64_t now, uint64_t before) {
  if (now > before) counter.Increment(static_cast<double>(now - before));
}

}  // namespace

StoreMetrics::StoreMetrics(prometheus::Registry& r)
    : get_hits_(CounterFamily(r, "kvasir_cachestore_hits_total",
                              "Blocks found: get (per block) or lookup (per call)")
                    .Add({{"op", "get"}})),
      get_misses_(CounterFamily(r, "kvasir_cachestore_misses_total",
                                "Blocks not found: get (per block) or lookup (per call)")
                      .Add({{"op", "get"}})),
      lookup_hits_(CounterFamily(r, "kvasir_cachestore_hits_total", "").Add({{"op", "lookup"}})),
      lookup_misses_(
          CounterFamily(r, "kvasir_cachestore_misses_total", "").Add({{"op", "lookup"}})),
      memory_bytes_(GaugeFamily(r, "kvasir_cachestore_stored_bytes", "Bytes of committed blocks")
                        .Add({{"tier", "memory"}})),
      disk_bytes_(GaugeFamily(r, "kvasir_cachestore_stored_bytes", "").Add({{"tier", "disk"}})),
      memory_blocks_(GaugeFamily(r, "kvasir_cachestore_stored_blocks", "Committed blocks")
                         .Add({{"tier", "memory"}})),
      disk_blocks_(GaugeFamily(r, "kvasir_cachestore_stored_blocks", "").Add({{"tier", "disk"}})),
      memory_capacity_(
          GaugeFamily(r, "kvasir_cachestore_capacity_bytes", "Capacity of a tier (0: unlimited)")
              .Add({{"tier", "memory"}})),
      disk_capacity_(
          GaugeFamily(r, "kvasir_cachestore_capacity_bytes", "").Add({{"tier", "disk"}})),
      reserved_bytes_(GaugeFamily(r, "kvasir_cachestore_reserved_bytes",
                                  "Memory held by reservations (and quarantined after expiry)")
                          .Add({})),
      memory_evictions_(
          CounterFamily(r, "kvasir_cachestore_evictions_total", "Blocks evicted from a tier (LRU)")
              .Add({{"tier", "memory"}})),
      disk_evictions_(
          CounterFamily(r, "kvasir_cachestore_evictions_total", "").Add({{"tier", "disk"}})),
      bytes_in_(CounterFamily(r, "kvasir_cachestore_transferred_bytes_total",
                              "Block bytes committed (in) and granted to readers (out)")
                    .Add({{"direction", "in"}})),
      bytes_out_(CounterFamily(r, "kvasir_cachestore_transferred_bytes_total", "")
                     .Add({{"direction", "out"}})),
      in_rate_(GaugeFamily(r, "kvasir_cachestore_throughput_bytes_per_second",
                           "Block bytes per second in and out over the last second")
                   .Add({{"direction", "in"}})),
      out_rate_(GaugeFamily(r, "kvasir_cachestore_throughput_bytes_per_second", "")
                    .Add({{"direction", "out"}})),
      reservation_expiries_(CounterFamily(r, "kvasir_cachestore_lease_expiries_total",
                                          "Leases reclaimed after their TTL")
                                .Add({{"kind", "reservation"}})),
      read_expiries_(
          CounterFamily(r, "kvasir_cachestore_lease_expiries_total", "").Add({{"kind", "read"}})),
      checksum_failures_(CounterFamily(r, "kvasir_cachestore_checksum_failures_total",
                                       "Blocks refused or dropped for a checksum mismatch")
                             .Add({})),
      disk_loads_(CounterFamily(r, "kvasir_cachestore_disk_loads_total",
                                "Blocks read back from the disk tier into memory")
                      .Add({})),
      reservations_(GaugeFamily(r, "kvasir_cachestore_leases", "Leases held now")
                        .Add({{"kind", "reservation"}})),
      read_leases_(GaugeFamily(r, "kvasir_cachestore_leases", "").Add({{"kind", "read"}})),
      pinned_blocks_(
          GaugeFamily(r, "kvasir_cachestore_pinned_blocks", "Blocks pinned now").Add({})),
      durations_(prometheus::BuildHistogram()
                     .Name("kvasir_cachestore_request_duration_seconds")
                     .Help("Time to serve a control-plane request, by method")
                     .Register(r)) {
  const prometheus::Histogram::BucketBoundaries buckets = {
      10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
      10e-3, 25e-3, 50e-3, 0.1,    0.25,   0.5,    1.0,  2.5};
  for (std::string_view op : kMetricOps) {
    op_durations_.push_back(&durations_.Add({{"op", std::string(op)}}, buckets));
  }
}

void StoreMetrics::Update(const StoreStats& s) {
  absl::MutexLock lock(&mu_);
  Advance(get_hits_, s.hits, last_.hits);
  Advance(get_misses_, s.misses, last_.misses);
  Advance(lookup_hits_, s.lookup_hits, last_.lookup_hits);
  Advance(lookup_misses_, s.lookup_misses, last_.lookup_misses);
  Advance(memory_evictions_, s.evictions_memory, last_.evictions_memory);
  Advance(disk_evictions_, s.evictions_disk, last_.evictions_disk);
  Advance(bytes_in_, s.bytes_in, last_.bytes_in);
  Advance(bytes_out_, s.bytes_out, last_.bytes_out);
  Advance(reservation_expiries_, s.expiries_reservation, last_.expiries_reservation);
  Advance(read_expiries_, s.expiries_read, last_.expiries_read);
  Advance(checksum_failures_, s.checksum_failures, last_.checksum_failures);
  Advance(disk_loads_, s.disk_loads, last_.disk_loads);
  memory_bytes_.Set(static_cast<double>(s.memory_bytes));
  disk_bytes_.Set(static_cast<double>(s.disk_bytes));
  memory_blocks_.Set(static_cast<double>(s.memory_blocks));
  disk_blocks_.Set(static_cast<double>(s.disk_blocks));
  memory_capacity_.Set(static_cast<double>(s.memory_capacity_bytes));
  disk_capacity_.Set(static_cast<double>(s.disk_capacity_bytes));
  reserved_bytes_.Set(static_cast<double>(s.reserved_bytes));
  reservations_.Set(static_cast<double>(s.active_reservations));
  read_leases_.Set(static_cast<double>(s.active_read_leases));
  pinned_blocks_.Set(static_cast<double>(s.pinned_blocks));
  last_ = s;
}

void StoreMetrics::UpdateRates(const StoreStats& s, absl::Time now) {
  Update(s);
  absl::MutexLock lock(&mu_);
  if (last_rate_time_ != absl::InfinitePast() && now > last_rate_time_) {
    const double seconds = absl::ToDoubleSeconds(now - last_rate_time_);
    in_rate_.Set(static_cast<double>(s.bytes_in - last_rate_stats_.bytes_in) / seconds);
    out_rate_.Set(static_cast<double>(s.bytes_out - last_rate_stats_.bytes_out) / seconds);
  }
  last_rate_stats_ = s;
  last_rate_time_ = now;
}

void StoreMetrics::ObserveRequest(std::string_view op, absl::Duration duration) {
  for (size_t i = 0; i < std::size(kMetricOps); ++i) {
    if (kMetricOps[i] == op) {
      op_durations_[i]->Observe(absl::ToDoubleSeconds(duration));
      return;
    }
  }
}

}  // namespace kvasir::cachestore
