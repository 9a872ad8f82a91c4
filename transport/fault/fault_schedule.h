// A schedule of injected faults, shared by the fault decorators (fault_decorators.h). Each
// operation a decorator sees is named ("put", "get", "send", "connect", "call:<method>",
// "stream:<method>", "all_reduce", "all_gather", "broadcast", "barrier") and counted by every rule
// it matches; the first rule, in order, that is due decides what happens to it:
//   kDrop  - the operation is not performed and the caller sees what a lost message looks like:
//            it waits out its deadline (or the rule's delay where there is none) and gets
//            DeadlineExceeded;
//   kDelay - the operation is performed after `delay` (if that passes the deadline: as kDrop);
//   kFail  - the operation is not performed and `error` is returned at once;
//   kCorrupt - the operation is performed, then the bytes it delivered are damaged (CorruptBytes):
//            gets, and the reads that consult a schedule themselves (the cachestore client's
//            "read_block"); any other operation passes untouched.
//
//   auto schedule = std::make_shared<FaultSchedule>();
//   schedule->Add({.op = "put", .after = 2, .count = 1, .action = FaultAction::kFail});
//   FaultBulkTransport faulty(real_transport, schedule);  // the 3rd put fails, others pass
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace kvasir::transport::fault {

enum class FaultAction { kNone, kDrop, kDelay, kFail, kCorrupt };

struct FaultRule {
  std::string op = "*";      // operation name; "*" matches all, a trailing '*' matches a prefix
  int64_t after = 0;         // the first `after` matching operations are not this rule's
  int64_t count = -1;        // then fire this many times (-1: forever)
  double probability = 1.0;  // chance of firing once eligible (seeded, reproducible)
  FaultAction action = FaultAction::kFail;
  absl::Duration delay = absl::ZeroDuration();
  absl::Status error = absl::UnavailableError("injected fault");
};

struct FaultDecision {
  FaultAction action = FaultAction::kNone;
  absl::Duration delay = absl::ZeroDuration();
  absl::Status error;
};

class FaultSchedule {
 public:
  explicit FaultSchedule(uint64_t seed = 1) : rng_(seed) {}

  // Appends a rule. Safe from any thread.
  void Add(FaultRule rule);
  // Removes every rule (operations pass untouched from now on).
  void Clear();
  // Decides the fate of the next operation named `op`. Safe from any thread.
  FaultDecision Next(std::string_view op);
  // Faults injected so far.
  int64_t injected() const;

 private:
  struct Entry {
    FaultRule rule;
    int64_t seen = 0;   // matching operations so far
    int64_t fired = 0;  // faults injected by this rule
  };
  mutable absl::Mutex mu_;
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  int64_t injected_ ABSL_GUARDED_BY(mu_) = 0;
};

// Flips one bit in the middle of `bytes` (what kCorrupt does to delivered data).
inline void CorruptBytes(std::span<std::byte> bytes) {
  if (!bytes.empty()) bytes[bytes.size() / 2] ^= std::byte{0x10};
}

// True when `pattern` ("*", "exact", "prefix*") matches `op`.
bool FaultOpMatches(std::string_view pattern, std::string_view op);

}  // namespace kvasir::transport::fault
