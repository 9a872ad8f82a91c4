// Parsing of human-friendly quantities in flags and config files.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace kvasir {

// "4GiB", "512MiB", "1.5GB", "1048576" -> bytes. Binary (KiB, MiB, GiB, TiB) and decimal (KB, MB,
// GB, TB) suffixes, case-insensitive; a bare number is bytes.
absl::StatusOr<int64_t> ParseByteSize(std::string_view text);

// 1536 -> "1.50 KiB".
std::string FormatBytes(double bytes);

}  // namespace kvasir
