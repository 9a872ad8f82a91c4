#include "worker/backend_model_runner.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/step_plan.h"

namespace kvasir::worker {
namespace {

using kernels::Backend;
using kernels::BackendBuffer;
using kernels::WeightView;

// The weights in the backend's memory: views into the mapped files where the backend can read
// host memory, else copies in backend buffers.
class BackendWeights {
 public:
  explicit BackendWeights(Backend& backend) : backend_(backend) {}

  absl::Status Bind(const model::ModelConfig& c, const LlamaWeights& w) {
    KVASIR_ASSIGN_OR_RETURN(tok_embd, Matrix(w.tok_embd));
    KVASIR_ASSIGN_OR_RETURN(output, Matrix(w.output));
    KVASIR_ASSIGN_OR_RETURN(output_norm, Vector(w.output_norm, c.n_embd));
    for (const LayerWeights& l : w.layers) {
      LayerWeights& d = layers.emplace_back();
      KVASIR_ASSIGN_OR_RETURN(d.attn_norm, Vector(l.attn_norm, c.n_embd));
      KVASIR_ASSIGN_OR_RETURN(d.ffn_norm, Vector(l.ffn_norm, c.n_embd));
      for (auto [src, dst] : {std::pair{&l.wq, &d.wq},
                              {&l.wk, &d.wk},
                              {&l.wv, &d.wv},
                              {&l.wo, &d.wo},
                              {&l.gate, &d.gate},
                              {&l.up, &d.up},
                              {&l.down, &d.down}}) {
        KVASIR_ASSIGN_OR_RETURN(*dst, Matrix(*src));
      }
    }
    return absl::OkStatus();
  }

  WeightView tok_embd, output;
  const float* output_norm = nullptr;
  std::vector<LayerWeights> layers;

 private:
  absl::StatusOr<const void*> Copy(const void* data, size_t bytes) {
    if (backend_.host_addressable()) return data;
    BackendBuffer& b = owned_.emplace_back(backend_);
    if (!b.Reserve(bytes)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("out of ", backend_.name(), " memory for the weights (", bytes, " bytes)"));
    }
    backend_.Upload(b.as(), data, bytes);
    return b.as<const void>();
  }
  absl::StatusOr<WeightView> Matrix(const WeightView& w) {
    if (!backend_.Supports(kernels::Op::kMatMul, w.type)) {
      return absl::UnimplementedError(absl::StrCat("the ", backend_.name(),
                                                   " backend has no matrix product for ",
                                                   std::string(DTypeName(w.type)), " weights"));
    }
    // Weights already copied (the output layer tied to the embedding) are bound once.
    for (const auto& [host, copy] : copies_) {
      if (host.data == w.data && host.rows == w.rows) return copy;
    }
    WeightView copy = w;
    KVASIR_ASSIGN_OR_RETURN(copy.data, Copy(w.data, static_cast<size_t>(w.rows * w.row_bytes)));
    copies_.emplace_back(w, copy);
    return copy;
  }
  absl::StatusOr<const float*> Vector(const float* v, int64_t n) {
    KVASIR_ASSIGN_OR_RETURN(const void* p, Copy(v, sizeof(float) * n));
    return static_cast<const float*>(p);
  }

  Backend& backend_;
  std::vector<BackendBuffer> owned_;
  std::vector<std::pair<WeightView, WeightView>> copies_;
};

class BackendModelRunner : public ModelRunner {
 public:
  BackendModelRunner(const model::ModelConfig& config, kvcache::KvCache& cache, Backend& backend)
      : config_(config), cache_(cache), backend_(backend), weights_(backend) {}

  absl::Status Init(const LlamaWeights& weights) { return weights_.Bind(config_, weights); }

  const model::ModelConfig& config() const override { return config_; }
  int num_threads() const override { return backend_.host_threads(); }

  using ModelRunner::Forward;
  absl::Status Forward(std::span<const StepSequence> batch, std::vector<float>& logits,
                       const LayerDoneHook& on_layer_done) override;

 private:
  // Grows the step buffers for n tokens and `rows` logit rows.
  absl::Status Resize(int64_t n, int64_t rows);

  model::ModelConfig config_;
  kvcache::KvCache& cache_;
  Backend& backend_;
  BackendWeights weights_;

