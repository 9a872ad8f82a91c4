// A STREAM-style probe of the machine's memory read bandwidth, the bound of batch-1 decode: the
// bytes of weights read per token divided by this figure is the fastest a decode step can be.
// When the weights fit the last-level cache (a 480 MiB L3 holds a small model whole), the bound
// is that cache's read rate instead, measured the same way over a buffer of the weights' size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/base/thread_pool.h"

namespace kvasir::kernels::cpu {

// Reads a buffer of `bytes` (default 256 MiB, far larger than the caches of most machines) with
// every thread of `pool`, each its own slice, a few times, and returns the best read rate in GB/s
// (1 GB = 1e9 bytes). Allocates and touches the buffer first (not timed). Takes about a second.
// A buffer that fits the last-level cache measures that cache's read rate instead.
double MeasureMemoryReadGBps(ThreadPool& pool, size_t bytes = size_t{256} << 20);

// The size of the largest (last-level) data or unified cache of CPU 0 in bytes, from
// `sysfs_cpu0_cache` (normally /sys/devices/system/cpu/cpu0/cache: index*/level, type, size);
// 0 when unknown. On most x86 machines that is the L3, shared by the cores of the socket.
int64_t LastLevelCacheBytes(
    const std::string& sysfs_cpu0_cache = "/sys/devices/system/cpu/cpu0/cache");

}  // namespace kvasir::kernels::cpu
