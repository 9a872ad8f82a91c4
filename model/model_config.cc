// ModelConfig from GGUF llama.* metadata (llama.cpp's defaults) and from a Hugging Face
// config.json (transformers' LlamaConfig defaults), and its validation. Other architectures and
// RoPE scalings Kvasir cannot compute are refused with a message that says so.
#include "model/model_config.h"

#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "nlohmann/json.hpp"

namespace kvasir::model {
namespace {

using json = nlohmann::json;

constexpr float kDefaultFreqBase = 10000.0f;
constexpr float kDefaultGgufRmsEps = 1e-5f;
constexpr float kDefaultHfRmsEps = 1e-6f;  // transformers LlamaConfig
constexpr int32_t kDefaultContext = 2048;

absl::Status Unsupported(std::string_view arch) {
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported architecture '", ToAbsl(arch), "' (Kvasir runs llama)"));
}

// ---- GGUF ----

class GgufKeys {
 public:
  GgufKeys(const GgufFile& gguf, std::string arch) : gguf_(gguf), arch_(std::move(arch)) {}

  std::string Key(std::string_view suffix) const {
    return absl::StrCat(arch_, ".", ToAbsl(suffix));
  }

  // nullopt when absent; an error when present with a non-integer type or out of int32 range.
  absl::StatusOr<std::optional<int32_t>> Int(std::string_view suffix) const {
    const std::string key = Key(suffix);
    const GgufValue* v = gguf_.Find(key);
    if (v == nullptr) return std::optional<int32_t>();
    const std::optional<int64_t> i = v->AsInt();
    if (!i.has_value() || v->type() == GgufValueType::kBool) {
      return absl::InvalidArgumentError(absl::StrCat(key, " is not an integer"));
    }
    if (*i < std::numeric_limits<int32_t>::min() || *i > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(absl::StrCat(key, " = ", *i, " is out of range"));
    }
    return std::optional<int32_t>(static_cast<int32_t>(*i));
  }
  absl::StatusOr<int32_t> RequiredInt(std::string_view suffix) const {
    KVASIR_ASSIGN_OR_RETURN(std::optional<int32_t> v, Int(suffix));
    if (!v.has_value()) return absl::InvalidArgumentError(absl::StrCat("missing ", Key(suffix)));
    return *v;
  }
  absl::StatusOr<std::optional<float>> Float(std::string_view suffix) const {
    const std::string key = Key(suffix);
    const GgufValue* v = gguf_.Find(key);
    if (v == nullptr) return std::optional<float>();
    const std::optional<double> f = v->AsFloat();
    if (!f.has_value()) return absl::InvalidArgumentError(absl::StrCat(key, " is not a number"));
    return std::optional<float>(static_cast<float>(*f));
  }

