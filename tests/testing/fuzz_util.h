// What the libFuzzer targets share: quiet logs and the seed writer switch.
#pragma once

#include <cstdlib>
#include <string>

#include "common/log.h"

namespace kvasir::testing {

// Lowers logging to errors, once: warnings about odd inputs would flood the fuzzer's output.
inline void QuietLogs() {
  static const bool quiet = [] {
    log::SetLevel(log::Level::kError);
    return true;
  }();
  (void)quiet;
}

// When KVASIR_FUZZ_WRITE_SEEDS names a folder, writes the target's seeds there with `write` and
// exits (0 on success). Call it from a namespace-scope initializer; false otherwise.
inline bool WriteSeedsIfAsked(bool (*write)(const std::string& dir)) {
  const char* dir = std::getenv("KVASIR_FUZZ_WRITE_SEEDS");
  if (dir == nullptr) return false;
  std::exit(write(dir) ? 0 : 1);
}

}  // namespace kvasir::testing
