// kvasir-cachestore: the KV block store service. Parses flags (config.h), runs StoreService
// until SIGTERM or SIGINT, then stops gracefully. Prints "PORT <rpc> HTTP <http>" once listening,
// for scripts and tests.
#include <signal.h>

#include <cstdio>

#include "cachestore/config.h"
#include "cachestore/service.h"

int main(int argc, char** argv) {
  absl::StatusOr<kvasir::cachestore::CommandLine> command =
      kvasir::cachestore::ParseCommandLine(argc, argv);
  if (!command.ok()) {
    std::fprintf(stderr, "kvasir-cachestore: %s\n",
                 std::string(command.status().message()).c_str());
    return 2;
  }
  if (command->help) {
    std::fputs(kvasir::cachestore::Usage().c_str(), stdout);
    return 0;
  }
  // Signals are taken by sigwait below: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<kvasir::cachestore::StoreService>> service =
      kvasir::cachestore::StoreService::Start(command->options);
  if (!service.ok()) {
    std::fprintf(stderr, "kvasir-cachestore: %s\n", service.status().ToString().c_str());
    return 1;
  }
  std::printf("PORT %d HTTP %d\n", (*service)->port(), (*service)->http_port());
  std::fflush(stdout);
  int received = 0;
  sigwait(&signals, &received);
  std::fprintf(stderr, "kvasir-cachestore: %s, stopping\n",
               received == SIGTERM ? "SIGTERM" : "SIGINT");
  (*service)->Stop();
  return 0;
}
