// Small statistics helpers for benchmarks: percentiles of measured samples.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace kvasir {

// The p-quantile (p in [0, 1]) of `values` by the nearest-rank rule on the sorted samples: the
// sample at index floor(p * n), clamped to the last one. Sorts `values`. 0 when there are none.
inline double Percentile(std::vector<double>& values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t index = std::min(values.size() - 1, static_cast<size_t>(p * values.size()));
  return values[index];
}

}  // namespace kvasir
