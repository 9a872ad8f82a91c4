#include "common/units.h"

#include <cmath>
#include <cstdlib>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/strings.h"

namespace kvasir {

absl::StatusOr<int64_t> ParseByteSize(std::string_view text) {
  std::string s = absl::AsciiStrToLower(absl::StripAsciiWhitespace(ToAbsl(text)));
  size_t split = 0;
  while (split < s.size() && (absl::ascii_isdigit(s[split]) || s[split] == '.')) ++split;
  double value = 0;
  if (split == 0 || !absl::SimpleAtod(s.substr(0, split), &value)) {
    return absl::InvalidArgumentError(absl::StrCat("not a byte size: '", ToAbsl(text), "'"));
  }
  std::string suffix(absl::StripAsciiWhitespace(s.substr(split)));
  double scale = 0;
  if (suffix.empty() || suffix == "b") scale = 1;
  if (suffix == "k" || suffix == "kib") scale = 1024.0;
  if (suffix == "m" || suffix == "mib") scale = 1024.0 * 1024;
  if (suffix == "g" || suffix == "gib") scale = 1024.0 * 1024 * 1024;
  if (suffix == "t" || suffix == "tib") scale = 1024.0 * 1024 * 1024 * 1024;
  if (suffix == "kb") scale = 1e3;
  if (suffix == "mb") scale = 1e6;
  if (suffix == "gb") scale = 1e9;
  if (suffix == "tb") scale = 1e12;
  if (scale == 0) {
    return absl::InvalidArgumentError(absl::StrCat("unknown size unit '", suffix, "' in '",
                                                   ToAbsl(text), "' (use KiB, MiB, GiB, ...)"));
  }
  const double bytes = value * scale;
  if (!(bytes < 9.0e18))
    return absl::InvalidArgumentError(absl::StrCat("size too large: ", ToAbsl(text)));
  return static_cast<int64_t>(std::llround(bytes));
}

std::string FormatBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::fabs(bytes) >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f B", bytes) : absl::StrFormat("%.2f %s", bytes, units[u]);
}

}  // namespace kvasir
