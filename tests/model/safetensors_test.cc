// Tests of the safetensors reader: good files, every dtype, headers that lie (size, range,
// overlap, dtype, length, JSON), truncation, and checkpoints of one file, of shards with an
// index, and of loose *.safetensors files.
#include "model/safetensors.h"

#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/safetensors_builder.h"

namespace kvasir::model {
namespace {

using ::kvasir::testing::GgufBuilder;
using ::kvasir::testing::SafetensorsBuilder;
using ::kvasir::testing::ScopedTempDir;
using ::kvasir::testing::WriteTextFile;
using ::testing::HasSubstr;

std::vector<uint8_t> Bytes(size_t n, uint8_t seed = 1) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

SafetensorsBuilder GoodBuilder() {
  SafetensorsBuilder b;
  b.AddF32("a", {2, 3}, {1, 2, 3, 4, 5, 6});
  b.Add("b", "BF16", {4}, SafetensorsBuilder::Bf16Bytes({1.0f, -2.0f, 0.5f, 3.0f}));
  b.Add("empty", "F16", {0, 5}, {});
  b.AddMetadata("format", "pt");
  return b;
}

void ExpectInvalid(const std::vector<uint8_t>& bytes, const std::string& what) {
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(bytes, "t.safetensors");
  ASSERT_FALSE(f.ok()) << "expected an error about: " << what;
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
  const std::string msg(f.status().message());
  EXPECT_THAT(msg, HasSubstr("t.safetensors: "));
  EXPECT_THAT(msg, HasSubstr(what));
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

TEST(SafetensorsTest, ParsesGoodFile) {
  const std::vector<uint8_t> bytes = GoodBuilder().Build();
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(bytes, "good");
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->tensors().size(), 3u);
  const SafeTensorInfo* a = f->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, SafeDType::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->size_bytes, 24u);
  float v;
  std::memcpy(&v, a->data + 4 * 5, 4);
  EXPECT_EQ(v, 6.0f);
  const SafeTensorInfo* b = f->Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, SafeDType::kBF16);
  EXPECT_EQ(b->data, a->data + 24);
  uint16_t h;
  std::memcpy(&h, b->data + 2, 2);
  EXPECT_EQ(h, 0xC000);  // -2.0 in bf16
  EXPECT_EQ(f->Find("empty")->size_bytes, 0u);
  EXPECT_EQ(f->Find("missing"), nullptr);
  ASSERT_EQ(f->metadata().size(), 1u);
  EXPECT_EQ(f->metadata()[0].first, "format");
  EXPECT_EQ(f->metadata()[0].second, "pt");
}

TEST(SafetensorsTest, AcceptsPaddedHeaderAndEmptyFile) {
  SafetensorsBuilder b = GoodBuilder();
  b.SetHeaderPadding(13);
  const std::vector<uint8_t> bytes = b.Build();  // outlives the file's views
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->tensors().size(), 3u);
  SafetensorsBuilder empty;
  const std::vector<uint8_t> empty_bytes = empty.Build();
  absl::StatusOr<SafetensorsFile> e = SafetensorsFile::Parse(empty_bytes);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(e->tensors().empty());
}

TEST(SafetensorsTest, EveryDType) {
  struct Row {
    const char* name;
    SafeDType type;
    int64_t size;
  };
  // The dtype list and sizes of the safetensors format.
  const Row rows[] = {{"BOOL", SafeDType::kBool, 1},     {"U8", SafeDType::kU8, 1},
                      {"I8", SafeDType::kI8, 1},         {"I16", SafeDType::kI16, 2},
                      {"U16", SafeDType::kU16, 2},       {"F16", SafeDType::kF16, 2},
                      {"BF16", SafeDType::kBF16, 2},     {"I32", SafeDType::kI32, 4},
                      {"U32", SafeDType::kU32, 4},       {"F32", SafeDType::kF32, 4},
                      {"F64", SafeDType::kF64, 8},       {"I64", SafeDType::kI64, 8},
                      {"U64", SafeDType::kU64, 8},       {"F8_E4M3", SafeDType::kF8E4M3, 1},
                      {"F8_E5M2", SafeDType::kF8E5M2, 1}};
  SafetensorsBuilder b;
  for (const Row& r : rows) b.Add(std::string("t_") + r.name, r.name, {3}, Bytes(3 * r.size));
  const std::vector<uint8_t> bytes = b.Build();  // outlives the file's views
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  for (const Row& r : rows) {
    const SafeTensorInfo* t = f->Find(std::string("t_") + r.name);
    ASSERT_NE(t, nullptr) << r.name;
    EXPECT_EQ(t->dtype, r.type) << r.name;
    EXPECT_EQ(SafeDTypeSize(r.type), r.size) << r.name;
    EXPECT_EQ(SafeDTypeName(r.type), r.name);
    EXPECT_EQ(t->size_bytes, static_cast<uint64_t>(3 * r.size));
  }
}

