// A child process for multi-process tests and the transport bench: fork + exec with extra
// environment variables, its stdout readable line by line with a deadline, and a kill on
// destruction so no child outlives its test.
#pragma once

#include <sys/types.h>

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

}  // namespace kvasir::transport