 private:
  const GgufFile& gguf_;
  std::string arch_;
};

absl::StatusOr<ModelConfig> ConfigFromGgufImpl(const GgufFile& gguf) {
  const GgufValue* arch_value = gguf.Find("general.architecture");
  if (arch_value == nullptr) return absl::InvalidArgumentError("missing general.architecture");
  const std::optional<std::string_view> arch = arch_value->AsString();
  if (!arch.has_value()) {
    return absl::InvalidArgumentError("general.architecture is not a string");
  }
  if (*arch != "llama") return Unsupported(*arch);

  ModelConfig c;
  c.architecture = "llama";
  c.name = std::string(gguf.GetString("general.name").value_or(""));
  c.rope_style = RopeStyle::kAdjacentPairs;
  const GgufKeys k(gguf, "llama");
  KVASIR_ASSIGN_OR_RETURN(c.n_embd, k.RequiredInt("embedding_length"));
  KVASIR_ASSIGN_OR_RETURN(c.n_layer, k.RequiredInt("block_count"));
  KVASIR_ASSIGN_OR_RETURN(c.n_head, k.RequiredInt("attention.head_count"));
  KVASIR_ASSIGN_OR_RETURN(c.n_ff, k.RequiredInt("feed_forward_length"));
  KVASIR_ASSIGN_OR_RETURN(std::optional<int32_t> n_head_kv, k.Int("attention.head_count_kv"));
  c.n_head_kv = n_head_kv.value_or(c.n_head);
  KVASIR_ASSIGN_OR_RETURN(std::optional<int32_t> key_length, k.Int("attention.key_length"));
  KVASIR_ASSIGN_OR_RETURN(std::optional<int32_t> value_length, k.Int("attention.value_length"));
  if (key_length.has_value()) {
    c.head_dim = *key_length;
  } else if (c.n_head > 0) {
    if (c.n_embd % c.n_head != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "llama.embedding_length ", c.n_embd, " is not a multiple of llama.attention.head_count ",
          c.n_head, " and llama.attention.key_length is absent"));
    }
    c.head_dim = c.n_embd / c.n_head;
  }
  if (value_length.has_value() && *value_length != c.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("llama.attention.value_length ", *value_length,
                                                   " differs from the key length ", c.head_dim,
                                                   " (not supported)"));
  }
  KVASIR_ASSIGN_OR_RETURN(std::optional<int32_t> n_rot, k.Int("rope.dimension_count"));
  c.n_rot = n_rot.value_or(c.head_dim);
  KVASIR_ASSIGN_OR_RETURN(std::optional<int32_t> ctx, k.Int("context_length"));
  c.context_length = ctx.value_or(kDefaultContext);
  KVASIR_ASSIGN_OR_RETURN(std::optional<float> eps, k.Float("attention.layer_norm_rms_epsilon"));
  c.rms_eps = eps.value_or(kDefaultGgufRmsEps);
  KVASIR_ASSIGN_OR_RETURN(std::optional<float> base, k.Float("rope.freq_base"));
  c.rope_freq_base = base.value_or(kDefaultFreqBase);

  // RoPE scaling: the old scale_linear key, or scaling.type + scaling.factor.
  KVASIR_ASSIGN_OR_RETURN(std::optional<float> scale_linear, k.Float("rope.scale_linear"));
  KVASIR_ASSIGN_OR_RETURN(std::optional<float> factor, k.Float("rope.scaling.factor"));
  const std::string_view scaling_type = gguf.GetString("llama.rope.scaling.type").value_or("");
  if (!scaling_type.empty() && scaling_type != "none" && scaling_type != "linear") {
    return absl::InvalidArgumentError(absl::StrCat(
        "llama.rope.scaling.type '", ToAbsl(scaling_type), "' is not supported (only linear)"));
  }
  if (scaling_type == "linear") {
    if (!factor.has_value()) {
      return absl::InvalidArgumentError("llama.rope.scaling.type is linear but has no factor");
    }
    c.rope_scale = *factor;
  } else if (scale_linear.has_value()) {
    c.rope_scale = *scale_linear;
  }

  // Vocabulary: the key, else the token list, else the embedding rows.
  KVASIR_ASSIGN_OR_RETURN(std::optional<int32_t> vocab, k.Int("vocab_size"));
  if (vocab.has_value()) {
    c.n_vocab = *vocab;
  } else if (const GgufValue* tokens = gguf.Find("tokenizer.ggml.tokens");
             tokens != nullptr && tokens->is_array() &&
             tokens->array_size() <= static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
    c.n_vocab = static_cast<int32_t>(tokens->array_size());
  } else {
    for (const char* name : {"token_embd.weight", "output.weight"}) {
      const GgufTensorInfo* t = gguf.FindTensor(name);
      if (t != nullptr && t->ne.size() == 2 && t->ne[1] <= std::numeric_limits<int32_t>::max()) {
        c.n_vocab = static_cast<int32_t>(t->ne[1]);
        break;
      }
    }
  }
  c.tied_embeddings = gguf.FindTensor("output.weight") == nullptr;
  KVASIR_RETURN_IF_ERROR(c.Validate());
  return c;
}

// ---- Hugging Face config.json ----

// Reads an integer field: nullopt when absent or null; an error for another type.
absl::StatusOr<std::optional<int64_t>> JsonInt(const json& j, const char* field) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return std::optional<int64_t>();
  if (it->is_number_unsigned()) {
    const uint64_t u = it->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat("\"", field, "\" is out of range"));
    }
    return std::optional<int64_t>(static_cast<int64_t>(u));
  }
  if (it->is_number_integer()) return std::optional<int64_t>(it->get<int64_t>());
  if (it->is_number_float()) {
    const double d = it->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e15) {
      return std::optional<int64_t>(static_cast<int64_t>(d));
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("\"", field, "\" is not an integer"));
}

