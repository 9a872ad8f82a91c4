// Placeholder until `kvasir calibrate pod` lands (the KV-compression issue).
#include <cstdio>

#include "cli/commands.h"

namespace kvasir::cli {

int RunCalibrate(int argc, char** argv) {
  std::fprintf(stderr, "kvasir calibrate: not implemented yet\n");
  return 1;
}

}  // namespace kvasir::cli
