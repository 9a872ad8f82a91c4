// `kvasir`: the command-line entry point. Dispatches to a subcommand (cli/commands.h).
#include <cstdio>
#include <cstring>
#include <string_view>

#include "cli/commands.h"

namespace {

constexpr const char* kUsage =
    "usage: kvasir <command> [options]\n"
    "\n"
    "Kvasir: a serving runtime for Llama-family models with a compressed, disaggregated KV cache.\n"
    "\n"
    "commands:\n"
    "  generate   generate text from a prompt in this process\n"
    "  eval       quality of a KV policy against the full cache (perplexity, agreement)\n"
    "  bench      benchmarks (engine, transport, cachestore)\n"
    "  up         start a local cluster (coordinator, workers) serving the OpenAI API\n"
    "  calibrate  fit the parameters of a KV policy to a model (pod)\n"
    "  plan       memory and speed estimate for a model, device, tensor-parallel size, KV policy\n"
    "\n"
    "Run 'kvasir <command> --help' for the options of a command.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string_view command = argv[1];
  if (command == "generate") return kvasir::cli::RunGenerate(argc - 1, argv + 1);
  if (command == "eval") return kvasir::cli::RunEval(argc - 1, argv + 1);
  if (command == "bench") return kvasir::cli::RunBench(argc - 1, argv + 1);
  if (command == "calibrate") return kvasir::cli::RunCalibrate(argc - 1, argv + 1);
  if (command == "up") return kvasir::cli::RunUp(argc - 1, argv + 1);
  if (command == "plan") return kvasir::cli::RunPlan(argc - 1, argv + 1);
  std::fprintf(stderr, "kvasir: unknown command '%s'\n\n%s", argv[1], kUsage);
  return 2;
}
