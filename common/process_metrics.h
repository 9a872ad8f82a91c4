// What every service's /metrics carries besides its own series: the standard process_* series
// (as the Prometheus client libraries export them: CPU time, resident and virtual memory, start
// time, open and maximum file descriptors, read from /proc) and kvasir_build_info{version,
// service} = 1.
//
//   responder->Send({.body = MetricsText(registry_, "worker")});
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace kvasir {

// The version this binary was built as (the CMake project version).
std::string_view BuildVersion();

// The process_* families of this process and kvasir_build_info for `service`.
std::vector<prometheus::MetricFamily> ProcessMetricFamilies(std::string_view service);

// `registry`'s series and the process ones, in the Prometheus text format.
std::string MetricsText(const prometheus::Registry& registry, std::string_view service);

}  // namespace kvasir
