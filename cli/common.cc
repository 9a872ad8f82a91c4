#include "cli/common.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/units.h"

namespace kvasir::cli {

int Fail(const std::string& command, const absl::Status& status, int exit_code) {
  std::string msg(status.message());
  std::fprintf(stderr, "%s: %s\n", command.c_str(), msg.c_str());
  return exit_code;
}

void EngineFlags::Register(ArgParser& p) {
  p.AddString("model", &model, "PATH",
              "a .gguf file, a Hugging Face folder (config.json, *.safetensors, tokenizer), or "
              "'default' (SmolLM2-135M-Instruct Q4_1)");
  p.AddInt32("threads", &threads, "compute threads (0: all cores)");
  p.AddString("kv-cache-memory", &kv_cache_memory, "BYTES",
              "KV cache size, e.g. 512MiB or 4GiB (default: 4 full-context sequences, <= 4GiB)");
  p.AddString("kv-dtype", &kv_dtype, "TYPE", "KV cache element type: f32 or f16");
  p.AddBool("quiet", &quiet, "no progress or timing lines on stderr");
}

absl::StatusOr<worker::EngineOptions> EngineFlags::ToOptions() const {
  worker::EngineOptions o;
  o.model = model;
  o.num_threads = threads;
  if (threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (!kv_cache_memory.empty()) {
    KVASIR_ASSIGN_OR_RETURN(o.kv_cache_bytes, ParseByteSize(kv_cache_memory));
  }
  if (kv_dtype == "f32") {
    o.kv_dtype = DType::kF32;
  } else if (kv_dtype == "f16") {
    o.kv_dtype = DType::kF16;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-dtype must be f32 or f16, got '", kv_dtype, "'"));
  }
  return o;
}

absl::StatusOr<std::unique_ptr<worker::Engine>> LoadEngine(const EngineFlags& flags) {
  KVASIR_ASSIGN_OR_RETURN(worker::EngineOptions options, flags.ToOptions());
  const bool tty = ::isatty(STDERR_FILENO);
  const auto start = std::chrono::steady_clock::now();
  int last_percent = -1;
  if (!flags.quiet) {
    options.progress = [&](int64_t done, int64_t total) {
      if (total < (int64_t{32} << 20)) return;  // small models load instantly
      const int percent = total > 0 ? static_cast<int>(100 * done / total) : 100;
      if (percent == last_percent) return;
      // On a terminal one line that updates; in a log a line every 25%.
      if (!tty && percent % 25 != 0 && percent != 100) return;
      last_percent = percent;
      std::fprintf(stderr, "%sloading %s: %3d%% (%s of %s)%s", tty ? "\r" : "", flags.model.c_str(),
                   percent, FormatBytes(done).c_str(), FormatBytes(total).c_str(), tty ? "" : "\n");
      std::fflush(stderr);
    };
  }
  auto engine = worker::Engine::Load(options);
  if (!flags.quiet && last_percent >= 0 && tty) std::fprintf(stderr, "\n");
  if (!engine.ok()) return engine.status();
  if (!flags.quiet) {
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto& c = (*engine)->config();
    std::fprintf(stderr, "loaded %s (%s, %d layers, %s of weights) in %.2f s, %d threads\n",
                 (*engine)->files().path().c_str(), c.name.c_str(), c.n_layer,
                 FormatBytes((*engine)->weights().bytes).c_str(), secs,
                 (*engine)->runner().num_threads());
  }
  return engine;
}

}  // namespace kvasir::cli
