#include "worker/llama_weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/half.h"
#include "common/status_macros.h"

namespace kvasir::worker {
namespace {

absl::StatusOr<kernels::WeightView> Matrix(const model::ModelFiles& files, const std::string& name,
                                           int64_t rows, int64_t cols) {
  KVASIR_ASSIGN_OR_RETURN(model::TensorRef t, files.Tensor(name));
  if (t.rows != rows || t.cols != cols) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": shape [", t.rows, ", ", t.cols,
                                                   "], the config needs [", rows, ", ", cols, "]"));
  }
  kernels::WeightView w;
  w.type = t.type;
  w.data = t.data;
  w.rows = t.rows;
  w.cols = t.cols;
  w.row_bytes = t.row_bytes;
  return w;
}

absl::StatusOr<const float*> Vector(const model::ModelFiles& files, const std::string& name,
                                    int64_t n, std::vector<std::vector<float>>& owned) {
  KVASIR_ASSIGN_OR_RETURN(model::TensorRef t, files.Tensor(name));
  if (t.rows * t.cols != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": ", t.rows * t.cols, " elements, the config needs ", n));
  }
  std::vector<float>& out = owned.emplace_back(n);
  switch (t.type) {
    case DType::kF32:
      std::memcpy(out.data(), t.data, sizeof(float) * n);
      break;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = Fp16ToFp32(h);
      }
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = Bf16ToFp32(h);
      }
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": norm weights must be f32, f16 or bf16"));
  }
  return out.data();
}

void Prefault(const LlamaWeights& w, const LoadProgress& progress) {
  std::vector<const kernels::WeightView*> views = {&w.tok_embd};
  if (w.output.data != w.tok_embd.data) views.push_back(&w.output);
  for (const LayerWeights& l : w.layers) {
    for (const auto* v : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down}) views.push_back(v);
  }
  const int64_t page = sysconf(_SC_PAGESIZE);
  int64_t done = 0;
  volatile uint8_t sink = 0;
  for (const kernels::WeightView* v : views) {
    const int64_t bytes = v->rows * v->row_bytes;
    const auto* p = static_cast<const uint8_t*>(v->data);
    ::madvise(const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(
                  reinterpret_cast<uintptr_t>(p) & ~static_cast<uintptr_t>(page - 1))),
              bytes + page, MADV_WILLNEED);
    for (int64_t off = 0; off < bytes; off += page) sink = sink + p[off];
    done += bytes;
    if (progress) progress(done, w.bytes);
  }
  (void)sink;
}

}  // namespace

absl::StatusOr<LlamaWeights> BindLlamaWeights(const model::ModelFiles& files, bool prefault,
                                              const LoadProgress& progress) {
  const model::ModelConfig& c = files.config();
  KVASIR_RETURN_IF_ERROR(c.Validate());
  LlamaWeights w;
  const int64_t q_dim = static_cast<int64_t>(c.n_head) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_head_kv) * c.head_dim;
  KVASIR_ASSIGN_OR_RETURN(w.tok_embd, Matrix(files, "token_embd.weight", c.n_vocab, c.n_embd));
  KVASIR_ASSIGN_OR_RETURN(w.output_norm, Vector(files, "output_norm.weight", c.n_embd, w.owned));
  if (files.HasTensor("output.weight")) {
    KVASIR_ASSIGN_OR_RETURN(w.output, Matrix(files, "output.weight", c.n_vocab, c.n_embd));
  } else {
    w.output = w.tok_embd;
  }
  w.bytes = w.tok_embd.rows * w.tok_embd.row_bytes;
  if (w.output.data != w.tok_embd.data) w.bytes += w.output.rows * w.output.row_bytes;
  for (int32_t i = 0; i < c.n_layer; ++i) {
    const std::string p = absl::StrCat("blk.", i, ".");
    LayerWeights l;
    KVASIR_ASSIGN_OR_RETURN(l.attn_norm, Vector(files, p + "attn_norm.weight", c.n_embd, w.owned));
    KVASIR_ASSIGN_OR_RETURN(l.wq, Matrix(files, p + "attn_q.weight", q_dim, c.n_embd));
    KVASIR_ASSIGN_OR_RETURN(l.wk, Matrix(files, p + "attn_k.weight", kv_dim, c.n_embd));
    KVASIR_ASSIGN_OR_RETURN(l.wv, Matrix(files, p + "attn_v.weight", kv_dim, c.n_embd));
    KVASIR_ASSIGN_OR_RETURN(l.wo, Matrix(files, p + "attn_output.weight", c.n_embd, q_dim));
    KVASIR_ASSIGN_OR_RETURN(l.ffn_norm, Vector(files, p + "ffn_norm.weight", c.n_embd, w.owned));
    KVASIR_ASSIGN_OR_RETURN(l.gate, Matrix(files, p + "ffn_gate.weight", c.n_ff, c.n_embd));
    KVASIR_ASSIGN_OR_RETURN(l.up, Matrix(files, p + "ffn_up.weight", c.n_ff, c.n_embd));
    KVASIR_ASSIGN_OR_RETURN(l.down, Matrix(files, p + "ffn_down.weight", c.n_embd, c.n_ff));
    for (const auto* v : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down}) {
      w.bytes += v->rows * v->row_bytes;
    }
    w.layers.push_back(l);
  }
  if (prefault) Prefault(w, progress);
  return w;
}

}  // namespace kvasir::worker
