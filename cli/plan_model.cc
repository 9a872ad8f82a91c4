// The model side of `kvasir plan` (see plan_model.h).
#include "cli/plan_model.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/base/dtype.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "model/gguf.h"
#include "model/model_config.h"
#include "model/model_files.h"
#include "model/shard_plan.h"
#include "nlohmann/json.hpp"

namespace kvasir::cli {
namespace {

using Json = nlohmann::ordered_json;

constexpr const char* kCommand = "kvasir plan";
constexpr int64_t kMaxConfigBytes = int64_t{16} << 20;
constexpr int32_t kMaxLayers = 4096;
constexpr int64_t kMaxKvTables = int64_t{1} << 20;
constexpr double kMaxParams = 1e15;

// ---- The model: its config and its weight tensors ----

// Bytes of a tensor of type `type` whose rows hold `ne[0]` elements. InvalidArgument when the row
// is not a whole number of blocks.
absl::StatusOr<int64_t> TensorBytes(std::string_view name, const std::vector<int64_t>& ne,
                                    uint32_t type) {
  int64_t block = 0, block_bytes = 0;
  if (!model::GgmlTypeSize(type, &block, &block_bytes)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown weight type ", type));
  }
  if (ne[0] % block != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(ToAbsl(name), ": rows of ", ne[0], " elements are not whole ",
                     model::GgmlTypeName(type), " blocks of ", block));
  }
  int64_t bytes = ne[0] / block * block_bytes;
  for (size_t i = 1; i < ne.size(); ++i) bytes *= ne[i];
  return bytes;
}

// The tensors of a Llama checkpoint with this config, under their GGUF names: matrices of
// `matrix` type, norms of `norm` type.
absl::StatusOr<std::vector<Weight>> ConfigWeights(const model::ModelConfig& c, DType matrix,
                                                  DType norm) {
  std::vector<Weight> out;
  const int64_t q = int64_t{c.n_head} * c.head_dim, kv = int64_t{c.n_head_kv} * c.head_dim;
  auto add = [&](std::string name, std::vector<int64_t> ne, DType type) -> absl::Status {
    const auto t = static_cast<uint32_t>(type);
    KVASIR_ASSIGN_OR_RETURN(int64_t bytes, TensorBytes(name, ne, t));
    out.push_back(Weight{std::move(name), std::move(ne), t, bytes});
    return absl::OkStatus();
  };
  KVASIR_RETURN_IF_ERROR(add("token_embd.weight", {c.n_embd, c.n_vocab}, matrix));
  KVASIR_RETURN_IF_ERROR(add("output_norm.weight", {c.n_embd}, norm));
  if (!c.tied_embeddings) {
    KVASIR_RETURN_IF_ERROR(add("output.weight", {c.n_embd, c.n_vocab}, matrix));
  }
  for (int32_t l = 0; l < c.n_layer; ++l) {
    const std::string b = absl::StrCat("blk.", l, ".");
    KVASIR_RETURN_IF_ERROR(add(b + "attn_norm.weight", {c.n_embd}, norm));
    KVASIR_RETURN_IF_ERROR(add(b + "attn_q.weight", {c.n_embd, q}, matrix));
    KVASIR_RETURN_IF_ERROR(add(b + "attn_k.weight", {c.n_embd, kv}, matrix));
    KVASIR_RETURN_IF_ERROR(add(b + "attn_v.weight", {c.n_embd, kv}, matrix));
    KVASIR_RETURN_IF_ERROR(add(b + "attn_output.weight", {q, c.n_embd}, matrix));
    KVASIR_RETURN_IF_ERROR(add(b + "ffn_norm.weight", {c.n_embd}, norm));
    KVASIR_RETURN_IF_ERROR(add(b + "ffn_gate.weight", {c.n_embd, c.n_ff}, matrix));
    KVASIR_RETURN_IF_ERROR(add(b + "ffn_up.weight", {c.n_embd, c.n_ff}, matrix));
    KVASIR_RETURN_IF_ERROR(add(b + "ffn_down.weight", {c.n_ff, c.n_embd}, matrix));
  }
  return out;
}

// --weight-dtype for config.json inputs.
absl::StatusOr<DType> ParseWeightDtype(std::string_view name) {
  static constexpr std::pair<const char*, DType> kTypes[] = {
      {"f32", DType::kF32},   {"f16", DType::kF16},   {"bf16", DType::kBF16},
      {"q4_0", DType::kQ4_0}, {"q4_1", DType::kQ4_1}, {"q8_0", DType::kQ8_0}};
  for (const auto& [n, t] : kTypes) {
    if (name == n) return t;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--weight-dtype must be f16, bf16, f32, q4_0, q4_1 or q8_0, got '", ToAbsl(name), "'"));
}

// The weight type a config.json declares in torch_dtype (f16 when absent or unknown).
DType TorchDtype(std::string_view json_text) {
  const Json j = Json::parse(json_text.begin(), json_text.end(), nullptr, false);
  if (!j.is_object()) return DType::kF16;
  auto it = j.find("torch_dtype");
  if (it == j.end() || !it->is_string()) return DType::kF16;
  const std::string& t = it->get_ref<const std::string&>();
  if (t == "bfloat16") return DType::kBF16;
  if (t == "float32") return DType::kF32;
  return DType::kF16;
}

bool IsGgufFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::string_view(magic, 4) == "GGUF";
}

absl::StatusOr<ModelInput> LoadGguf(const std::string& path) {
  KVASIR_ASSIGN_OR_RETURN(model::GgufFile gguf, model::GgufFile::Open(path));
  ModelInput m;
  KVASIR_ASSIGN_OR_RETURN(m.config, model::ConfigFromGguf(gguf));
  m.format = "gguf";
  m.path = path;
  std::map<std::string, int64_t> by_type;
  int64_t total = 0;
  for (const model::GgufTensorInfo& t : gguf.tensors()) {
    m.weights.push_back(Weight{t.name, t.ne, t.ggml_type, static_cast<int64_t>(t.size_bytes)});
    by_type[model::GgmlTypeName(t.ggml_type)] += static_cast<int64_t>(t.size_bytes);
    total += static_cast<int64_t>(t.size_bytes);
  }
  std::vector<std::pair<int64_t, std::string>> shares;
  for (const auto& [name, bytes] : by_type) shares.emplace_back(bytes, name);
  std::sort(shares.rbegin(), shares.rend());
  std::vector<std::string> parts;
  for (const auto& [bytes, name] : shares) {
    parts.push_back(absl::StrFormat("%s %.1f%%", name, total > 0 ? 100.0 * bytes / total : 0.0));
  }
  m.weight_types = absl::StrJoin(parts, ", ");
  return m;
}

// The config of a config.json; `matrix` gets the weight type its torch_dtype declares.
absl::StatusOr<model::ModelConfig> ReadConfigJson(const std::string& path, DType* matrix) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  std::string text;
  char buffer[1 << 16];
  while (in.read(buffer, sizeof(buffer)) || in.gcount() > 0) {
    text.append(buffer, static_cast<size_t>(in.gcount()));
    if (static_cast<int64_t>(text.size()) > kMaxConfigBytes) {
      return absl::InvalidArgumentError(absl::StrCat("'", path, "' is larger than 16 MiB"));
    }
  }
  *matrix = TorchDtype(text);
  auto config = model::ConfigFromHfJson(text);
  if (!config.ok()) return Annotate(config.status(), path);
  return config;
}