TEST(SafetensorsTest, RejectsSizeMismatch) {
  SafetensorsBuilder b = GoodBuilder();
  b.entry(0).shape = {2, 4};  // 32 bytes needed, 24 given
  ExpectInvalid(b.Build(),
                "tensor 'a': data_offsets [0, 24) hold 24 bytes but shape and F32 need 32");
}

TEST(SafetensorsTest, RejectsOutOfRange) {
  SafetensorsBuilder b = GoodBuilder();
  b.entry(1).offsets_override = {{1000, 1008}};
  ExpectInvalid(b.Build(), "run past the end of the data");
  SafetensorsBuilder c = GoodBuilder();
  c.entry(1).offsets_override = {{~uint64_t{0} - 3, ~uint64_t{0} + 5}};  // wraps: end < begin
  ExpectInvalid(c.Build(), "tensor 'b'");
}

TEST(SafetensorsTest, RejectsOverlap) {
  SafetensorsBuilder b = GoodBuilder();
  b.entry(1).offsets_override = {{16, 24}};  // inside a's [0, 24)
  ExpectInvalid(b.Build(), "overlaps tensor 'a'");
}

TEST(SafetensorsTest, RejectsBadDTypeAndShape) {
  SafetensorsBuilder b = GoodBuilder();
  b.entry(0).dtype = "F12";
  ExpectInvalid(b.Build(), "unknown dtype 'F12'");
  ExpectInvalid(SafetensorsBuilder()
                    .SetRawHeader(R"({"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})")
                    .Build(),
                "shape entries must be non-negative integers");
  ExpectInvalid(SafetensorsBuilder()
                    .SetRawHeader(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0]}})")
                    .Build(),
                "data_offsets");
  ExpectInvalid(
      SafetensorsBuilder().SetRawHeader(R"({"x":{"shape":[2],"data_offsets":[0,8]}})").Build(),
      "dtype");
  ExpectInvalid(SafetensorsBuilder()
                    .SetRawHeader(R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],)"
                                  R"("data_offsets":[0,0]}})")
                    .Build(),
                "overflows");
  ExpectInvalid(SafetensorsBuilder().SetRawHeader(R"({"x":[1,2]})").Build(),
                "entry is not an object");
}

TEST(SafetensorsTest, RejectsBadHeaderLength) {
  SafetensorsBuilder b = GoodBuilder();
  b.OverrideHeaderLength(1 << 20);
  ExpectInvalid(b.Build(), "header length 1048576 runs past the end of the file");
  SafetensorsBuilder c = GoodBuilder();
  c.OverrideHeaderLength(~uint64_t{0});
  ExpectInvalid(c.Build(), "runs past the end");
  ExpectInvalid({1, 0, 0}, "too short");
}

TEST(SafetensorsTest, RejectsNonJson) {
  ExpectInvalid(SafetensorsBuilder().SetRawHeader("{not json at all").Build(), "not valid JSON");
  ExpectInvalid(SafetensorsBuilder().SetRawHeader("[1, 2, 3]").Build(), "JSON object");
  ExpectInvalid(SafetensorsBuilder().SetRawHeader("{\"a\": \"\xff\xfe\"}").Build(),
                "not valid JSON");
  ExpectInvalid(SafetensorsBuilder().SetRawHeader(R"({"__metadata__": {"k": 1}})").Build(),
                "__metadata__ value of 'k' is not a string");
  ExpectInvalid(SafetensorsBuilder().SetRawHeader(R"({"__metadata__": 3})").Build(),
                "__metadata__ must be an object");
  ExpectInvalid(SafetensorsBuilder()
                    .SetRawHeader(R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                                  R"("x":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})")
                    .Build(),
                "duplicate tensor name 'x'");
}

