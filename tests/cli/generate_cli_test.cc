// `kvasir generate` as a user runs it: the real binary in a child process, its exit code, stdout
// and stderr.
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli/cli_runner.h"
#include "tests/testing/paths.h"
#include "tests/testing/safetensors_builder.h"

namespace kvasir::cli {
namespace {

using cli_test::Kvasir;
using cli_test::ReadAll;
using cli_test::RunResult;
using cli_test::TempDir;

int CountLines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

const std::string kStories = testing::SharedPath("models/stories260K.gguf");

TEST(GenerateCliTest, JsonGreedyMatchesGolden) {
  RunResult r = Kvasir({"generate", "--model", kStories, "--prompt", "Once upon a time",
                        "--temperature", "0", "--max-tokens", "64", "--json", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  std::ifstream golden(testing::SharedPath("golden/stories260K_public.jsonl"));
  std::string line;
  std::getline(golden, line);
  auto g = nlohmann::json::parse(line);
  EXPECT_EQ(j["prompt_ids"], g["prompt_ids"]);
  EXPECT_EQ(j["ids"], g["greedy_ids"]);
  EXPECT_EQ(j["text"], g["greedy_text"]);
  EXPECT_EQ(j["kv"]["policy"], "full");
  EXPECT_EQ(j["kv"]["ratio"], 1.0);
  EXPECT_GT(j["kv"]["bytes"].get<int64_t>(), 0);
  EXPECT_GT(j["timings"]["decode_tokens_per_s"].get<double>(), 0);
  EXPECT_GT(j["timings"]["prefill_tokens_per_s"].get<double>(), 0);
}

// --tensor-parallel-size: this process and the ranks it starts (processes joined over Gloo)
// give the golden greedy ids; a size the heads do not allow is refused with the reason.
TEST(GenerateCliTest, TensorParallelRanksAsProcessesMatchTheGolden) {
  std::ifstream golden(testing::SharedPath("golden/stories260K_public.jsonl"));
  std::string line;
  std::getline(golden, line);
  const auto g = nlohmann::json::parse(line);
  for (const char* tp : {"2"}) {  // TP 4 and 8: tests/worker/tensor_parallel_test.cc
    const std::string prompt = g["prompt"].get<std::string>();
    RunResult r = Kvasir({"generate", "--model", kStories, "--prompt", prompt, "--temperature", "0",
                          "--max-tokens", "64", "--json", "--quiet", "--threads", "1",
                          "--tensor-parallel-size", tp});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.out;
    EXPECT_EQ(j["ids"], g["greedy_ids"]) << "TP " << tp;
  }
  RunResult bad = Kvasir({"generate", "--model", kStories, "--prompt", "Once", "--quiet",
                          "--tensor-parallel-size", "3"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("does not divide the model's 8 attention heads"), std::string::npos)
      << bad.err;
  RunResult range =
      Kvasir({"generate", "--model", kStories, "--prompt", "Once", "--tensor-parallel-size", "0"});
  EXPECT_EQ(range.exit_code, 1);
  EXPECT_NE(range.err.find("out of range"), std::string::npos) << range.err;
}

TEST(GenerateCliTest, StreamsTextToStdout) {
  RunResult r = Kvasir({"generate", "--model", kStories, "--prompt", "Once upon a time",
                        "--temperature", "0", "--max-tokens", "16"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind(", there was a little girl named Lily.", 0), 0u) << r.out;
  EXPECT_NE(r.err.find("tokens/s"), std::string::npos) << r.err;
}

TEST(GenerateCliTest, StatsLineStartsOnItsOwnLineWhenStreamsShareAPipe) {
  RunResult r = Kvasir({"generate", "--model", kStories, "--prompt", "Once upon a time",
                        "--max-tokens", "8", "--temperature", "0"},
                       /*merge_stderr=*/true);
  const size_t stats = r.out.find("prompt ");
  ASSERT_NE(stats, std::string::npos) << r.out;
  ASSERT_GT(stats, 0u) << r.out;
  EXPECT_EQ(r.out[stats - 1], '\n') << r.out;
  EXPECT_NE(r.out.find("tokens/s", stats), std::string::npos) << r.out;
}

TEST(GenerateCliTest, SameSeedSameOutput) {
  std::vector<std::string> args = {
      "generate", "--model", kStories,       "--prompt", "Once",   "--temperature", "1.0",
      "--seed",   "1234",    "--max-tokens", "24",       "--json", "--quiet"};
  RunResult a = Kvasir(args), b = Kvasir(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  auto ja = nlohmann::json::parse(a.out), jb = nlohmann::json::parse(b.out);
  EXPECT_EQ(ja["ids"], jb["ids"]);
  EXPECT_EQ(ja["seed"], 1234);
}

TEST(GenerateCliTest, HelpAndUsageErrors) {
  RunResult help = Kvasir({"generate", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--temperature"), std::string::npos);
  EXPECT_NE(help.out.find("--kv"), std::string::npos);
  RunResult unknown = Kvasir({"generate", "--prompt", "x", "--frobnicate", "3"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.err.find("--frobnicate"), std::string::npos);
  RunResult missing = Kvasir({"generate", "--model", kStories});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.err.find("--prompt"), std::string::npos);
  RunResult bad_number = Kvasir({"generate", "--prompt", "x", "--temperature", "hot"});
  EXPECT_EQ(bad_number.exit_code, 2);
  RunResult top = Kvasir({});
  EXPECT_EQ(top.exit_code, 2);
  RunResult bad_policy =
      Kvasir({"generate", "--model", kStories, "--prompt", "x", "--kv", "nonsense", "--quiet"});
  EXPECT_EQ(bad_policy.exit_code, 1);
  EXPECT_NE(bad_policy.err.find("nonsense"), std::string::npos);
}

// --device: an unknown name and a GPU that is not there are one-line errors; on a machine with a
// usable GPU and a CUDA build, cuda gives the CPU's greedy text.
TEST(GenerateCliTest, DeviceFlag) {
  RunResult unknown =
      Kvasir({"generate", "--model", kStories, "--prompt", "x", "--device", "tpu", "--quiet"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.err.find("--device must be one of cpu, cuda"), std::string::npos)
      << unknown.err;
  EXPECT_EQ(CountLines(unknown.err), 1) << unknown.err;
  const std::vector<std::string> args = {"generate",    "--model",      kStories, "--prompt",
                                         "Once upon a", "--max-tokens", "24",     "--temperature",
                                         "0",           "--quiet"};
  std::vector<std::string> on_gpu = args;
  on_gpu.insert(on_gpu.end(), {"--device", "cuda"});
  RunResult gpu = Kvasir(on_gpu);
  if (gpu.exit_code != 0) {
    EXPECT_EQ(gpu.exit_code, 1);
    EXPECT_NE(gpu.err.find("--device cuda: "), std::string::npos) << gpu.err;
    EXPECT_EQ(CountLines(gpu.err), 1) << gpu.err;
    GTEST_SKIP() << "no CUDA here: " << gpu.err;
  }
  RunResult cpu = Kvasir(args);
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  EXPECT_EQ(gpu.out, cpu.out);
}

// Each broken model gives a one-line error on stderr and a non-zero exit.
void ExpectOneLineError(const std::string& model, const std::string& needle) {
  RunResult r = Kvasir({"generate", "--model", model, "--prompt", "hello", "--quiet"});
  EXPECT_NE(r.exit_code, 0) << model;
  EXPECT_EQ(CountLines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty() || r.out == "\n") << r.out;
}

TEST(GenerateCliTest, MissingModelFile) {
  ExpectOneLineError("/nonexistent/model.gguf", "/nonexistent/model.gguf");
}

TEST(GenerateCliTest, TruncatedGguf) {
  const std::string bytes = ReadAll(kStories);
  ASSERT_GT(bytes.size(), 100000u);
  const std::string path = TempDir() + "/truncated.gguf";
  for (size_t cut : {size_t{10}, size_t{5000}, bytes.size() / 2, bytes.size() - 1}) {
    std::ofstream(path, std::ios::binary).write(bytes.data(), cut);
    ExpectOneLineError(path, "truncated.gguf");
  }
}

TEST(GenerateCliTest, GgufWithWrongTensorOffset) {
  std::string bytes = ReadAll(kStories);
  // Tensor info: u64 name length, name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset.
  const std::string name = "blk.0.attn_q.weight";
  const size_t at = bytes.find(name);
  ASSERT_NE(at, std::string::npos);
  size_t p = at + name.size();
  uint32_t n_dims;
  std::memcpy(&n_dims, bytes.data() + p, 4);
  ASSERT_LE(n_dims, 4u);
  p += 4 + 8 * n_dims + 4;
  uint64_t offset;
  std::memcpy(&offset, bytes.data() + p, 8);
  offset += 32;  // still aligned, but not where the tensor is
  std::memcpy(bytes.data() + p, &offset, 8);
  const std::string path = TempDir() + "/bad_offset.gguf";
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
  ExpectOneLineError(path, "bad_offset.gguf");
}

TEST(GenerateCliTest, SafetensorsWithALyingHeader) {
  const std::string dir = TempDir() + "/lying_hf";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json")
      << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
             "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "vocab_size": 16, "rms_norm_eps": 1e-5})";
  // The header claims 64 f32 values (256 bytes) but the range holds 16 bytes.
  const std::string header =
      R"({"model.embed_tokens.weight": {"dtype": "F32", "shape": [8, 8], "data_offsets": [0, 16]}})";
  std::string file(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(file.data(), &n, 8);
  file += header;
  file += std::string(16, '\1');
  std::ofstream(dir + "/model.safetensors", std::ios::binary).write(file.data(), file.size());
  ExpectOneLineError(dir, "model.safetensors");
}

// A Hugging Face Llama folder whose tokenizer is a SentencePiece tokenizer.model (Llama-2's
// layout), in the real binary: it links libprotobuf for the control plane, and libsentencepiece
// carries a protobuf of its own; the two must not meet (model/tokenizer/sentencepiece_model.cc).
// tests/testing/fixtures/spm400.model: BPE, 400 pieces, byte fallback, trained with spm_train on
// the first 30000 bytes of ../shared/eval/shakespeare-public.txt.
TEST(GenerateCliTest, HfFolderWithASentencePieceTokenizerModel) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer refuses dlopen(RTLD_DEEPBIND), so sanitizer builds cannot keep "
                  "libsentencepiece's protobuf apart from libprotobuf in this binary";
#endif
  const std::string dir = TempDir() + "/hf_spm";
  std::filesystem::create_directories(dir);
  testing::TinyLlamaSpec spec;
  spec.n_vocab = 400;
  ASSERT_TRUE(testing::WriteTinyLlamaHfDir(dir, spec));
  std::filesystem::copy_file(testing::RepoPath("tests/testing/fixtures/spm400.model"),
                             dir + "/tokenizer.model",
                             std::filesystem::copy_options::overwrite_existing);
  RunResult r = Kvasir({"generate", "--model", dir, "--prompt", "To be, or not to be",
                        "--max-tokens", "4", "--temperature", "0", "--ignore-eos", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  ASSERT_TRUE(j["prompt_ids"].is_array());
  // BOS, then fewer pieces than bytes: the merges of the trained model were applied.
  ASSERT_GE(j["prompt_ids"].size(), 2u);
  EXPECT_EQ(j["prompt_ids"][0], 1);
  EXPECT_LT(j["prompt_ids"].size(), std::string("To be, or not to be").size());
  EXPECT_EQ(j["ids"].size(), 4u);
}

}  // namespace
}  // namespace kvasir::cli
