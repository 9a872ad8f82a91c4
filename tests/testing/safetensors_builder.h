// Builds safetensors files in memory for tests, packed in insertion order, with hooks to make
// them lie (wrong offsets, a raw header text, a wrong header length). Also writes small Hugging
// Face Llama directories (config.json + model.safetensors) from a TinyLlamaSpec, into a
// ScopedTempDir when the test wants one.
//
//   SafetensorsBuilder b;
//   b.AddF32("model.norm.weight", {4}, {1, 1, 1, 1}).AddMetadata("format", "pt");
//   std::vector<uint8_t> bytes = b.Build();
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/testing/gguf_builder.h"

namespace kvasir::testing {

class SafetensorsBuilder {
 public:
  struct Entry {
    std::string name;
    std::string dtype;  // "F32", "BF16", ... (written as given, so invalid ones are possible)
    std::vector<int64_t> shape;
    std::vector<uint8_t> data;
    std::optional<std::pair<uint64_t, uint64_t>> offsets_override;  // data_offsets to write
  };

  SafetensorsBuilder& Add(Entry e) {
    entries_.push_back(std::move(e));
    return *this;
  }
  SafetensorsBuilder& Add(std::string name, std::string dtype, std::vector<int64_t> shape,
                          std::vector<uint8_t> data) {
    return Add(Entry{std::move(name), std::move(dtype), std::move(shape), std::move(data)});
  }
  SafetensorsBuilder& AddF32(std::string name, std::vector<int64_t> shape,
                             const std::vector<float>& values) {
    std::vector<uint8_t> data(values.size() * 4);
    if (!values.empty()) std::memcpy(data.data(), values.data(), data.size());
    return Add(std::move(name), "F32", std::move(shape), std::move(data));
  }
  // bf16 with round-to-nearest-even (NaNs stay quiet NaNs).
  static std::vector<uint8_t> Bf16Bytes(const std::vector<float>& values) {
    std::vector<uint8_t> out(values.size() * 2);
    for (size_t i = 0; i < values.size(); ++i) {
      uint32_t u;
      std::memcpy(&u, &values[i], 4);
      uint16_t h;
      if ((u & 0x7fffffffu) > 0x7f800000u) {
        h = static_cast<uint16_t>((u >> 16) | 64);
      } else {
        h = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
      }
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
    return out;
  }
  SafetensorsBuilder& AddMetadata(std::string key, std::string value) {
    metadata_.emplace_back(std::move(key), std::move(value));
    return *this;
  }
  Entry& entry(size_t i) { return entries_[i]; }
  size_t num_entries() const { return entries_.size(); }
  // The entry named `name`, or nullptr.
  Entry* Find(const std::string& name) {
    for (Entry& e : entries_) {
      if (e.name == name) return &e;
    }
    return nullptr;
  }

  // Header text to write instead of the generated one.
  SafetensorsBuilder& SetRawHeader(std::string header) {
    raw_header_ = std::move(header);
    return *this;
  }
  // Header length field to write instead of the real one.
  SafetensorsBuilder& OverrideHeaderLength(uint64_t n) {
    header_length_override_ = n;
    return *this;
  }
  // Spaces appended to the header (the format allows right padding).
  SafetensorsBuilder& SetHeaderPadding(size_t n) {
    padding_ = n;
    return *this;
  }

  std::string HeaderJson() const {
    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    if (!metadata_.empty()) {
      nlohmann::ordered_json m = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata_) m[k] = v;
      h["__metadata__"] = m;
    }
    uint64_t offset = 0;
    for (const Entry& e : entries_) {
      const uint64_t begin = e.offsets_override ? e.offsets_override->first : offset;
      const uint64_t end = e.offsets_override ? e.offsets_override->second : offset + e.data.size();
      h[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {begin, end}}};
      offset += e.data.size();
    }
    return h.dump();
  }

