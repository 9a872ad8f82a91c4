// Builds GGUF files in memory for tests: metadata of every value type (nested arrays included),
// tensors of any ggml type with caller-given bytes, laid out as ggml writes them. Fields can be
// overridden after the fact to make deliberately broken files, and Build() reports where each
// field landed so a test can patch bytes. TinyLlamaGguf() writes a small random llama model.
//
//   GgufBuilder b;
//   b.AddString("general.architecture", "llama").AddU32("llama.block_count", 2);
//   b.AddF32Tensor("output_norm.weight", {8}, std::vector<float>(8, 1.0f));
//   std::vector<uint8_t> bytes = b.Build();
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace kvasir::testing {

// GGUF metadata value type ids (gguf.h GgufValueType, repeated so the builder needs no library).
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// Little-endian byte appenders.
class ByteWriter {
 public:
  template <typename T>
  ByteWriter& Put(T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    bytes_.insert(bytes_.end(), b, b + sizeof(T));
    return *this;
  }
  ByteWriter& PutBytes(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    bytes_.insert(bytes_.end(), c, c + n);
    return *this;
  }
  ByteWriter& PutBytes(const std::vector<uint8_t>& v) { return PutBytes(v.data(), v.size()); }
  // gguf_string: u64 length + bytes.
  ByteWriter& PutString(std::string_view s) {
    Put<uint64_t>(s.size());
    return PutBytes(s.data(), s.size());
  }
  size_t size() const { return bytes_.size(); }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

class GgufBuilder {
 public:
  struct Tensor {
    std::string name;
    uint32_t ggml_type = 0;
    std::vector<int64_t> ne;  // ggml order
    std::vector<uint8_t> data;
    std::optional<uint64_t> offset_override;  // written instead of the computed offset
    std::optional<uint32_t> n_dims_override;  // written instead of ne.size()
  };
  // Where Build() put things (byte positions in the output).
  struct Layout {
    size_t version_at = 0;
    size_t tensor_count_at = 0;
    size_t kv_count_at = 0;
    std::vector<size_t> kv_at;           // each key's length field
    std::vector<size_t> tensor_info_at;  // each tensor name's length field
    std::vector<size_t> tensor_offset_at;
    size_t data_start = 0;
    std::vector<uint64_t> tensor_offset;  // relative to data_start
  };

  GgufBuilder& SetVersion(uint32_t v) {
    version_ = v;
    return *this;
  }
  // Writes general.alignment (u32) and lays the data out with it.
  GgufBuilder& SetAlignment(uint32_t a) {
    alignment_ = a;
    return AddU32("general.alignment", a);
  }
  // Counts written in the header instead of the real ones.
  GgufBuilder& OverrideCounts(std::optional<uint64_t> tensors, std::optional<uint64_t> kvs) {
    tensor_count_override_ = tensors;
    kv_count_override_ = kvs;
    return *this;
  }

  // Scalars.
  GgufBuilder& AddU8(std::string_view k, uint8_t v) { return Scalar(k, GgufType::kU8, v); }
  GgufBuilder& AddI8(std::string_view k, int8_t v) { return Scalar(k, GgufType::kI8, v); }
  GgufBuilder& AddU16(std::string_view k, uint16_t v) { return Scalar(k, GgufType::kU16, v); }
  GgufBuilder& AddI16(std::string_view k, int16_t v) { return Scalar(k, GgufType::kI16, v); }
  GgufBuilder& AddU32(std::string_view k, uint32_t v) { return Scalar(k, GgufType::kU32, v); }
  GgufBuilder& AddI32(std::string_view k, int32_t v) { return Scalar(k, GgufType::kI32, v); }
  GgufBuilder& AddF32(std::string_view k, float v) { return Scalar(k, GgufType::kF32, v); }
  GgufBuilder& AddBool(std::string_view k, bool v) {
    return Scalar(k, GgufType::kBool, static_cast<uint8_t>(v ? 1 : 0));
  }
  GgufBuilder& AddU64(std::string_view k, uint64_t v) { return Scalar(k, GgufType::kU64, v); }
  GgufBuilder& AddI64(std::string_view k, int64_t v) { return Scalar(k, GgufType::kI64, v); }
  GgufBuilder& AddF64(std::string_view k, double v) { return Scalar(k, GgufType::kF64, v); }
  GgufBuilder& AddString(std::string_view k, std::string_view v) {
    ByteWriter w;
    w.PutString(v);
    return AddRaw(k, GgufType::kString, std::move(w.bytes()));
  }
  // Arrays of scalars: T must match `elem` (uint8_t for kBool).
  template <typename T>
  GgufBuilder& AddArray(std::string_view k, GgufType elem, const std::vector<T>& v) {
    return AddRaw(k, GgufType::kArray, ArrayPayload(elem, v));
  }
  GgufBuilder& AddStringArray(std::string_view k, const std::vector<std::string>& v) {
    return AddRaw(k, GgufType::kArray, StringArrayPayload(v));
  }
  // Any value: `payload` is the bytes after the value type (use the *Payload helpers for arrays,
  // nested ones included: an array of arrays is ArrayOfPayloads(arrays)).
  GgufBuilder& AddRaw(std::string_view k, GgufType type, std::vector<uint8_t> payload) {
    return AddRawType(k, static_cast<uint32_t>(type), std::move(payload));
  }
  // Same with a raw (possibly invalid) type id.
  GgufBuilder& AddRawType(std::string_view k, uint32_t type, std::vector<uint8_t> payload) {
    kvs_.push_back({std::string(k), type, std::move(payload)});
    return *this;
  }

  template <typename T>
  static std::vector<uint8_t> ArrayPayload(GgufType elem, const std::vector<T>& v) {
    ByteWriter w;
    w.Put<uint32_t>(static_cast<uint32_t>(elem)).Put<uint64_t>(v.size());
    for (const T& x : v) w.Put<T>(x);
    return std::move(w.bytes());
  }
  static std::vector<uint8_t> StringArrayPayload(const std::vector<std::string>& v) {
    ByteWriter w;
    w.Put<uint32_t>(static_cast<uint32_t>(GgufType::kString)).Put<uint64_t>(v.size());
    for (const std::string& s : v) w.PutString(s);
    return std::move(w.bytes());
  }
  // An array whose elements are arrays (each given as its own ArrayPayload).
  static std::vector<uint8_t> ArrayOfPayloads(const std::vector<std::vector<uint8_t>>& arrays) {
    ByteWriter w;
    w.Put<uint32_t>(static_cast<uint32_t>(GgufType::kArray)).Put<uint64_t>(arrays.size());
    for (const auto& a : arrays) w.PutBytes(a);
    return std::move(w.bytes());
  }

  // Tensors, in file order. `data` must have the size the type and shape imply (it is written
  // as given, so a wrong size makes a broken file).
  GgufBuilder& AddTensor(Tensor t) {
    tensors_.push_back(std::move(t));
    return *this;
  }
  GgufBuilder& AddTensor(std::string_view name, uint32_t ggml_type, std::vector<int64_t> ne,
                         std::vector<uint8_t> data) {
    return AddTensor(Tensor{std::string(name), ggml_type, std::move(ne), std::move(data)});
  }
  GgufBuilder& AddF32Tensor(std::string_view name, std::vector<int64_t> ne,
                            const std::vector<float>& values) {
    std::vector<uint8_t> data(values.size() * sizeof(float));
    if (!values.empty()) std::memcpy(data.data(), values.data(), data.size());
    return AddTensor(name, /*ggml_type=*/0, std::move(ne), std::move(data));
  }
  Tensor& tensor(size_t i) { return tensors_[i]; }
  size_t num_tensors() const { return tensors_.size(); }
  // The tensor named `name`, or nullptr.
  Tensor* FindTensor(std::string_view name) {
    for (Tensor& t : tensors_) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }

  // The file. Each tensor's data is padded to the alignment, the last one included (as ggml).
  std::vector<uint8_t> Build() {
    layout_ = Layout{};
    ByteWriter w;
    w.PutBytes("GGUF", 4);
    layout_.version_at = w.size();
    w.Put<uint32_t>(version_);
    layout_.tensor_count_at = w.size();
    w.Put<uint64_t>(tensor_count_override_.value_or(tensors_.size()));
    layout_.kv_count_at = w.size();
    w.Put<uint64_t>(kv_count_override_.value_or(kvs_.size()));
    for (const Kv& kv : kvs_) {
      layout_.kv_at.push_back(w.size());
      w.PutString(kv.key).Put<uint32_t>(kv.type).PutBytes(kv.payload);
    }
    uint64_t offset = 0;
    for (const Tensor& t : tensors_) {
      layout_.tensor_info_at.push_back(w.size());
      w.PutString(t.name).Put<uint32_t>(t.n_dims_override.value_or(t.ne.size()));
      for (int64_t d : t.ne) w.Put<uint64_t>(static_cast<uint64_t>(d));
      w.Put<uint32_t>(t.ggml_type);
      layout_.tensor_offset_at.push_back(w.size());
      layout_.tensor_offset.push_back(offset);
      w.Put<uint64_t>(t.offset_override.value_or(offset));
      offset += Pad(t.data.size());
    }
    if (!tensors_.empty()) PadTo(w);
    layout_.data_start = w.size();
    for (const Tensor& t : tensors_) {
      w.PutBytes(t.data);
      PadTo(w);
    }
    return std::move(w.bytes());
  }
  const Layout& layout() const { return layout_; }

  static void Patch64(std::vector<uint8_t>& bytes, size_t at, uint64_t v) {
    std::memcpy(bytes.data() + at, &v, 8);
  }
  static void Patch32(std::vector<uint8_t>& bytes, size_t at, uint32_t v) {
    std::memcpy(bytes.data() + at, &v, 4);
  }
  static bool WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    return static_cast<bool>(out);
  }

 private:
  struct Kv {
    std::string key;
    uint32_t type;
    std::vector<uint8_t> payload;
  };
  template <typename T>
  GgufBuilder& Scalar(std::string_view k, GgufType type, T v) {
    ByteWriter w;
    w.Put<T>(v);
    return AddRaw(k, type, std::move(w.bytes()));
  }
  uint64_t Pad(uint64_t n) const { return (n + alignment_ - 1) / alignment_ * alignment_; }
  void PadTo(ByteWriter& w) const {
    while (w.size() % alignment_ != 0) w.Put<uint8_t>(0);
  }

  uint32_t version_ = 3;
  uint32_t alignment_ = 32;
  std::optional<uint64_t> tensor_count_override_;
  std::optional<uint64_t> kv_count_override_;
  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
  Layout layout_;
};

// A small llama model with random F32 weights (uniform in [-scale, scale], fixed seed), in GGUF
// layout (ne = [in, out]). With with_tokenizer, a minimal SentencePiece-style vocabulary
// (tokenizer.ggml.model "llama", tokens "t0", "t1", ..., all normal).
struct TinyLlamaSpec {
  int n_vocab = 32;
  int n_embd = 16;
  int n_layer = 2;
  int n_head = 4;
  int n_head_kv = 2;
  int n_ff = 24;
  int context_length = 64;
  float freq_base = 10000.0f;
  float rms_eps = 1e-5f;
  bool tied = false;  // no output.weight
  bool with_tokenizer = true;
  uint64_t seed = 1;
  float scale = 0.1f;
};

inline GgufBuilder TinyLlamaGguf(const TinyLlamaSpec& s) {
  GgufBuilder b;
  b.AddString("general.architecture", "llama").AddString("general.name", "tiny-llama");
  b.AddU32("llama.context_length", s.context_length)
      .AddU32("llama.embedding_length", s.n_embd)
      .AddU32("llama.block_count", s.n_layer)
      .AddU32("llama.feed_forward_length", s.n_ff)
      .AddU32("llama.attention.head_count", s.n_head)
      .AddU32("llama.attention.head_count_kv", s.n_head_kv)
      .AddF32("llama.attention.layer_norm_rms_epsilon", s.rms_eps)
      .AddF32("llama.rope.freq_base", s.freq_base)
      .AddU32("llama.vocab_size", s.n_vocab);
  if (s.with_tokenizer) {
    std::vector<std::string> tokens;
    std::vector<float> scores;
    std::vector<int32_t> types;
    for (int i = 0; i < s.n_vocab; ++i) {
      tokens.push_back(std::string("t").append(std::to_string(i)));
      scores.push_back(-static_cast<float>(i));
      types.push_back(1);
    }
    b.AddString("tokenizer.ggml.model", "llama")
        .AddStringArray("tokenizer.ggml.tokens", tokens)
        .AddArray("tokenizer.ggml.scores", GgufType::kF32, scores)
        .AddArray("tokenizer.ggml.token_type", GgufType::kI32, types);
  }
  std::mt19937_64 rng(s.seed);
  std::uniform_real_distribution<float> dist(-s.scale, s.scale);
  auto random = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = dist(rng);
    return v;
  };
  auto ones_ish = [&](int64_t n) {
    std::vector<float> v = random(n);
    for (float& x : v) x += 1.0f;
    return v;
  };
  const int64_t hd = s.n_embd / s.n_head;
  const int64_t q_rows = s.n_head * hd;
  const int64_t kv_rows = s.n_head_kv * hd;
  b.AddF32Tensor("token_embd.weight", {s.n_embd, s.n_vocab}, random(int64_t{s.n_embd} * s.n_vocab));
  for (int l = 0; l < s.n_layer; ++l) {
    const std::string p = std::string("blk.").append(std::to_string(l)).append(".");
    b.AddF32Tensor(p + "attn_norm.weight", {s.n_embd}, ones_ish(s.n_embd));
    b.AddF32Tensor(p + "attn_q.weight", {s.n_embd, q_rows}, random(s.n_embd * q_rows));
    b.AddF32Tensor(p + "attn_k.weight", {s.n_embd, kv_rows}, random(s.n_embd * kv_rows));
    b.AddF32Tensor(p + "attn_v.weight", {s.n_embd, kv_rows}, random(s.n_embd * kv_rows));
    b.AddF32Tensor(p + "attn_output.weight", {q_rows, s.n_embd}, random(q_rows * s.n_embd));
    b.AddF32Tensor(p + "ffn_norm.weight", {s.n_embd}, ones_ish(s.n_embd));
    b.AddF32Tensor(p + "ffn_gate.weight", {s.n_embd, s.n_ff}, random(int64_t{s.n_embd} * s.n_ff));
    b.AddF32Tensor(p + "ffn_up.weight", {s.n_embd, s.n_ff}, random(int64_t{s.n_embd} * s.n_ff));
    b.AddF32Tensor(p + "ffn_down.weight", {s.n_ff, s.n_embd}, random(int64_t{s.n_ff} * s.n_embd));
  }
  b.AddF32Tensor("output_norm.weight", {s.n_embd}, ones_ish(s.n_embd));
  if (!s.tied) {
    b.AddF32Tensor("output.weight", {s.n_embd, s.n_vocab}, random(int64_t{s.n_embd} * s.n_vocab));
  }
  return b;
}

}  // namespace kvasir::testing
