// A child process for multi-process tests and the benches: fork + exec with extra environment
// variables, its stdout readable line by line with a deadline, and a kill on destruction so no
// child outlives its test; and what starting one needs (its binary, a free port for it).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvasir::transport {

class ChildProcess {
 public:
  // Starts argv[0] (a path) with `env` added to this process's environment. Its stdout is a pipe
  // read by ReadLine; its stderr is inherited.
  static absl::StatusOr<ChildProcess> Spawn(const std::vector<std::string>& argv,
                                            const std::map<std::string, std::string>& env = {});
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ~ChildProcess();  // SIGKILL and reap if still running

  // The next line of stdout (without '\n'). DeadlineExceeded after `timeout`, Unavailable at
  // end of output.
  absl::StatusOr<std::string> ReadLine(absl::Duration timeout);
  // Waits for exit; returns the exit code (128 + signal if killed). DeadlineExceeded if still
  // running after `timeout` (it is then killed).
  absl::StatusOr<int> Wait(absl::Duration timeout);
  // Sends `signal` (SIGSTOP, SIGKILL, ...).
  void Signal(int signal);
  pid_t pid() const { return pid_; }

 private:
  ChildProcess(pid_t pid, int stdout_fd) : pid_(pid), stdout_fd_(stdout_fd) {}
  void Reset();
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string buffered_;
};

// The binary to start: `configured` when not empty, else `name` beside this executable or in
// ../bin from it, else build/bin/<name> (relative to the working directory).
std::string FindSiblingBinary(const std::string& configured, const std::string& name);

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
absl::StatusOr<uint16_t> FreeLoopbackPort();

}  // namespace kvasir::transport