// Refuses configs far beyond any model, whose tables (the tensors of every layer, PoD's groups of
// every layer and KV head) or byte counts would not fit in memory or in an int64.
absl::Status CheckPlannable(const model::ModelConfig& c, const std::string& file) {
  const double q = static_cast<double>(c.n_head) * c.head_dim,
               kv = static_cast<double>(c.n_head_kv) * c.head_dim;
  const double e = c.n_embd;
  const double params = 2.0 * e * c.n_vocab + static_cast<double>(c.n_layer) *
                                                  (2 * e * q + 2 * e * kv + 3.0 * e * c.n_ff);
  if (c.n_layer > kMaxLayers || int64_t{c.n_layer} * c.n_head_kv > kMaxKvTables ||
      params > kMaxParams) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": ", c.n_layer, " layers, ", c.n_head_kv, " KV heads and ", params,
        " parameters are beyond what ", kCommand, " plans (at most ", kMaxLayers, " layers, ",
        kMaxKvTables, " layers * KV heads, ", kMaxParams, " parameters)"));
  }
  return absl::OkStatus();
}

// ---- The shard plan applied to the tensors ----

// How the shard plan splits a tensor (model/shard_plan.h).
enum class Split {
  kReplicated,    // norms and anything not named below
  kVocabRows,     // token_embd, output: rows by vocabulary slice
  kQueryRows,     // attn_q: column-parallel, the rows of the rank's query heads
  kKvRows,        // attn_k, attn_v: the rows of the rank's KV heads
  kQueryColumns,  // attn_output: row-parallel, the columns of the rank's query heads
  kFfRows,        // ffn_gate, ffn_up: column-parallel, a slice of the n_ff rows
  kFfColumns,     // ffn_down: row-parallel, the same slice of its columns
};

Split SplitOf(std::string_view name) {
  if (name == "token_embd.weight" || name == "output.weight") return Split::kVocabRows;
  if (!absl::StartsWith(ToAbsl(name), "blk.")) return Split::kReplicated;
  const size_t dot = name.find('.', 4);
  if (dot == std::string_view::npos) return Split::kReplicated;
  const std::string_view rest = name.substr(dot + 1);
  if (rest == "attn_q.weight") return Split::kQueryRows;
  if (rest == "attn_k.weight" || rest == "attn_v.weight") return Split::kKvRows;
  if (rest == "attn_output.weight") return Split::kQueryColumns;
  if (rest == "ffn_gate.weight" || rest == "ffn_up.weight") return Split::kFfRows;
  if (rest == "ffn_down.weight") return Split::kFfColumns;
  return Split::kReplicated;
}

}  // namespace

