// A STREAM-style probe of the machine's memory read bandwidth, the bound of batch-1 decode: the
// bytes of weights read per token divided by this figure is the fastest a decode step can be.
#pragma once

#include "common/base/thread_pool.h"

namespace kvasir::kernels::cpu {

// Reads a 256 MiB buffer (far larger than the caches) with every thread of `pool`, each its own
// slice, a few times, and returns the best read rate in GB/s (1 GB = 1e9 bytes). Allocates and
// touches the buffer first (not timed). Takes about a second.
double MeasureMemoryReadGBps(ThreadPool& pool);

}  // namespace kvasir::kernels::cpu