TEST(SafetensorsTest, EveryTruncationIsAnError) {
  const std::vector<uint8_t> bytes = GoodBuilder().Build();
  ASSERT_TRUE(SafetensorsFile::Parse(bytes).ok());
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + n);
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(prefix, "cut");
    ASSERT_FALSE(f.ok()) << "prefix of " << n << " bytes parsed";
    ASSERT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(SafetensorsTest, OpensFileFromDisk) {
  ScopedTempDir dir;
  ASSERT_FALSE(dir.path().empty());
  ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("x.safetensors"), GoodBuilder().Build()));
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Open(dir.File("x.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->name(), dir.File("x.safetensors"));
  EXPECT_EQ(f->tensors().size(), 3u);
  absl::StatusOr<SafetensorsFile> missing = SafetensorsFile::Open(dir.File("nope.safetensors"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsCheckpointTest, SingleFile) {
  ScopedTempDir dir;
  ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("model.safetensors"), GoodBuilder().Build()));
  absl::StatusOr<SafetensorsCheckpoint> c = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_files(), 1u);
  EXPECT_EQ(c->TensorNames(), (std::vector<std::string>{"a", "b", "empty"}));
  ASSERT_NE(c->Find("b"), nullptr);
  EXPECT_EQ(c->Find("b")->dtype, SafeDType::kBF16);
  EXPECT_EQ(c->Find("zz"), nullptr);
}

// Three tensors over two shards, and an index naming them.
void WriteShards(const ScopedTempDir& dir) {
  SafetensorsBuilder s1;
  s1.AddF32("w1", {2}, {1, 2}).AddF32("w2", {1}, {3});
  SafetensorsBuilder s2;
  s2.AddF32("w3", {3}, {4, 5, 6});
  ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("model-00001-of-00002.safetensors"), s1.Build()));
  ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("model-00002-of-00002.safetensors"), s2.Build()));
}

TEST(SafetensorsCheckpointTest, ShardedWithIndex) {
  ScopedTempDir dir;
  WriteShards(dir);
  ASSERT_TRUE(WriteTextFile(dir.File("model.safetensors.index.json"), R"({
    "metadata": {"total_size": 24},
    "weight_map": {"w1": "model-00001-of-00002.safetensors",
                   "w2": "model-00001-of-00002.safetensors",
                   "w3": "model-00002-of-00002.safetensors"}})"));
  absl::StatusOr<SafetensorsCheckpoint> c = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_files(), 2u);  // each shard opened once
  EXPECT_EQ(c->TensorNames(), (std::vector<std::string>{"w1", "w2", "w3"}));
  float v;
  std::memcpy(&v, c->Find("w3")->data + 8, 4);
  EXPECT_EQ(v, 6.0f);
  std::memcpy(&v, c->Find("w2")->data, 4);
  EXPECT_EQ(v, 3.0f);
}

TEST(SafetensorsCheckpointTest, IndexErrors) {
  ScopedTempDir dir;
  WriteShards(dir);
  const std::string index = dir.File("model.safetensors.index.json");
  ASSERT_TRUE(
      WriteTextFile(index, R"({"weight_map": {"w3": "model-00001-of-00002.safetensors"}})"));
  absl::StatusOr<SafetensorsCheckpoint> c = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("tensor 'w3' is not in its shard 'model-00001-of-00002.safetensors'"));

  ASSERT_TRUE(WriteTextFile(index, R"({"weight_map": {"w1": "missing.safetensors"}})"));
  c = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("missing.safetensors"));

  ASSERT_TRUE(WriteTextFile(index, R"({"weight_map": {"w1": "../etc/passwd"}})"));
  c = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("not a plain file name"));

  ASSERT_TRUE(WriteTextFile(index, R"({"weight_map": {"w1": 5}})"));
  c = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("is not a file name"));

  ASSERT_TRUE(WriteTextFile(index, "{\"weight_map\": "));
  c = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("not a JSON object"));
}

TEST(SafetensorsCheckpointTest, LooseFilesAndErrors) {
  ScopedTempDir dir;
  WriteShards(dir);
  absl::StatusOr<SafetensorsCheckpoint> c = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_files(), 2u);
  EXPECT_EQ(c->TensorNames().size(), 3u);

  SafetensorsBuilder dup;
  dup.AddF32("w1", {1}, {9});
  ASSERT_TRUE(GgufBuilder::WriteFile(dir.File("zz.safetensors"), dup.Build()));
  c = SafetensorsCheckpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("tensor 'w1' is also in another file"));

  ScopedTempDir empty;
  c = SafetensorsCheckpoint::Open(empty.path());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  c = SafetensorsCheckpoint::Open(empty.File("no_such_dir"));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvasir::model