absl::StatusOr<ModelInput> LoadModel(const std::string& model_flag, const std::string& weight_dtype,
                                     int* exit_code) {
  *exit_code = 2;
  KVASIR_ASSIGN_OR_RETURN(std::string path, model::ResolveModelPath(model_flag));
  std::error_code ec;
  const std::filesystem::path p(path);
  if (!std::filesystem::exists(p, ec)) {
    return absl::NotFoundError(absl::StrCat("--model '", path, "' does not exist"));
  }
  std::string file = path, name = p.filename().string();
  if (std::filesystem::is_directory(p, ec)) {
    file = (p / "config.json").string();
    if (!std::filesystem::is_regular_file(file, ec)) {
      return absl::NotFoundError(absl::StrCat("--model folder '", path, "' has no config.json"));
    }
  } else if (!IsGgufFile(file)) {
    name = p.parent_path().filename().string();  // .../llama2-7b/config.json: llama2-7b
  }
  if (name.empty()) name = p.string();
  std::optional<DType> matrix;
  if (!weight_dtype.empty()) {
    KVASIR_ASSIGN_OR_RETURN(matrix, ParseWeightDtype(weight_dtype));
  }
  ModelInput m;
  m.path = file;
  if (IsGgufFile(file)) {
    if (matrix) {
      return absl::InvalidArgumentError(
          "--weight-dtype applies to config.json inputs; a GGUF file's own tensor types are used");
    }
    *exit_code = 1;
    KVASIR_ASSIGN_OR_RETURN(m, LoadGguf(file));
    KVASIR_RETURN_IF_ERROR(CheckPlannable(m.config, file));
    if (m.config.name.empty()) m.config.name = p.stem().string();
    return m;
  }
  *exit_code = 1;
  DType declared = DType::kF16;
  KVASIR_ASSIGN_OR_RETURN(m.config, ReadConfigJson(file, &declared));
  m.config.name = name;
  m.format = "config.json";
  KVASIR_RETURN_IF_ERROR(CheckPlannable(m.config, file));
  const DType type = matrix.value_or(declared);
  // Quantized checkpoints keep their norms in f32 (as GGUF files do).
  const DType norm = DTypeBlockSize(type) > 1 ? DType::kF32 : type;
  *exit_code = 2;
  KVASIR_ASSIGN_OR_RETURN(m.weights, ConfigWeights(m.config, type, norm));
  m.weight_types = std::string(DTypeName(type));
  return m;
}

absl::StatusOr<RankWeights> ShardWeights(const ModelInput& m, const model::ShardPlan& p) {
  const model::ModelConfig& c = m.config;
  RankWeights r;
  for (const Weight& w : m.weights) {
    const Split split = SplitOf(w.name);
    int64_t elements = 1;
    for (int64_t n : w.ne) elements *= n;
    int64_t bytes = w.bytes, params = elements;
    if (split != Split::kReplicated) {
      if (w.ne.size() != 2 || w.ne[0] <= 0 || w.ne[1] <= 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("tensor ", w.name, " is not a matrix (", w.ne.size(), " dimensions)"));
      }
      const int64_t cols = w.ne[0], rows = w.ne[1];
      const int64_t hd = c.head_dim;
      int64_t full = 0, part = 0;
      const bool by_rows = split != Split::kQueryColumns && split != Split::kFfColumns;
      switch (split) {
        case Split::kVocabRows:
          full = c.n_vocab, part = p.n_vocab();
          break;
        case Split::kQueryRows:
        case Split::kQueryColumns:
          full = c.n_head * hd, part = p.n_head() * hd;
          break;
        case Split::kKvRows:
          full = c.n_head_kv * hd, part = p.n_head_kv() * hd;
          break;
        case Split::kFfRows:
        case Split::kFfColumns:
          full = c.n_ff, part = p.n_ff();
          break;
        case Split::kReplicated:
          break;
      }
      if ((by_rows ? rows : cols) != full) {
        return absl::FailedPreconditionError(
            absl::StrCat("tensor ", w.name, " has ", by_rows ? rows : cols,
                         by_rows ? " rows" : " columns", " where the config implies ", full));
      }
      if (by_rows) {
        bytes = w.bytes / rows * part;
        params = cols * part;
      } else {
        int64_t block = 0, block_bytes = 0;
        if (!model::GgmlTypeSize(w.type, &block, &block_bytes)) {
          return absl::FailedPreconditionError(
              absl::StrCat("tensor ", w.name, " has an unknown type ", w.type));
        }
        if (part % block != 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "tensor-parallel size ", p.size, " gives each rank ", part, " of the ", cols,
              " columns of ", w.name, ", not whole ", model::GgmlTypeName(w.type), " blocks of ",
              block, " (row-parallel weights are split along their rows' blocks)"));
        }
        bytes = rows * (part / block) * block_bytes;
        params = rows * part;
      }
    }
    r.bytes += bytes;
    r.params += params;
    if (w.name == "token_embd.weight") {
      r.embedding_bytes = bytes;
      if (c.tied_embeddings) r.output_params = params;
    } else if (w.name == "output.weight") {
      r.output_params = params;
    } else if (split != Split::kReplicated) {
      r.layer_matmul_params += params;
    }
  }
  return r;
}

}  // namespace kvasir::cli