absl::StatusOr<int32_t> JsonInt32(const json& j, const char* field, std::optional<int32_t> dflt) {
  KVASIR_ASSIGN_OR_RETURN(std::optional<int64_t> v, JsonInt(j, field));
  if (!v.has_value()) {
    if (dflt.has_value()) return *dflt;
    return absl::InvalidArgumentError(absl::StrCat("missing \"", field, "\""));
  }
  if (*v < std::numeric_limits<int32_t>::min() || *v > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("\"", field, "\" = ", *v, " is out of range"));
  }
  return static_cast<int32_t>(*v);
}

absl::StatusOr<float> JsonFloat(const json& j, const char* field, float dflt) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_number()) {
    return absl::InvalidArgumentError(absl::StrCat("\"", field, "\" is not a number"));
  }
  return static_cast<float>(it->get<double>());
}

absl::StatusOr<bool> JsonBool(const json& j, const char* field, bool dflt) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat("\"", field, "\" is not a boolean"));
  }
  return it->get<bool>();
}

absl::Status CheckHfArchitecture(const json& j) {
  std::string first_arch;
  auto archs = j.find("architectures");
  if (archs != j.end() && !archs->is_null()) {
    if (!archs->is_array()) return absl::InvalidArgumentError("\"architectures\" is not an array");
    for (const json& a : *archs) {
      if (!a.is_string()) return absl::InvalidArgumentError("\"architectures\" holds a non-string");
      const std::string& name = a.get_ref<const std::string&>();
      if (name == "LlamaForCausalLM" || name == "MistralForCausalLM") return absl::OkStatus();
      if (first_arch.empty()) first_arch = name;
    }
  }
  auto type = j.find("model_type");
  if (type != j.end() && !type->is_null()) {
    if (!type->is_string()) return absl::InvalidArgumentError("\"model_type\" is not a string");
    const std::string& t = type->get_ref<const std::string&>();
    if (t == "llama" || t == "mistral") return absl::OkStatus();
    if (first_arch.empty()) first_arch = t;
  }
  return Unsupported(first_arch.empty() ? "unknown" : first_arch);
}

absl::StatusOr<float> HfRopeScale(const json& j) {
  auto rs = j.find("rope_scaling");
  if (rs == j.end() || rs->is_null()) return 1.0f;
  if (!rs->is_object()) return absl::InvalidArgumentError("\"rope_scaling\" is not an object");
  std::string type;
  for (const char* field : {"rope_type", "type"}) {
    auto t = rs->find(field);
    if (t != rs->end() && t->is_string()) {
      type = t->get<std::string>();
      break;
    }
  }
  if (type == "default") return 1.0f;
  if (type != "linear") {
    return absl::InvalidArgumentError(absl::StrCat(
        "rope_scaling type '", type, "' is not supported (Kvasir implements linear scaling)"));
  }
  auto f = rs->find("factor");
  if (f == rs->end() || !f->is_number()) {
    return absl::InvalidArgumentError("rope_scaling type linear needs a numeric \"factor\"");
  }
  return static_cast<float>(f->get<double>());
}

