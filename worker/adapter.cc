#include "worker/adapter.h"

#include <cstring>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/ops.h"
#include "kvcache/policy_args.h"
#include "model/safetensors.h"

namespace kvasir::worker {
namespace {

constexpr const char* kProjections[] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                        "ffn_gate", "ffn_up", "ffn_down"};

// The [rows, cols] of a projection of `config` ("attn_q", ...), as the engine's weights hold it.
std::pair<int64_t, int64_t> ProjectionShape(const model::ModelConfig& c, std::string_view proj) {
  const int64_t q = int64_t{c.n_head} * c.head_dim;
  const int64_t kv = int64_t{c.n_head_kv} * c.head_dim;
  if (proj == "attn_q") return {q, c.n_embd};
  if (proj == "attn_k" || proj == "attn_v") return {kv, c.n_embd};
  if (proj == "ffn_gate" || proj == "ffn_up") return {c.n_ff, c.n_embd};
  if (proj == "ffn_down") return {c.n_embd, c.n_ff};
  return {c.n_embd, q};  // attn_output
}

const std::string* Meta(const model::SafetensorsFile& f, std::string_view key) {
  for (const auto& [k, v] : f.metadata()) {
    if (k == key) return &v;
  }
  return nullptr;
}

std::vector<float> CopyF32(const model::SafeTensorInfo& t) {
  std::vector<float> out(t.size_bytes / sizeof(float));
  std::memcpy(out.data(), t.data, t.size_bytes);
  return out;
}

kernels::WeightView* ProjectionOf(LayerWeights& layer, std::string_view proj) {
  if (proj == "attn_q") return &layer.wq;
  if (proj == "attn_k") return &layer.wk;
  if (proj == "attn_v") return &layer.wv;
  if (proj == "attn_output") return &layer.wo;
  if (proj == "ffn_gate") return &layer.gate;
  if (proj == "ffn_up") return &layer.up;
  if (proj == "ffn_down") return &layer.down;
  return nullptr;
}

}  // namespace

absl::StatusOr<Adapter> LoadAdapter(const std::string& path, const model::ModelConfig& config) {
  const std::string name = std::filesystem::path(path).filename().string();
  auto error = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("adapter ", name, ": ", parts...));
  };
  auto file = model::SafetensorsFile::Open(path);
  if (!file.ok()) return error("cannot be read as safetensors (", file.status().message(), ")");
  const std::string* format = Meta(*file, "kvasir.format");
  if (format == nullptr || *format != "lora-1") {
    return error("not a retrofit adapter (metadata kvasir.format must be \"lora-1\")");
  }
  const std::string* layout = Meta(*file, "kvasir.layout");
  if (layout == nullptr || *layout != "gguf") {
    return error("kvasir.layout must be \"gguf\" (the only row order built)");
  }
  if (config.rope_style != model::RopeStyle::kAdjacentPairs) {
    return error(
        "trained on a GGUF file's q/k row order; this model is a Hugging Face folder, whose "
        "rows are ordered otherwise (not supported yet: use the GGUF file)");
  }
  Adapter a;
  for (const char* key : {"kvasir.method", "kvasir.kv_policy", "kvasir.ratio"}) {
    if (Meta(*file, key) == nullptr) return error("metadata lacks ", key);
  }
  a.method = *Meta(*file, "kvasir.method");
  a.kv_policy = *Meta(*file, "kvasir.kv_policy");
  a.ratio = *Meta(*file, "kvasir.ratio");
  int32_t rank = 0;
  float alpha = 0;
  const std::string* rank_text = Meta(*file, "kvasir.lora_rank");
  const std::string* alpha_text = Meta(*file, "kvasir.lora_alpha");
  if (rank_text == nullptr || !absl::SimpleAtoi(*rank_text, &rank) || rank < 1 || rank > 1024) {
    return error("kvasir.lora_rank must be an integer in [1, 1024]");
  }
  if (alpha_text == nullptr || !absl::SimpleAtof(*alpha_text, &alpha) || !(alpha > 0) ||
      alpha > 1e6) {
    return error("kvasir.lora_alpha must be a positive number");
  }
  a.scale = alpha / static_cast<float>(rank);

  size_t used = 0;
  for (int32_t l = 0; l < config.n_layer; ++l) {
    for (const char* proj : kProjections) {
      const std::string base = absl::StrCat("blk.", l, ".", proj);
      const model::SafeTensorInfo* ta = file->Find(base + ".lora_a");
      const model::SafeTensorInfo* tb = file->Find(base + ".lora_b");
      if (ta == nullptr && tb == nullptr) continue;
      if (ta == nullptr || tb == nullptr) return error(base, " has only one of lora_a, lora_b");
      const auto [rows, cols] = ProjectionShape(config, proj);
      if (ta->dtype != model::SafeDType::kF32 || tb->dtype != model::SafeDType::kF32) {
        return error(base, ": lora_a and lora_b must be F32");
      }
      if (ta->shape != std::vector<int64_t>{rank, cols} ||
          tb->shape != std::vector<int64_t>{rows, rank}) {
        return error(base, ": lora_a must be [", rank, ", ", cols, "] and lora_b [", rows, ", ",
                     rank, "] for this model");
      }
      LoraPair p;
      p.layer = l;
      p.projection = proj;
      p.rows = rows;
      p.cols = cols;
      p.rank = rank;
      p.a = CopyF32(*ta);
      p.b = CopyF32(*tb);
      a.projections.push_back(std::move(p));
      used += 2;
    }
  }
  const model::SafeTensorInfo* tt = file->Find("check.tokens");
  const model::SafeTensorInfo* tl = file->Find("check.logits");
  if ((tt == nullptr) != (tl == nullptr))
    return error("has only one of check.tokens, check.logits");
  if (tt != nullptr) {
    if (tt->dtype != model::SafeDType::kI32 || tt->shape.size() != 1 ||
        tl->dtype != model::SafeDType::kF32 ||
        tl->shape != std::vector<int64_t>{tt->shape[0], config.n_vocab}) {
      return error("check.tokens must be I32 [T] and check.logits F32 [T, n_vocab]");
    }
    a.check_tokens.resize(tt->shape[0]);
    std::memcpy(a.check_tokens.data(), tt->data, tt->size_bytes);
    for (int32_t t : a.check_tokens) {
      if (t < 0 || t >= config.n_vocab) return error("check.tokens holds a token out of range");
    }
    a.check_logits = CopyF32(*tl);
    used += 2;
  }
  if (a.projections.empty()) return error("adapts no projection of this model");
  if (used != file->tensors().size()) {
    return error("holds tensors this model has no place for (", file->tensors().size() - used,
                 " of ", file->tensors().size(), ")");
  }
  return a;
}

