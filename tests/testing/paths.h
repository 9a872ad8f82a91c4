// Where tests find their fixtures. Tests run with the repository root as working directory; the
// shared fixtures (models, golden outputs, evaluation text) live in ../shared beside it.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

namespace kvasir::testing {

#ifndef KVASIR_SOURCE_DIR
#define KVASIR_SOURCE_DIR "."
#endif

// The marker a test prints when ../shared is absent altogether (a clone without the development
// fixtures). ctest reports tests whose output carries it as skipped, not failed
// (SKIP_REGULAR_EXPRESSION in cmake/KvasirHelpers.cmake); with ../shared present it never
// appears, so a missing single file still fails its test.
inline constexpr const char* kSharedMissingMarker = "KVASIR_SHARED_FIXTURES_MISSING";

// ../shared/<rel>, e.g. SharedPath("models/stories260K.gguf"); $KVASIR_SHARED_DIR/<rel> when that
// is set (a machine where the tests run away from their source tree, scripts/gpu-check.sh).
inline std::string SharedPath(std::string_view rel) {
  const char* env = std::getenv("KVASIR_SHARED_DIR");
  const std::string root = env != nullptr && env[0] != '\0'
                               ? std::string(env)
                               : std::string(KVASIR_SOURCE_DIR) + "/../shared";
  static const bool present = std::filesystem::is_directory(root);
  if (!present) {
    std::fprintf(stderr, "%s: %s is absent, so this test cannot read %s\n", kSharedMissingMarker,
                 root.c_str(), std::string(rel).c_str());
  }
  return root + "/" + std::string(rel);
}

// <repo>/<rel>.
inline std::string RepoPath(std::string_view rel) {
  return std::string(KVASIR_SOURCE_DIR) + "/" + std::string(rel);
}

}  // namespace kvasir::testing
