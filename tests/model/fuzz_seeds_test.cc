// The fuzz seeds of gguf_fuzz and safetensors_fuzz are generated here from the builders. The test
// checks that the committed files are those bytes, are small, and parse; run it with
// KVASIR_WRITE_FUZZ_SEEDS=1 to (re)write them after changing a builder.
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "model/gguf.h"
#include "model/model_config.h"
#include "model/safetensors.h"
#include "tests/testing/gguf_builder.h"
#include "tests/testing/paths.h"
#include "tests/testing/safetensors_builder.h"

namespace kvasir::model {
namespace {

using ::kvasir::testing::GgufBuilder;
using ::kvasir::testing::GgufType;
using ::kvasir::testing::SafetensorsBuilder;

constexpr size_t kMaxSeedBytes = 16 << 10;

std::vector<std::pair<std::string, std::vector<uint8_t>>> GgufSeeds() {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> seeds;
  {
    kvasir::testing::TinyLlamaSpec spec;
    spec.n_vocab = 8;
    spec.n_embd = 8;
    spec.n_layer = 1;
    spec.n_head = 2;
    spec.n_head_kv = 1;
    spec.n_ff = 8;
    seeds.emplace_back("tiny_llama.gguf", kvasir::testing::TinyLlamaGguf(spec).Build());
  }
  {
    GgufBuilder b;
    b.AddU8("u8", 7)
        .AddI8("i8", -7)
        .AddU16("u16", 700)
        .AddI16("i16", -700)
        .AddU32("u32", 70000)
        .AddI32("i32", -70000)
        .AddF32("f32", 0.5f)
        .AddBool("bool", true)
        .AddString("str", "seed")
        .AddU64("u64", 1ULL << 40)
        .AddI64("i64", -(1LL << 40))
        .AddF64("f64", 0.25)
        .AddArray("ints", GgufType::kI32, std::vector<int32_t>{1, -2, 3})
        .AddStringArray("strs", {"a", "bc", ""})
        .AddRaw("nested", GgufType::kArray,
                GgufBuilder::ArrayOfPayloads(
                    {GgufBuilder::ArrayPayload(GgufType::kU8, std::vector<uint8_t>{1, 2}),
                     GgufBuilder::StringArrayPayload({"x"})}));
    seeds.emplace_back("all_types.gguf", b.Build());
  }
  {
    GgufBuilder b;
    b.SetVersion(2).SetAlignment(64);
    b.AddString("general.architecture", "llama");
    b.AddTensor("q4_0", 2, {64, 2}, std::vector<uint8_t>(4 * 18, 0x21));
    b.AddTensor("q8_0", 8, {32, 1}, std::vector<uint8_t>(34, 0x42));
    b.AddTensor("f16", 1, {3}, std::vector<uint8_t>(6, 0x3c));
    seeds.emplace_back("v2_quantized.gguf", b.Build());
  }
  return seeds;
}

std::vector<std::pair<std::string, std::vector<uint8_t>>> SafetensorsSeeds() {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> seeds;
  SafetensorsBuilder a;
  a.AddF32("w", {2, 2}, {1, 2, 3, 4})
      .Add("b", "BF16", {2}, SafetensorsBuilder::Bf16Bytes({1, -1}))
      .Add("i", "I64", {1}, std::vector<uint8_t>(8, 1))
      .AddMetadata("format", "pt");
  seeds.emplace_back("small.safetensors", a.Build());
  kvasir::testing::TinyLlamaSpec spec;
  spec.n_vocab = 4;
  spec.n_embd = 4;
  spec.n_layer = 1;
  spec.n_head = 2;
  spec.n_head_kv = 1;
  spec.n_ff = 4;
  seeds.emplace_back("tiny_llama.safetensors", kvasir::testing::TinyLlamaSafetensors(spec).Build());
  return seeds;
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void CheckSeeds(const std::string& folder,
                const std::vector<std::pair<std::string, std::vector<uint8_t>>>& seeds, bool gguf) {
  const bool write = std::getenv("KVASIR_WRITE_FUZZ_SEEDS") != nullptr;
  for (const auto& [name, bytes] : seeds) {
    const std::string path = kvasir::testing::RepoPath(folder + "/" + name);
    if (write) {
      ASSERT_TRUE(GgufBuilder::WriteFile(path, bytes)) << path;
    }
    EXPECT_LT(bytes.size(), kMaxSeedBytes) << name;
    EXPECT_EQ(ReadAll(path), bytes) << path << " is stale: rerun with KVASIR_WRITE_FUZZ_SEEDS=1";
    if (gguf) {
      absl::StatusOr<GgufFile> f = GgufFile::Parse(bytes, name);
      EXPECT_TRUE(f.ok()) << f.status();
    } else {
      absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(bytes, name);
      EXPECT_TRUE(f.ok()) << f.status();
    }
  }
}

TEST(FuzzSeedsTest, GgufSeedsAreCurrentAndValid) {
  CheckSeeds("tests/model/fuzz_seeds/gguf", GgufSeeds(), /*gguf=*/true);
  // The llama seed also yields a config, so the fuzzer reaches ConfigFromGguf's success path.
  const std::vector<uint8_t> llama = GgufSeeds()[0].second;
  absl::StatusOr<GgufFile> f = GgufFile::Parse(llama);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(ConfigFromGguf(*f).ok());
}

TEST(FuzzSeedsTest, SafetensorsSeedsAreCurrentAndValid) {
  CheckSeeds("tests/model/fuzz_seeds/safetensors", SafetensorsSeeds(), /*gguf=*/false);
}

}  // namespace
}  // namespace kvasir::model
