// Minimal leveled logging (Abseil 20220623 has no absl/log). One line per event on stderr:
//   KVASIR_LOG(WARN, "worker %d missed %d heartbeats", id, n);
//   KVASIR_LOG_SUBSYS(INFO, kTransport, "connected peer=%s", addr);
// KVASIR_LOG_LEVEL=debug|info|warn|error (default info) sets the threshold, and
// KVASIR_LOG_SUBSYS=transport,worker limits DEBUG and INFO output to those subsystems
// (NCCL_DEBUG / NCCL_DEBUG_SUBSYS style). WARN and ERROR always print.
#pragma once

#include <string>

#include "absl/strings/str_format.h"

namespace kvasir::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
enum class Subsys {
  kGeneral,
  kModel,
  kKernels,
  kKvCache,
  kTransport,
  kWorker,
  kCachestore,
  kCoordinator,
  kCli
};

bool Enabled(Level level, Subsys subsys);
void Write(Level level, Subsys subsys, const char* file, int line, const std::string& msg);
// Overrides the environment (for tools such as `kvasir generate --quiet`).
void SetLevel(Level level);

}  // namespace kvasir::log

#define KVASIR_LOG_LEVEL_DEBUG ::kvasir::log::Level::kDebug
#define KVASIR_LOG_LEVEL_INFO ::kvasir::log::Level::kInfo
#define KVASIR_LOG_LEVEL_WARN ::kvasir::log::Level::kWarn
#define KVASIR_LOG_LEVEL_ERROR ::kvasir::log::Level::kError

#define KVASIR_LOG_SUBSYS(level, subsys, ...)                                                 \
  do {                                                                                        \
    if (::kvasir::log::Enabled(KVASIR_LOG_LEVEL_##level, ::kvasir::log::Subsys::subsys)) {    \
      ::kvasir::log::Write(KVASIR_LOG_LEVEL_##level, ::kvasir::log::Subsys::subsys, __FILE__, \
                           __LINE__, absl::StrFormat(__VA_ARGS__));                           \
    }                                                                                         \
  } while (0)

#define KVASIR_LOG(level, ...) KVASIR_LOG_SUBSYS(level, kGeneral, __VA_ARGS__)
