// Helpers shared by the subcommands: error printing, the model-loading progress line and the
// engine options every command accepts.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "cli/args.h"
#include "worker/engine.h"

namespace kvasir::cli {

// Prints "<command>: <message>" on one line to stderr and returns `exit_code` (1 for runtime
// errors, 2 for usage errors).
int Fail(const std::string& command, const absl::Status& status, int exit_code = 1);

// Options that load an engine, shared by generate, eval and bench.
struct EngineFlags {
  std::string model = "default";
  int32_t threads = 0;
  std::string kv_cache_memory;  // "" = automatic
  std::string kv_dtype = "f32";
  bool quiet = false;

  void Register(ArgParser& parser);
  // Engine options with a progress line on stderr (unless quiet).
  absl::StatusOr<worker::EngineOptions> ToOptions() const;
};

// Loads the engine, printing "loading <model>: 42% (38.6/92.0 MiB)" while the weights are read
// and a summary line when done (unless quiet).
absl::StatusOr<std::unique_ptr<worker::Engine>> LoadEngine(const EngineFlags& flags);

}  // namespace kvasir::cli
