// A ModelRunner that runs the Llama forward pass through the kernels::Backend interface only, so
// that the same code drives the CUDA kernels and, in tests, the CPU kernels. The weights are
// copied into the backend's memory once (the CPU backend uses the mapped files in place), the
// activations of a step live in backend buffers that grow to the largest step, and the KV
// policies attend through the backend (kvcache/policy.h). The logits are downloaded at the end
// of a step.
//
// Built: one device, no tensor parallelism (the CPU runner, cpu_model_runner.cc, shards; on GPUs
// the NCCL group is planned). The KV cache must live in the backend's memory
// (KvCacheOptions::memory); dmc, which reads the cache on the host, is refused on a backend that
// is not host-addressable, by the policy itself.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kvcache/kv_cache.h"
#include "model/model_config.h"
#include "worker/llama_weights.h"
#include "worker/model_runner.h"

namespace kvasir::worker {

// The runner borrows `weights`, `cache` and `backend`; they must outlive it.
absl::StatusOr<std::unique_ptr<ModelRunner>> CreateBackendRunner(const model::ModelConfig& config,
                                                                 const LlamaWeights& weights,
                                                                 kvcache::KvCache& cache,
                                                                 kernels::Backend& backend);

}  // namespace kvasir::worker
