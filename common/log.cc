#include "common/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"

namespace kvasir::log {
namespace {

constexpr const char* kSubsysNames[] = {"general",    "model",       "kernels",
                                        "kvcache",    "transport",   "worker",
                                        "cachestore", "coordinator", "cli"};
constexpr const char* kLevelNames[] = {"DEBUG", "INFO", "WARN", "ERROR"};

struct Config {
  std::atomic<int> level{static_cast<int>(Level::kInfo)};
  unsigned subsys_mask = ~0u;

  Config() {
    if (const char* env = std::getenv("KVASIR_LOG_LEVEL")) {
      std::string v = absl::AsciiStrToLower(env);
      if (v == "debug") level = 0;
      if (v == "info") level = 1;
      if (v == "warn" || v == "warning") level = 2;
      if (v == "error") level = 3;
    }
    if (const char* env = std::getenv("KVASIR_LOG_SUBSYS")) {
      subsys_mask = 0;
      for (absl::string_view name : absl::StrSplit(env, ',')) {
        for (unsigned i = 0; i < std::size(kSubsysNames); ++i) {
          if (name == kSubsysNames[i]) subsys_mask |= 1u << i;
        }
      }
    }
  }
};

Config& GetConfig() {
  static Config config;
  return config;
}

}  // namespace

bool Enabled(Level level, Subsys subsys) {
  Config& c = GetConfig();
  if (static_cast<int>(level) < c.level.load(std::memory_order_relaxed)) return false;
  if (level >= Level::kWarn) return true;
  return (c.subsys_mask >> static_cast<unsigned>(subsys)) & 1u;
}

void SetLevel(Level level) { GetConfig().level = static_cast<int>(level); }

void Write(Level level, Subsys subsys, const char* file, int line, const std::string& msg) {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  const double secs = std::chrono::duration<double>(now).count();
  const char* base = std::strrchr(file, '/');
  std::fprintf(stderr, "[%.3f %s %s %s:%d] %s\n", secs, kLevelNames[static_cast<int>(level)],
               kSubsysNames[static_cast<int>(subsys)], base ? base + 1 : file, line, msg.c_str());
}

}  // namespace kvasir::log
