// `kvasir plan` as a user runs it: the real binary in a child process on the Llama-2 config.json
// fixtures and on stories260K.gguf. The expected figures are computed here from the configs' own
// fields and from the GGUF reader, not from the planner's code.
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/gguf.h"
#include "nlohmann/json.hpp"
#include "tests/cli/cli_runner.h"
#include "tests/testing/paths.h"

namespace kvasir::cli {
namespace {

using cli_test::Kvasir;
using cli_test::ReadAll;
using cli_test::RunResult;
using nlohmann::json;

std::string Fixture(const std::string& name) {
  return testing::RepoPath("tests/testing/fixtures/" + name);
}

// Runs `kvasir plan ARGS --json` and parses its output.
void PlanJson(std::vector<std::string> args, json* out) {
  args.insert(args.begin(), "plan");
  args.emplace_back("--json");
  RunResult r = Kvasir(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  *out = json::parse(r.out, nullptr, false);
  ASSERT_FALSE(out->is_discarded()) << r.out;
  ASSERT_TRUE(out->is_object()) << r.out;
}

// Parameters of a Llama checkpoint from its config.json: embedding + output layer + per layer
// (q, k, v, o, gate, up, down, two norms) + the final norm.
double LlamaParams(const std::string& folder) {
  const json c = json::parse(ReadAll(folder + "/config.json"));
  const double hidden = c["hidden_size"], inter = c["intermediate_size"];
  const double layers = c["num_hidden_layers"], heads = c["num_attention_heads"];
  const double kv_heads = c["num_key_value_heads"], vocab = c["vocab_size"];
  const double head_dim = hidden / heads;
  const double per_layer = hidden * heads * head_dim           // q
                           + 2 * hidden * kv_heads * head_dim  // k, v
                           + heads * head_dim * hidden         // o
                           + 3 * hidden * inter                // gate, up, down
                           + 2 * hidden;                       // attention and ffn norms
  return 2 * vocab * hidden + layers * per_layer + hidden;
}

TEST(PlanCliTest, Llama70bTp8WeightsAndKvPerRank) {
  const std::string model = Fixture("llama2-70b");
  json j;
  ASSERT_NO_FATAL_FAILURE(PlanJson({"--model", model, "--device", "h100-80g",
                                    "--tensor-parallel-size", "8", "--kv-dtype", "f16"},
                                   &j));
  const double params = LlamaParams(model);
  EXPECT_NEAR(params / 1e9, 68.98, 0.01);  // the published ~69B
  const double expected = 2 * params / 8;  // f16
  // Exactly: everything split 8 ways (32000 rows of the vocabulary too) but the replicated norms.
  const double norms = 80 * 2 * 8192 + 8192;
  const double exact = 2 * (params - norms) / 8 + 2 * norms;
  ASSERT_EQ(j["ranks"].size(), 8u);
  for (const json& r : j["ranks"]) {
    const double w = r["weight_bytes"].get<double>();
    EXPECT_NEAR(w, expected, 0.01 * expected) << "rank " << r["rank"];
    EXPECT_EQ(w, exact) << "rank " << r["rank"];
    // 2 (K, V) * 80 layers * 1 KV head * 128 * 2 bytes.
    EXPECT_EQ(r["kv_bytes_per_token"].get<int64_t>(), 2 * 80 * 1 * 128 * 2);
    EXPECT_EQ(r["kv_heads"].get<int>(), 1);
    EXPECT_EQ(r["query_heads"].get<int>(), 8);
  }
  EXPECT_EQ(j["kv_bytes_per_token_per_rank"].get<int64_t>(), 40960);
  EXPECT_NEAR(j["weight_bytes_per_rank"].get<double>(), expected, 0.01 * expected);
  EXPECT_NEAR(j["model"]["params"].get<double>(), params, 0.001 * params);
  // 80 GB * 0.9 minus 16 GiB of weights leaves room for sequences of 4096 tokens (160 MiB each).
  EXPECT_EQ(j["context_len"].get<int>(), 4096);
  EXPECT_TRUE(j["fits"].get<bool>());
  const double seq_bytes = 40960.0 * 4096;
  EXPECT_EQ(j["ranks"][0]["kv_bytes_per_sequence"].get<double>(), seq_bytes);
  const double available = j["ranks"][0]["kv_available_bytes"].get<double>();
  EXPECT_GT(available, 0.9 * 80e9 - expected - 4.0 * (1 << 30));
  EXPECT_LT(available, 0.9 * 80e9 - expected);
  EXPECT_EQ(j["max_sequences"].get<int64_t>(), static_cast<int64_t>(available / seq_bytes));
}

TEST(PlanCliTest, KvHeadsReplicatedBeyondTheirCount) {
  json j;
  ASSERT_NO_FATAL_FAILURE(PlanJson(
      {"--model", Fixture("llama2-70b"), "--device", "h200", "--tensor-parallel-size", "16"}, &j));
  EXPECT_EQ(j["kv_replicas"].get<int>(), 2);
  EXPECT_EQ(j["kv_heads_per_rank"].get<int>(), 1);
  EXPECT_EQ(j["kv_bytes_per_token_per_rank"].get<int64_t>(), 40960);
  EXPECT_EQ(j["ranks"][0]["query_heads"].get<int>(), 4);
}

TEST(PlanCliTest, RefusesTensorParallelSizesTheModelCannotSplit) {
  RunResult r = Kvasir({"plan", "--model", Fixture("llama2-70b"), "--device", "h100-80g",
                        "--tensor-parallel-size", "3"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("64 attention heads"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  // 32 heads of 7B split 64 ways.
  r = Kvasir({"plan", "--model", Fixture("llama2-7b"), "--device", "h200", "--tensor-parallel-size",
              "64"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("heads"), std::string::npos) << r.err;
}

TEST(PlanCliTest, Llama7bTp2HoldsHalfTheWeights) {
  json one, two;
  ASSERT_NO_FATAL_FAILURE(
      PlanJson({"--model", Fixture("llama2-7b"), "--device", "a100-80g"}, &one));
  ASSERT_NO_FATAL_FAILURE(PlanJson(
      {"--model", Fixture("llama2-7b"), "--device", "a100-80g", "--tensor-parallel-size", "2"},
      &two));
  const double w1 = one["weight_bytes_per_rank"].get<double>();
  const double w2 = two["weight_bytes_per_rank"].get<double>();
  EXPECT_NEAR(w1, 2 * LlamaParams(Fixture("llama2-7b")), 1e-6 * w1);
  EXPECT_NEAR(w2, w1 / 2, 0.001 * w1);
  EXPECT_GT(w2, w1 / 2);  // the norms are replicated
  EXPECT_EQ(one["kv_bytes_per_token_per_rank"].get<int64_t>(), 2 * 32 * 32 * 128 * 2);
  EXPECT_EQ(two["kv_bytes_per_token_per_rank"].get<int64_t>(), 2 * 32 * 16 * 128 * 2);
  // Half the weights and half the KV per rank: about twice the sequences fit on two devices.
  EXPECT_GT(two["max_sequences"].get<int64_t>(), 2 * one["max_sequences"].get<int64_t>());
}

TEST(PlanCliTest, QuantizedWeightDtypeUsesBlockSizes) {
  const std::string model = Fixture("llama2-13b");
  json j;
  ASSERT_NO_FATAL_FAILURE(PlanJson(
      {"--model", model + "/config.json", "--device", "h100-80g", "--weight-dtype", "q4_0"}, &j));
  const double expected = LlamaParams(model) * 18 / 32;  // q4_0: 18 bytes per 32 weights
  EXPECT_NEAR(j["weight_bytes_per_rank"].get<double>(), expected, 0.01 * expected);
  EXPECT_EQ(j["model"]["weight_types"], "q4_0");
  json q8;
  ASSERT_NO_FATAL_FAILURE(
      PlanJson({"--model", model, "--device", "h100-80g", "--weight-dtype", "q8_0"}, &q8));
  EXPECT_NEAR(q8["weight_bytes_per_rank"].get<double>(), LlamaParams(model) * 34 / 32,
              0.01 * expected);
}

TEST(PlanCliTest, StreamingHoldsLessKvThanFullAtLongContext) {
  const std::vector<std::string> base = {"--model", Fixture("llama2-7b"), "--device",
                                         "h200",    "--context-len",      "4096"};
  json full, streaming;
  ASSERT_NO_FATAL_FAILURE(PlanJson(base, &full));
  std::vector<std::string> args = base;
  args.insert(args.end(), {"--kv-policy", "streaming:sink=4,window=252"});
  ASSERT_NO_FATAL_FAILURE(PlanJson(args, &streaming));
  const double full_seq = full["ranks"][0]["kv_bytes_per_sequence"].get<double>();
  const double streaming_seq = streaming["ranks"][0]["kv_bytes_per_sequence"].get<double>();
  // Full: every one of the 4096 tokens; streaming: 256 slots per head.
  EXPECT_EQ(full_seq, 4096.0 * 2 * 32 * 32 * 128 * 2);
  EXPECT_EQ(streaming_seq, 256.0 * 2 * 32 * 32 * 128 * 2);
  EXPECT_LT(streaming["kv_kept_fraction"].get<double>(), 0.07);
  EXPECT_EQ(full["kv_kept_fraction"].get<double>(), 1.0);
  EXPECT_GT(streaming["max_sequences"].get<int64_t>(), 10 * full["max_sequences"].get<int64_t>());
  EXPECT_EQ(streaming["kv_policy"], "streaming:sink=4,window=252");
  // The per-token figure is the dense one; the policy shows in the per-sequence bytes.
  EXPECT_EQ(streaming["kv_bytes_per_token_per_rank"], full["kv_bytes_per_token_per_rank"]);
  // Other policies parse, and hold at most the full cache.
  for (const std::string policy : {"h2o:budget=256,recent=32", "dmc:ratio=4", "pod:group_size=4",
                                   "lococo:slots=128,chunk=16"}) {
    std::vector<std::string> a = base;
    a.insert(a.end(), {"--kv-policy", policy});
    json p;
    ASSERT_NO_FATAL_FAILURE(PlanJson(a, &p)) << policy;
    EXPECT_LT(p["ranks"][0]["kv_bytes_per_sequence"].get<double>(), full_seq) << policy;
  }
}

TEST(PlanCliTest, JsonHasTheFields) {
  json j;
  ASSERT_NO_FATAL_FAILURE(PlanJson(
      {"--model", Fixture("llama2-70b"), "--device", "h200", "--tensor-parallel-size", "8"}, &j));
  for (const char* key :
       {"model", "device", "tensor_parallel_size", "kv_policy", "kv_dtype", "context_len",
        "gpu_memory_utilization", "weight_bytes_per_rank", "kv_bytes_per_token_per_rank",
        "kv_available_bytes_per_rank", "max_sequences", "fits", "ranks", "decode", "prefill"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  for (const char* key : {"rank", "weight_bytes", "kv_bytes_per_token", "kv_bytes_per_sequence",
                          "kv_available_bytes", "kv_token_slots", "max_sequences"}) {
    EXPECT_TRUE(j["ranks"][0].contains(key)) << key;
  }
  EXPECT_EQ(j["device"]["name"], "h200");
  EXPECT_EQ(j["device"]["memory_bytes"].get<double>(), 141e9);
  EXPECT_EQ(j["kv_dtype"], "f16");
  EXPECT_DOUBLE_EQ(j["gpu_memory_utilization"].get<double>(), 0.9);
  for (const char* step : {"batch_1", "max_batch"}) {
    const json& d = j["decode"][step];
    ASSERT_TRUE(d.is_object()) << step;
    EXPECT_GT(d["tokens_per_s"].get<double>(), 0) << step;
    EXPECT_GT(d["allreduce_s"].get<double>(), 0) << step;
  }
  const json& d1 = j["decode"]["batch_1"];
  // Batch 1 reads every weight of the rank once per token: bandwidth / bytes bounds it.
  EXPECT_LT(d1["tokens_per_s"].get<double>(),
            4.8e12 / (0.95 * j["weight_bytes_per_rank"].get<double>()));
  EXPECT_EQ(d1["bound"], "memory");
  // 161 collectives of 10 us at least.
  EXPECT_GT(d1["allreduce_s"].get<double>(), 161 * 10e-6);
  EXPECT_EQ(j["decode"]["max_batch"]["batch"], j["max_sequences"]);
  EXPECT_GT(j["prefill"]["tokens_per_s"].get<double>(), d1["tokens_per_s"].get<double>());
  // TP 1 has no collectives.
  json one;
  ASSERT_NO_FATAL_FAILURE(PlanJson({"--model", Fixture("llama2-7b"), "--device", "h200"}, &one));
  EXPECT_EQ(one["decode"]["batch_1"]["allreduce_s"].get<double>(), 0.0);
}

TEST(PlanCliTest, GgufWeightBytesAreTheFileTensors) {
  const std::string path = testing::SharedPath("models/stories260K.gguf");
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  auto gguf = model::GgufFile::Open(path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  int64_t bytes = 0;
  for (const model::GgufTensorInfo& t : gguf->tensors())
    bytes += static_cast<int64_t>(t.size_bytes);
  ASSERT_GT(bytes, 0);
  json j;
  ASSERT_NO_FATAL_FAILURE(PlanJson({"--model", path, "--device", "cpu"}, &j));
  EXPECT_EQ(j["weight_bytes_per_rank"].get<int64_t>(), bytes);
  EXPECT_EQ(j["model"]["weight_bytes"].get<int64_t>(), bytes);
  EXPECT_EQ(j["model"]["format"], "gguf");
  EXPECT_EQ(j["kv_dtype"], "f32");  // the CPU engine's default
  EXPECT_DOUBLE_EQ(j["gpu_memory_utilization"].get<double>(), 0.75);
  // --weight-dtype is for config.json inputs only.
  RunResult r = Kvasir({"plan", "--model", path, "--device", "cpu", "--weight-dtype", "q4_0"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--weight-dtype"), std::string::npos) << r.err;
}

TEST(PlanCliTest, CpuPresetUsesMemTotalUnlessOverridden) {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  double kb = 0;
  while (meminfo >> key >> kb && key != "MemTotal:") meminfo.ignore(1 << 10, '\n');
  ASSERT_EQ(key, "MemTotal:");
  json j;
  ASSERT_NO_FATAL_FAILURE(PlanJson({"--model", Fixture("llama2-7b"), "--device", "cpu"}, &j));
  EXPECT_EQ(j["device"]["memory_bytes"].get<double>(), kb * 1024);
  EXPECT_TRUE(j["device"]["shared_by_ranks"].get<bool>());
  ASSERT_NO_FATAL_FAILURE(
      PlanJson({"--model", Fixture("llama2-7b"), "--device", "cpu", "--memory-gib", "64",
                "--bandwidth-gbs", "40", "--tensor-parallel-size", "2"},
               &j));
  EXPECT_EQ(j["device"]["memory_bytes"].get<double>(), 64.0 * (1 << 30));
  EXPECT_EQ(j["device"]["bandwidth_bytes_per_s"].get<double>(), 40e9);
  // Two ranks on one machine: each gets half of it.
  EXPECT_EQ(j["ranks"][1]["memory_bytes"].get<double>(), 32.0 * (1 << 30));
}

TEST(PlanCliTest, TextTableAndUsageErrors) {
  RunResult r = Kvasir({"plan", "--model", Fixture("llama2-70b"), "--device", "h200",
                        "--tensor-parallel-size", "8"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* text : {"llama2-70b", "80 layers", "40960 B", "max seqs", "decode, batch 1",
                           "prefill, 2048 tokens", "0-7"}) {
    EXPECT_NE(r.out.find(text), std::string::npos) << text << "\n" << r.out;
  }
  // A 70B model does not fit one 80 GB device: said, not crashed.
  r = Kvasir({"plan", "--model", Fixture("llama2-70b"), "--device", "h100-80g"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("does not fit"), std::string::npos) << r.out;

  r = Kvasir({"plan", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("all-reduce"), std::string::npos);
  EXPECT_NE(r.out.find("public spec sheet"), std::string::npos);

  const std::vector<std::vector<std::string>> bad = {
      {"--model", Fixture("llama2-70b"), "--device", "tpu-v5"},
      {"--model", Fixture("llama2-70b")},
      {"--model", Fixture("no-such-model"), "--device", "h200"},
      {"--model", Fixture("llama2-70b"), "--device", "h200", "--kv-policy", "lru"},
      {"--model", Fixture("llama2-70b"), "--device", "h200", "--kv-dtype", "f8"},
      {"--model", Fixture("llama2-70b"), "--device", "h200", "--weight-dtype", "q5_k"},
      {"--model", Fixture("llama2-70b"), "--device", "h200", "--gpu-memory-utilization", "2"},
      {"--model", Fixture("llama2-70b"), "--device", "h200", "--tensor-parallel-size", "0"},
      {"--model", Fixture("llama2-70b"), "--device", "h200", "--bandwidth-gbs", "-1"},
  };
  for (const auto& args : bad) {
    std::vector<std::string> a = {"plan"};
    a.insert(a.end(), args.begin(), args.end());
    r = Kvasir(a);
    EXPECT_EQ(r.exit_code, 2) << args.back() << ": " << r.err;
    EXPECT_FALSE(r.err.empty()) << args.back();
  }
  r = Kvasir({"plan", "--model", Fixture("llama2-70b"), "--device", "tpu-v5"});
  EXPECT_NE(r.err.find("h100-80g"), std::string::npos) << "names the presets: " << r.err;
}

}  // namespace
}  // namespace kvasir::cli
