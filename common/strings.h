// Debian's Abseil 20220623 is built with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW
// is 0), so std::string_view does not convert to it implicitly. Kvasir's APIs take
// std::string_view; these two helpers cross the border where Abseil needs its own type
// (absl::StrCat, absl::StrSplit, Status messages).
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace kvasir {

inline absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }
inline std::string_view ToStd(absl::string_view s) { return {s.data(), s.size()}; }

}  // namespace kvasir