absl::StatusOr<std::string> AdapterOfSpec(std::string_view spec) {
  KVASIR_ASSIGN_OR_RETURN(kvcache::PolicyArgs args, kvcache::PolicyArgs::Parse(spec));
  // lococo's weights= are its compressor's own, not a change of the model.
  if ((args.name() != "dmc" && args.name() != "pod") || !args.Has("weights")) {
    return std::string();
  }
  return args.File("weights");
}

absl::Status MergeAdapter(const Adapter& adapter, LlamaWeights* weights, bool sharded) {
  if (sharded) {
    return absl::InvalidArgumentError(
        "retrofit adapters with tensor parallelism are not supported yet");
  }
  for (const LoraPair& p : adapter.projections) {
    kernels::WeightView* w = p.layer < static_cast<int32_t>(weights->layers.size())
                                 ? ProjectionOf(weights->layers[p.layer], p.projection)
                                 : nullptr;
    if (w == nullptr || w->rows != p.rows || w->cols != p.cols) {
      return absl::InvalidArgumentError(absl::StrCat("adapter projection blk.", p.layer, ".",
                                                     p.projection, ": not in these weights"));
    }
    std::vector<uint8_t> merged(static_cast<size_t>(p.rows * p.cols) * sizeof(float));
    float* out = reinterpret_cast<float*>(merged.data());
    std::vector<float> ba(p.cols);
    for (int64_t r = 0; r < p.rows; ++r) {
      float* row = out + r * p.cols;
      kernels::cpu::DequantizeRow(w->type, w->row(r), p.cols, row);
      std::fill(ba.begin(), ba.end(), 0.0f);
      for (int32_t k = 0; k < p.rank; ++k) {
        const float bk = p.b[r * p.rank + k];
        const float* ak = p.a.data() + int64_t{k} * p.cols;
        for (int64_t c = 0; c < p.cols; ++c) ba[c] += bk * ak[c];
      }
      for (int64_t c = 0; c < p.cols; ++c) row[c] += adapter.scale * ba[c];
    }
    weights->bytes += static_cast<int64_t>(merged.size()) - w->row_bytes * w->rows;
    w->type = DType::kF32;
    w->data = merged.data();
    w->row_bytes = p.cols * static_cast<int64_t>(sizeof(float));
    weights->owned_slices.push_back(std::move(merged));
  }
  return absl::OkStatus();
}

}  // namespace kvasir::worker
