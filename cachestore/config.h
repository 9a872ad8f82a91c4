// Command-line flags of kvasir-cachestore, parsed into ServiceOptions with a clear one-line error
// for anything malformed, and the --help text. Kept apart from main.cc so that it is tested.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "cachestore/service.h"

namespace kvasir::cachestore {

struct CommandLine {
  ServiceOptions options;
  bool help = false;
};

// Parses argv[1..argc). Accepts `--name value` and `--name=value`; booleans also bare.
absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv);

// The --help text.
std::string Usage();

}  // namespace kvasir::cachestore
