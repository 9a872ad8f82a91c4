// The subcommands of `kvasir`. Each parses its own options (argv[0] is the subcommand name) and
// returns the process exit code: 0 on success, 1 on a runtime error, 2 on a usage error.
#pragma once

namespace kvasir::cli {

int RunGenerate(int argc, char** argv);
int RunBench(int argc, char** argv);
int RunCalibrate(int argc, char** argv);
int RunUp(int argc, char** argv);
int RunEval(int argc, char** argv);
int RunPlan(int argc, char** argv);

}  // namespace kvasir::cli
