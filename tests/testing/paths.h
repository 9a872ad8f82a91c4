// Where tests find their fixtures. Tests run with the repository root as working directory; the
// shared fixtures (models, golden outputs, evaluation text) live in ../shared beside it.
#pragma once

#include <string>
#include <string_view>

namespace kvasir::testing {

#ifndef KVASIR_SOURCE_DIR
#define KVASIR_SOURCE_DIR "."
#endif

// ../shared/<rel>, e.g. SharedPath("models/stories260K.gguf").
inline std::string SharedPath(std::string_view rel) {
  return std::string(KVASIR_SOURCE_DIR) + "/../shared/" + std::string(rel);
}

// <repo>/<rel>.
inline std::string RepoPath(std::string_view rel) {
  return std::string(KVASIR_SOURCE_DIR) + "/" + std::string(rel);
}

}  // namespace kvasir::testing
