// Runs the real `kvasir` binary in a child process for the CLI tests: exit code, stdout, stderr.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

namespace kvasir::cli::cli_test {

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A scratch folder of this test process, created on first use and removed when it exits.
inline std::string TempDir() {
  struct Dir {
    std::string path =
        (std::filesystem::temp_directory_path() / ("kvasir_cli_test_" + std::to_string(::getpid())))
            .string();
    Dir() { std::filesystem::create_directories(path); }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir dir;
  return dir.path;
}

inline std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// With merge_stderr, stderr goes to the same pipe as stdout (into `out`), as in `2>&1 | less`;
// exit_code is then the pipe's (cat's).
inline RunResult Kvasir(const std::vector<std::string>& args, bool merge_stderr = false) {
  const std::string dir = TempDir();
  std::string cmd = "timeout 300 " + std::string(KVASIR_BINARY_DIR) + "/bin/kvasir";
  for (const auto& a : args) cmd += " " + Quote(a);
  cmd += merge_stderr ? " 2>&1 | cat >" + dir + "/out; : >" + dir + "/err"
                      : " >" + dir + "/out 2>" + dir + "/err";
  RunResult r;
  const int status = std::system(cmd.c_str());
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = ReadAll(dir + "/out");
  r.err = ReadAll(dir + "/err");
  return r;
}

}  // namespace kvasir::cli::cli_test
