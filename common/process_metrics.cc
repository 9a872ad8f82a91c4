// Process metrics (see process_metrics.h), from /proc/self on Linux.
#include "common/process_metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "prometheus/text_serializer.h"

#ifndef KVASIR_VERSION
#define KVASIR_VERSION "unknown"
#endif

namespace kvasir {
namespace {

prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type,
                                double value) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
  return f;
}

std::string ReadFile(const char* path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The fields of /proc/self/stat after the command name (which may hold spaces): field 3 (state)
// is fields[0].
std::vector<std::string> StatFields() {
  const std::string stat = ReadFile("/proc/self/stat");
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return {};
  return absl::StrSplit(stat.substr(close + 2), ' ', absl::SkipEmpty());
}

// Seconds since the epoch at boot (/proc/stat btime), or 0.
double BootTime() {
  std::ifstream in("/proc/stat");
  std::string line;
  while (std::getline(in, line)) {
    double btime = 0;
    if (line.rfind("btime ", 0) == 0 && absl::SimpleAtod(line.substr(6), &btime)) return btime;
  }
  return 0;
}

}  // namespace

std::string_view BuildVersion() { return KVASIR_VERSION; }

std::vector<prometheus::MetricFamily> ProcessMetricFamilies(std::string_view service) {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  const std::vector<std::string> f = StatFields();
  // Fields (man 5 proc, counted from 1): utime 14, stime 15, starttime 22, vsize 23, rss 24.
  auto field = [&](int n) {
    double v = 0;
    const size_t i = static_cast<size_t>(n - 3);
    return i < f.size() && absl::SimpleAtod(f[i], &v) ? v : 0.0;
  };
  if (ticks > 0 && !f.empty()) {
    out.push_back(Family("process_cpu_seconds_total", "Total user and system CPU time in seconds.",
                         MetricType::Counter, (field(14) + field(15)) / ticks));
    out.push_back(Family("process_start_time_seconds",
                         "Start time of the process since the Unix epoch in seconds.",
                         MetricType::Gauge, BootTime() + field(22) / ticks));
    out.push_back(Family("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                         MetricType::Gauge, field(23)));
    out.push_back(Family("process_resident_memory_bytes", "Resident memory size in bytes.",
                         MetricType::Gauge, field(24) * page));
  }
  std::error_code ec;
  double fds = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++fds;
  }
  if (!ec) {
    out.push_back(
        Family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge, fds));
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    out.push_back(Family("process_max_fds", "Maximum number of open file descriptors.",
                         MetricType::Gauge, static_cast<double>(limit.rlim_cur)));
  }
  prometheus::MetricFamily info =
      Family("kvasir_build_info", "Always 1; the labels say which build and service this is.",
             MetricType::Gauge, 1);
  info.metric[0].label = {{"service", std::string(service)},
                          {"version", std::string(BuildVersion())}};
  out.push_back(std::move(info));
  return out;
}

std::string MetricsText(const prometheus::Registry& registry, std::string_view service) {
  std::vector<prometheus::MetricFamily> families = registry.Collect();
  for (prometheus::MetricFamily& f : ProcessMetricFamilies(service)) {
    families.push_back(std::move(f));
  }
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace kvasir
