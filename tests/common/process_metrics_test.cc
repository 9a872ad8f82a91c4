// The process_* series and kvasir_build_info every service's /metrics carries.
#include "common/process_metrics.h"

#include <ctime>
#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "prometheus/counter.h"

namespace kvasir {
namespace {

// "name value" lines of the text format (labels kept in the name), comments skipped.
std::map<std::string, double> Samples(const std::string& text) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    double v = 0;
    if (space != absl::string_view::npos && absl::SimpleAtod(line.substr(space + 1), &v)) {
      out[std::string(line.substr(0, space))] = v;
    }
  }
  return out;
}

TEST(ProcessMetricsTest, TextHasTheRegistryAndTheProcessSeries) {
  prometheus::Registry registry;
  prometheus::BuildCounter()
      .Name("kvasir_test_total")
      .Help("a test")
      .Register(registry)
      .Add({})
      .Increment(3);
  const std::string text = MetricsText(registry, "test-service");
  const std::map<std::string, double> s = Samples(text);
  EXPECT_EQ(s.at("kvasir_test_total"), 3);
  EXPECT_GT(s.at("process_resident_memory_bytes"), 1 << 20) << text;
  EXPECT_GE(s.at("process_virtual_memory_bytes"), s.at("process_resident_memory_bytes"));
  EXPECT_GE(s.at("process_cpu_seconds_total"), 0);
  EXPECT_GE(s.at("process_open_fds"), 3);  // stdin, stdout, stderr at least
  EXPECT_GE(s.at("process_max_fds"), s.at("process_open_fds"));
  // Started in the last hour, not in the future.
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(s.at("process_start_time_seconds"), now + 2);
  EXPECT_GT(s.at("process_start_time_seconds"), now - 3600);
  const std::string info =
      "kvasir_build_info{service=\"test-service\",version=\"" + std::string(BuildVersion()) + "\"}";
  EXPECT_EQ(s.at(info), 1) << text;
  EXPECT_NE(BuildVersion(), "unknown");
  EXPECT_NE(text.find("# TYPE process_cpu_seconds_total counter"), std::string::npos);
}

}  // namespace
}  // namespace kvasir