absl::StatusOr<ModelConfig> ConfigFromHfJsonImpl(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  KVASIR_RETURN_IF_ERROR(CheckHfArchitecture(j));

  ModelConfig c;
  c.architecture = "llama";
  c.rope_style = RopeStyle::kHalfSplit;
  KVASIR_ASSIGN_OR_RETURN(c.n_embd, JsonInt32(j, "hidden_size", std::nullopt));
  KVASIR_ASSIGN_OR_RETURN(c.n_ff, JsonInt32(j, "intermediate_size", std::nullopt));
  KVASIR_ASSIGN_OR_RETURN(c.n_layer, JsonInt32(j, "num_hidden_layers", std::nullopt));
  KVASIR_ASSIGN_OR_RETURN(c.n_head, JsonInt32(j, "num_attention_heads", std::nullopt));
  KVASIR_ASSIGN_OR_RETURN(c.n_vocab, JsonInt32(j, "vocab_size", std::nullopt));
  KVASIR_ASSIGN_OR_RETURN(c.n_head_kv, JsonInt32(j, "num_key_value_heads", c.n_head));
  KVASIR_ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, JsonInt(j, "head_dim"));
  if (!head_dim.has_value() && c.n_head > 0 && c.n_embd % c.n_head != 0) {
    return absl::InvalidArgumentError(absl::StrCat("hidden_size ", c.n_embd,
                                                   " is not a multiple of num_attention_heads ",
                                                   c.n_head, " and head_dim is absent"));
  }
  KVASIR_ASSIGN_OR_RETURN(c.head_dim,
                          JsonInt32(j, "head_dim", c.n_head > 0 ? c.n_embd / c.n_head : 0));
  c.n_rot = c.head_dim;
  KVASIR_ASSIGN_OR_RETURN(c.context_length,
                          JsonInt32(j, "max_position_embeddings", kDefaultContext));
  KVASIR_ASSIGN_OR_RETURN(c.rms_eps, JsonFloat(j, "rms_norm_eps", kDefaultHfRmsEps));
  KVASIR_ASSIGN_OR_RETURN(c.rope_freq_base, JsonFloat(j, "rope_theta", kDefaultFreqBase));
  KVASIR_ASSIGN_OR_RETURN(c.rope_scale, HfRopeScale(j));
  KVASIR_ASSIGN_OR_RETURN(c.tied_embeddings, JsonBool(j, "tie_word_embeddings", false));

  auto act = j.find("hidden_act");
  if (act != j.end() && !act->is_null() &&
      (!act->is_string() || act->get<std::string>() != "silu")) {
    return absl::InvalidArgumentError(
        absl::StrCat("hidden_act ", act->dump(), " is not supported (Llama uses silu)"));
  }
  for (const char* bias : {"attention_bias", "mlp_bias"}) {
    KVASIR_ASSIGN_OR_RETURN(bool has_bias, JsonBool(j, bias, false));
    if (has_bias) {
      return absl::InvalidArgumentError(absl::StrCat("\"", bias, "\": true is not supported"));
    }
  }
  // Mistral's sliding window: within the window attention is ordinary, so serve that much.
  KVASIR_ASSIGN_OR_RETURN(std::optional<int64_t> window, JsonInt(j, "sliding_window"));
  if (window.has_value() && *window > 0 && *window < c.context_length) {
    KVASIR_LOG_SUBSYS(WARN, kModel, "sliding_window %d: context length limited from %d to %d",
                      static_cast<int>(*window), c.context_length, static_cast<int>(*window));
    c.context_length = static_cast<int32_t>(*window);
  }
  KVASIR_RETURN_IF_ERROR(c.Validate());
  return c;
}

}  // namespace

absl::Status ModelConfig::Validate() const {
  auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("invalid model config: ", parts...));
  };
  const std::pair<const char*, int32_t> positives[] = {
      {"n_vocab", n_vocab}, {"n_embd", n_embd},       {"n_layer", n_layer},
      {"n_head", n_head},   {"n_head_kv", n_head_kv}, {"head_dim", head_dim},
      {"n_ff", n_ff},       {"n_rot", n_rot},         {"context_length", context_length}};
  for (const auto& [field, value] : positives) {
    if (value <= 0) return bad(field, " = ", value, " must be positive");
  }
  if (n_head % n_head_kv != 0) {
    return bad("n_head ", n_head, " is not a multiple of n_head_kv ", n_head_kv);
  }
  if (head_dim % 2 != 0) return bad("head_dim ", head_dim, " must be even");
  if (n_rot % 2 != 0 || n_rot > head_dim) {
    return bad("n_rot ", n_rot, " must be even and at most head_dim ", head_dim);
  }
  if (static_cast<int64_t>(n_head) * head_dim > (int64_t{1} << 24)) {
    return bad("n_head * head_dim = ", static_cast<int64_t>(n_head) * head_dim, " is too large");
  }
  if (!(std::isfinite(rms_eps) && rms_eps > 0)) return bad("rms_eps ", rms_eps, " must be > 0");
  if (!(std::isfinite(rope_freq_base) && rope_freq_base > 0)) {
    return bad("rope_freq_base ", rope_freq_base, " must be > 0");
  }
  if (!(std::isfinite(rope_scale) && rope_scale > 0)) {
    return bad("rope_scale ", rope_scale, " must be > 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ConfigFromGguf(const GgufFile& gguf) {
  absl::StatusOr<ModelConfig> c = ConfigFromGgufImpl(gguf);
  if (!c.ok()) return Annotate(c.status(), gguf.name());
  return c;
}

absl::StatusOr<ModelConfig> ConfigFromHfJson(std::string_view json_text) {
  absl::StatusOr<ModelConfig> c = ConfigFromHfJsonImpl(json_text);
  if (!c.ok()) return Annotate(c.status(), "config.json");
  return c;
}

}  // namespace kvasir::model
