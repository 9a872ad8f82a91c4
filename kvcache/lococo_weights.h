// The trained parameters of LoCoCo's compressor, one set per layer shared by the layer's KV heads
// (as the released code shares one memory_saver per attention layer), read from a safetensors
// file with these tensors for every layer l (F32, F16 or BF16):
//   layers.<l>.conv.weight  [M_c, 2 * head_dim, kernel]   Conv1d weight (out, in, kernel);
//                                                          input channels: key dims, then value
//   layers.<l>.conv.bias    [M_c]
//   layers.<l>.lambda       [] or [1]                      the blend λ ("normalizer")
// kernel is odd (21 in the paper) and the same in every layer; padding is (kernel - 1) / 2.
// Other tensors in the file are ignored. The reader validates the whole header against the file
// (offsets inside the data, sizes matching shapes) and refuses non-finite values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvasir::kvcache {

struct LococoLayerWeights {
  std::vector<float> conv_weight;  // [m_c, 2 * head_dim, kernel]
  std::vector<float> conv_bias;    // [m_c]
  float lambda = 0.0f;
};

struct LococoWeights {
  int32_t m_c = 0;
  int32_t in_channels = 0;  // 2 * head_dim
  int32_t kernel = 0;
  std::vector<LococoLayerWeights> layers;
};

// Reads the compressor weights of an n_layer model with head_dim, whose fused slots number m_c.
// InvalidArgument (naming the file and tensor) for anything that does not fit.
absl::StatusOr<LococoWeights> ReadLococoWeights(const std::string& path, int32_t n_layer,
                                                int32_t head_dim, int32_t m_c);

}  // namespace kvasir::kvcache