  // Step buffers in backend memory, [n_tokens, width].
  BackendBuffer x_{backend_}, xn_{backend_}, q_{backend_}, k_{backend_}, v_{backend_},
      attn_{backend_}, ffn_a_{backend_}, ffn_b_{backend_}, out_rows_{backend_}, logits_{backend_};
  kvcache::BackendScratch scratch_;  // the policies' (after backend_: freed before it)
  StepPlan plan_;                    // the step's rows, on the host
};

absl::Status BackendModelRunner::Resize(int64_t n, int64_t rows) {
  const model::ModelConfig& c = config_;
  const int64_t f = sizeof(float);
  const int64_t qd = int64_t{c.n_head} * c.head_dim;
  const int64_t kvd = int64_t{c.n_head_kv} * c.head_dim;
  const std::pair<BackendBuffer*, int64_t> sizes[] = {{&x_, n * c.n_embd},
                                                      {&xn_, n * c.n_embd},
                                                      {&q_, n * qd},
                                                      {&k_, n * kvd},
                                                      {&v_, n * kvd},
                                                      {&attn_, n * qd},
                                                      {&ffn_a_, n * c.n_ff},
                                                      {&ffn_b_, n * c.n_ff},
                                                      {&out_rows_, rows * c.n_embd},
                                                      {&logits_, rows * c.n_vocab}};
  for (const auto& [buffer, elems] : sizes) {
    if (!buffer->Reserve(static_cast<size_t>(elems * f))) {
      return absl::ResourceExhaustedError(
          absl::StrCat("out of ", backend_.name(), " memory for a step of ", n, " tokens"));
    }
  }
  return absl::OkStatus();
}

absl::Status BackendModelRunner::Forward(std::span<const StepSequence> batch,
                                         std::vector<float>& logits,
                                         const LayerDoneHook& on_layer_done) {
  const model::ModelConfig& c = config_;
  KVASIR_RETURN_IF_ERROR(CheckStep(c, batch));
  KVASIR_RETURN_IF_ERROR(ReserveStep(cache_, batch));
  PlanStep(batch, plan_);
  const int64_t n = plan_.n();
  const int64_t rows = plan_.rows();
  KVASIR_RETURN_IF_ERROR(Resize(n, rows));
  const int64_t d = c.n_embd;
  const int64_t qd = int64_t{c.n_head} * c.head_dim;
  const int64_t kvd = int64_t{c.n_head_kv} * c.head_dim;
  const int64_t ff = c.n_ff;
  float* x = x_.as<float>();
  float* xn = xn_.as<float>();
  float* ffn_a = ffn_a_.as<float>();

  backend_.GetRows(weights_.tok_embd, plan_.tokens.data(), n, x);

  for (int32_t l = 0; l < c.n_layer; ++l) {
    const LayerWeights& w = weights_.layers[l];
    backend_.RmsNorm(x, w.attn_norm, n, d, c.rms_eps, xn);
    backend_.MatMul(w.wq, xn, n, d, q_.as<float>(), qd);
    backend_.MatMul(w.wk, xn, n, d, k_.as<float>(), kvd);
    backend_.MatMul(w.wv, xn, n, d, v_.as<float>(), kvd);
    for (auto& [policy, spans] : plan_.groups) {
      const kvcache::LayerInputs in =
          LayerInputsOf(plan_, spans, l, q_.as<float>(), k_.as<float>(), v_.as<float>(),
                        attn_.as<float>(), qd, kvd, &scratch_);
      KVASIR_RETURN_IF_ERROR(policy->Attend(cache_, in, backend_));
    }
    if (on_layer_done) {
      backend_.Synchronize();  // the hook reads the layer's tables
      on_layer_done(l);
    }
    backend_.MatMul(w.wo, attn_.as<float>(), n, qd, xn, d);
    backend_.Add(x, xn, n * d);
    backend_.RmsNorm(x, w.ffn_norm, n, d, c.rms_eps, xn);
    backend_.MatMul(w.gate, xn, n, d, ffn_a, ff);
    backend_.MatMul(w.up, xn, n, d, ffn_b_.as<float>(), ff);
    backend_.SiluMul(ffn_a, ffn_b_.as<float>(), n * ff, ffn_a);
    backend_.MatMul(w.down, ffn_a, n, ff, xn, d);
    backend_.Add(x, xn, n * d);
  }

  // The rows asked for, gathered by a row lookup over x as an f32 matrix, then normed.
  float* out_rows = out_rows_.as<float>();
  const WeightView x_rows{DType::kF32, x, n, d, static_cast<int64_t>(sizeof(float)) * d};
  backend_.GetRows(x_rows, plan_.logit_rows.data(), rows, out_rows);
  backend_.RmsNorm(out_rows, weights_.output_norm, rows, d, c.rms_eps, out_rows);
  backend_.MatMul(weights_.output, out_rows, rows, d, logits_.as<float>(), c.n_vocab);
  logits.resize(rows * c.n_vocab);
  backend_.Download(logits.data(), logits_.as(), sizeof(float) * logits.size());
  return FinishStep(cache_, plan_);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRunner>> CreateBackendRunner(const model::ModelConfig& config,
                                                                 const LlamaWeights& weights,
                                                                 kvcache::KvCache& cache,
                                                                 Backend& backend) {
  KVASIR_RETURN_IF_ERROR(CheckRunnerModel(config, weights));
  const kvcache::KvGeometry& g = cache.geometry();
  if (g.n_head != config.n_head || g.n_head_kv != config.n_head_kv) {
    return absl::InvalidArgumentError(
        "the KV cache does not have the model's heads (tensor parallelism is not built on this "
        "runner)");
  }
  if (config.head_dim > backend.max_head_dim()) {
    return absl::UnimplementedError(
        absl::StrCat("the ", backend.name(), " backend's attention takes heads of at most ",
                     backend.max_head_dim(), " dimensions, this model's have ", config.head_dim));
  }
  auto runner = std::make_unique<BackendModelRunner>(config, cache, backend);
  KVASIR_RETURN_IF_ERROR(runner->Init(weights));
  return std::unique_ptr<ModelRunner>(std::move(runner));
}

}  // namespace kvasir::worker