  std::vector<uint8_t> Build() const {
    std::string header = raw_header_ ? *raw_header_ : HeaderJson();
    header.append(padding_, ' ');
    const uint64_t n = header_length_override_.value_or(header.size());
    size_t total = 8 + header.size();
    for (const Entry& e : entries_) total += e.data.size();
    std::vector<uint8_t> out(total);
    std::memcpy(out.data(), &n, 8);
    std::memcpy(out.data() + 8, header.data(), header.size());
    size_t at = 8 + header.size();
    for (const Entry& e : entries_) {
      if (!e.data.empty()) std::memcpy(out.data() + at, e.data.data(), e.data.size());
      at += e.data.size();
    }
    return out;
  }

 private:
  std::vector<Entry> entries_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  std::optional<std::string> raw_header_;
  std::optional<uint64_t> header_length_override_;
  size_t padding_ = 0;
};

// A fresh folder under $TMPDIR (or /tmp), removed with its contents on destruction.
class ScopedTempDir {
 public:
  ScopedTempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/kvasir_test_XXXXXX";
    if (::mkdtemp(templ.data()) != nullptr) path_ = templ;
  }
  ~ScopedTempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  // Empty when the folder could not be made.
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline bool WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  return static_cast<bool>(out);
}

// config.json text of a LlamaForCausalLM with the sizes of `s`.
inline std::string TinyLlamaHfConfig(const TinyLlamaSpec& s) {
  nlohmann::ordered_json c = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"hidden_size", s.n_embd},
      {"intermediate_size", s.n_ff},
      {"num_hidden_layers", s.n_layer},
      {"num_attention_heads", s.n_head},
      {"num_key_value_heads", s.n_head_kv},
      {"max_position_embeddings", s.context_length},
      {"rms_norm_eps", s.rms_eps},
      {"rope_theta", s.freq_base},
      {"rope_scaling", nullptr},
      {"vocab_size", s.n_vocab},
      {"tie_word_embeddings", s.tied},
      {"hidden_act", "silu"},
      {"torch_dtype", "float32"},
  };
  return c.dump(2);
}

// The weights of a LlamaForCausalLM with the sizes of `s` (HF names and [out, in] shapes), F32
// uniform in [-scale, scale] from s.seed; no lm_head.weight when s.tied.
inline SafetensorsBuilder TinyLlamaSafetensors(const TinyLlamaSpec& s) {
  std::mt19937_64 rng(s.seed);
  std::uniform_real_distribution<float> dist(-s.scale, s.scale);
  auto random = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = dist(rng);
    return v;
  };
  const int64_t e = s.n_embd;
  const int64_t hd = s.n_embd / s.n_head;
  const int64_t q = s.n_head * hd;
  const int64_t kv = s.n_head_kv * hd;
  const int64_t f = s.n_ff;
  SafetensorsBuilder b;
  b.AddMetadata("format", "pt");
  b.AddF32("model.embed_tokens.weight", {s.n_vocab, e}, random(s.n_vocab * e));
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string p = std::string("model.layers.").append(std::to_string(l)).append(".");
    b.AddF32(p + "input_layernorm.weight", {e}, random(e));
    b.AddF32(p + "self_attn.q_proj.weight", {q, e}, random(q * e));
    b.AddF32(p + "self_attn.k_proj.weight", {kv, e}, random(kv * e));
    b.AddF32(p + "self_attn.v_proj.weight", {kv, e}, random(kv * e));
    b.AddF32(p + "self_attn.o_proj.weight", {e, q}, random(e * q));
    b.AddF32(p + "post_attention_layernorm.weight", {e}, random(e));
    b.AddF32(p + "mlp.gate_proj.weight", {f, e}, random(f * e));
    b.AddF32(p + "mlp.up_proj.weight", {f, e}, random(f * e));
    b.AddF32(p + "mlp.down_proj.weight", {e, f}, random(e * f));
  }
  b.AddF32("model.norm.weight", {e}, random(e));
  if (!s.tied) b.AddF32("lm_head.weight", {s.n_vocab, e}, random(s.n_vocab * e));
  return b;
}

// Writes config.json and model.safetensors of TinyLlama `s` into the existing folder `dir`.
inline bool WriteTinyLlamaHfDir(const std::string& dir, const TinyLlamaSpec& s) {
  return WriteTextFile(dir + "/config.json", TinyLlamaHfConfig(s)) &&
         GgufBuilder::WriteFile(dir + "/model.safetensors", TinyLlamaSafetensors(s).Build());
}

}  // namespace kvasir::testing
