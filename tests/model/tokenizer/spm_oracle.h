// libsentencepiece as a test oracle, behind plain std types: spm_oracle_test.cc is the only test
// file that includes <sentencepiece_processor.h>, whose absl::string_view clashes with Abseil's.
#pragma once

#include <string>
#include <vector>

namespace kvasir::model::testing {

// Trains a small BPE tokenizer.model (byte fallback, identity normalization, like Llama's) on
// `corpus_path`, writing <model_prefix>.model. Returns "" on success, else the error.
std::string TrainTinySentencePiece(const std::string& corpus_path, const std::string& model_prefix,
                                   int vocab_size);

struct OraclePiece {
  std::string text;
  float score;
  int type;  // GGUF token type: 1 normal, 2 unknown, 3 control, 5 unused, 6 byte
};

// The model's pieces, and libsentencepiece's own Encode (no BOS). Empty on failure.
std::vector<OraclePiece> OraclePieces(const std::string& model_path);
std::vector<int> OracleEncode(const std::string& model_path, const std::string& text);

}  // namespace kvasir::model::testing
