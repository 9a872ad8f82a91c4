// The hyper-parameters of a Llama-family model, read from GGUF metadata or a Hugging Face
// config.json into one struct, with llama.cpp's defaults for missing keys.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "model/gguf.h"

namespace kvasir::model {

// How RoPE pairs the elements of a head (docs/model.md): GGUF llama files store q/k rows permuted
// for adjacent pairs (ggml NORM); Hugging Face weights use rotate_half's split halves (NEOX).
enum class RopeStyle { kAdjacentPairs, kHalfSplit };

struct ModelConfig {
  std::string architecture = "llama";
  std::string name;  // general.name or the folder name
  int32_t n_vocab = 0;
  int32_t n_embd = 0;  // hidden size
  int32_t n_layer = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;  // default n_head
  int32_t head_dim = 0;   // default n_embd / n_head
  int32_t n_ff = 0;       // intermediate size
  int32_t n_rot = 0;      // rotated dims per head; default head_dim
  int32_t context_length = 2048;
  float rms_eps = 1e-5f;
  float rope_freq_base = 10000.0f;
  float rope_scale = 1.0f;  // linear position scaling (positions are divided by it)
  RopeStyle rope_style = RopeStyle::kAdjacentPairs;
  bool tied_embeddings = false;  // no output.weight: the embedding is the LM head

  // Checks the numbers are positive and consistent (heads divide, head_dim even, ...).
  absl::Status Validate() const;
  // Bytes of K and V for one token at `bytes_per_elem` (2 * layers * kv heads * head_dim * b).
  int64_t KvBytesPerToken(int bytes_per_elem) const {
    return 2LL * n_layer * n_head_kv * head_dim * bytes_per_elem;
  }
};

// From `<arch>.*` keys of a GGUF file (architecture "llama"; others are refused clearly).
absl::StatusOr<ModelConfig> ConfigFromGguf(const GgufFile& gguf);
// From the text of a Hugging Face config.json (LlamaForCausalLM and compatible).
absl::StatusOr<ModelConfig> ConfigFromHfJson(std::string_view json_text);

}  // namespace kvasir::model
