// FaultSchedule (see fault_schedule.h).
#include "transport/fault/fault_schedule.h"

namespace kvasir::transport::fault {

bool FaultOpMatches(std::string_view pattern, std::string_view op) {
  if (pattern == "*") return true;
  if (!pattern.empty() && pattern.back() == '*') {
    return op.substr(0, pattern.size() - 1) == pattern.substr(0, pattern.size() - 1);
  }
  return pattern == op;
}

void FaultSchedule::Add(FaultRule rule) {
  absl::MutexLock lock(&mu_);
  entries_.push_back(Entry{std::move(rule)});
}

void FaultSchedule::Clear() {
  absl::MutexLock lock(&mu_);
  entries_.clear();
}

FaultDecision FaultSchedule::Next(std::string_view op) {
  absl::MutexLock lock(&mu_);
  FaultDecision decision;
  bool decided = false;
  // Every matching rule counts the operation, so `after` means "after that many matching
  // operations", whichever rule handled them.
  for (Entry& e : entries_) {
    if (!FaultOpMatches(e.rule.op, op)) continue;
    const int64_t index = e.seen++;
    if (decided || index < e.rule.after) continue;
    if (e.rule.count >= 0 && e.fired >= e.rule.count) continue;
    if (e.rule.probability < 1.0 &&
        std::uniform_real_distribution<double>(0.0, 1.0)(rng_) >= e.rule.probability) {
      continue;
    }
    ++e.fired;
    ++injected_;
    decision = FaultDecision{e.rule.action, e.rule.delay, e.rule.error};
    decided = true;
  }
  return decision;
}

int64_t FaultSchedule::injected() const {
  absl::MutexLock lock(&mu_);
  return injected_;
}

}  // namespace kvasir::transport::fault
