// Retrofit adapters (worker/adapter.h): loading and validation, the merge W + scale B A, the
// engine's refusal of policies meant for another model, and the committed DMC and PoD artifacts
// of stories260K, whose logits the engine must reproduce from the PyTorch model that trained them.
#include "worker/adapter.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "kvcache/policy.h"
#include "tests/testing/paths.h"
#include "tests/testing/safetensors_builder.h"
#include "tests/worker/e2e_util.h"

namespace kvasir::worker {
namespace {

using testing::SafetensorsBuilder;

const char* const kArtifact = "train/artifacts/stories260K-dmc-4x.safetensors";
// PoD post-trained for group_size=5 (0.65 of the cache) and group_size=2 (0.825).
const char* const kPodArtifacts[] = {"train/artifacts/stories260K-pod-1.5x.safetensors",
                                     "train/artifacts/stories260K-pod-1.2x.safetensors"};

std::string Stories() { return testing::SharedPath("models/stories260K.gguf"); }

// stories260K merged with the adapter at `path` (weights not prefaulted, 2 threads).
absl::StatusOr<std::unique_ptr<Engine>> LoadAdapted(const std::string& path) {
  EngineOptions o;
  o.model = Stories();
  o.prefault = false;
  o.num_threads = 2;
  o.adapter = path;
  return Engine::Load(o);
}

// A scratch file that is removed with the test.
class TempFile {
 public:
  explicit TempFile(const std::string& name)
      : path_((std::filesystem::temp_directory_path() /
               (name + "-" + std::to_string(::getpid()) + ".safetensors"))
                  .string()) {}
  ~TempFile() { std::filesystem::remove(path_); }
  const std::string& Write(const std::vector<uint8_t>& bytes) {
    std::ofstream(path_, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    return path_;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::vector<float> Random(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// An adapter for stories260K (n_embd 64, 8 heads, 4 KV heads of 8) on layer 1's k projection.
// `declared` is the rank the metadata states (0: `rank`).
SafetensorsBuilder KAdapter(int rank, const std::vector<float>& a, const std::vector<float>& b,
                            int declared = 0) {
  SafetensorsBuilder s;
  s.AddF32("blk.1.attn_k.lora_a", {rank, 64}, a);
  s.AddF32("blk.1.attn_k.lora_b", {32, rank}, b);
  s.AddMetadata("kvasir.format", "lora-1")
      .AddMetadata("kvasir.method", "dmc")
      .AddMetadata("kvasir.kv_policy", "dmc:mode=learned")
      .AddMetadata("kvasir.ratio", "4")
      .AddMetadata("kvasir.lora_rank", std::to_string(declared > 0 ? declared : rank))
      .AddMetadata("kvasir.lora_alpha", std::to_string(2 * rank))
      .AddMetadata("kvasir.layout", "gguf");
  return s;
}

TEST(AdapterTest, MergesScaledLowRankProductIntoTheProjection) {
  auto base = e2e::LoadEngine(Stories());
  ASSERT_NE(base, nullptr);
  const int rank = 3;
  const std::vector<float> a = Random(rank * 64, 1, 0.5f), b = Random(32 * rank, 2, 0.5f);
  TempFile f("kvasir-adapter-merge");
  f.Write(KAdapter(rank, a, b).Build());

  auto adapted = LoadAdapted(f.path());
  ASSERT_TRUE(adapted.ok()) << adapted.status();
  ASSERT_NE((*adapted)->adapter(), nullptr);
  EXPECT_FLOAT_EQ((*adapted)->adapter()->scale, 2.0f);

  const kernels::WeightView& w0 = base->weights().layers[1].wk;
  const kernels::WeightView& w1 = (*adapted)->weights().layers[1].wk;
  ASSERT_EQ(w1.type, DType::kF32);
  std::vector<float> before(64), after(64);
  for (int r = 0; r < 32; ++r) {
    kernels::cpu::DequantizeRow(w0.type, w0.row(r), 64, before.data());
    kernels::cpu::DequantizeRow(w1.type, w1.row(r), 64, after.data());
    for (int c = 0; c < 64; ++c) {
      double ba = 0;
      for (int k = 0; k < rank; ++k) ba += double(b[r * rank + k]) * a[k * 64 + c];
      ASSERT_NEAR(after[c], before[c] + 2.0 * ba, 1e-5) << "row " << r << " col " << c;
    }
  }
  // Projections the adapter does not name stay views of the file (at the same offset in its
  // mapping as in the base engine's), the adapted one is not.
  auto offset = [](const LlamaWeights& w, const kernels::WeightView& v) {
    return static_cast<const uint8_t*>(v.data) - static_cast<const uint8_t*>(w.tok_embd.data);
  };
  const LlamaWeights& bw = base->weights();
  const LlamaWeights& aw = (*adapted)->weights();
  EXPECT_EQ(offset(aw, aw.layers[1].wq), offset(bw, bw.layers[1].wq));
  EXPECT_EQ(offset(aw, aw.layers[0].wk), offset(bw, bw.layers[0].wk));
  EXPECT_NE(offset(aw, aw.layers[1].wk), offset(bw, bw.layers[1].wk));
}

TEST(AdapterTest, RefusesMalformedFilesWithoutEchoingThem) {
  auto config = model::ModelFiles::Open(Stories());
  ASSERT_TRUE(config.ok()) << config.status();
  const model::ModelConfig& c = (*config)->config();
  const std::vector<float> a(2 * 64, 0.1f), b(32 * 2, 0.1f);
  struct Case {
    const char* what;
    SafetensorsBuilder builder;
    const char* expect;
  };
  std::vector<Case> cases;
  cases.push_back({"rank 2 declared 3", KAdapter(2, a, b, 3), "lora_a must be"});
  SafetensorsBuilder wrong_shape;
  wrong_shape.AddF32("blk.1.attn_k.lora_a", {2, 64}, a);
  wrong_shape.AddF32("blk.1.attn_k.lora_b", {2, 32}, b);
  for (const char* key : {"kvasir.format", "kvasir.method", "kvasir.kv_policy", "kvasir.ratio",
                          "kvasir.lora_rank", "kvasir.lora_alpha", "kvasir.layout"}) {
    wrong_shape.AddMetadata(key, key == std::string("kvasir.format")      ? "lora-1"
                                 : key == std::string("kvasir.layout")    ? "gguf"
                                 : key == std::string("kvasir.lora_rank") ? "2"
                                                                          : "4");
  }
  cases.push_back({"transposed b", wrong_shape, "lora_b ["});
  SafetensorsBuilder no_format;
  no_format.AddF32("blk.1.attn_k.lora_a", {2, 64}, a);
  cases.push_back({"no format", no_format, "not a retrofit adapter"});
  cases.push_back(
      {"extra tensor", KAdapter(2, a, b).AddF32("blk.9.attn_k.lora_a", {2, 64}, a), "no place"});
  cases.push_back({"half a pair",
                   [&] {
                     SafetensorsBuilder s = KAdapter(2, a, b);
                     s.AddF32("blk.0.attn_q.lora_a", {2, 64}, a);
                     return s;
                   }(),
                   "only one of"});
  for (Case& k : cases) {
    TempFile f("kvasir-adapter-bad");
    f.Write(k.builder.Build());
    auto got = LoadAdapter(f.path(), c);
    ASSERT_FALSE(got.ok()) << k.what;
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << k.what;
    EXPECT_NE(got.status().message().find(k.expect), std::string::npos)
        << k.what << ": " << got.status();
    // The message names the file by its base name, never its directory.
    EXPECT_EQ(got.status().message().find(std::filesystem::temp_directory_path().string()),
              std::string::npos)
        << got.status();
  }
  TempFile text("kvasir-adapter-text");
  { std::ofstream(text.path()) << "root:x:0:0:secret line\n"; }
  auto got = LoadAdapter(text.path(), c);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().message().find("secret"), std::string::npos) << got.status();
  EXPECT_FALSE(LoadAdapter("/nonexistent/adapter.safetensors", c).ok());
}

TEST(AdapterTest, EnginesRunOnlyThePoliciesMeantForTheirWeights) {
  const std::string artifact = testing::RepoPath(kArtifact);
  auto base = e2e::LoadEngine(Stories());
  ASSERT_NE(base, nullptr);
  // A policy naming an adapter is refused by an engine without it...
  auto p = base->Policy("dmc:mode=learned,weights=" + artifact);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition) << p.status();
  // ...and an adapted engine refuses every other policy.
  auto adapted = LoadAdapted(artifact);
  ASSERT_TRUE(adapted.ok()) << adapted.status();
  EXPECT_EQ((*adapted)->Policy("full").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*adapted)->Policy("dmc:mode=learned").status().code(),
            absl::StatusCode::kFailedPrecondition);
  // The same file named another way is the same adapter.
  const std::string other = "./" + std::string(kArtifact);
  EXPECT_TRUE((*adapted)->Policy("dmc:mode=learned,weights=" + artifact).ok());
  if (std::filesystem::exists(other)) {
    EXPECT_TRUE((*adapted)->Policy("dmc:mode=learned,weights=" + other).ok());
  }
  // The spec names the adapter; only learned dmc takes one; requests cannot name it.
  auto named = AdapterOfSpec("dmc:mode=learned,weights=/x/a.safetensors");
  ASSERT_TRUE(named.ok());
  EXPECT_EQ(*named, "/x/a.safetensors");
  EXPECT_EQ(*AdapterOfSpec("h2o:budget=64"), "");
  EXPECT_FALSE(base->Policy("dmc:mode=free,weights=/x/a.safetensors").ok());
  auto request = kvcache::ParsePolicy("dmc:mode=learned,weights=/etc/passwd",
                                      base->cache().geometry(), kvcache::PolicySource::kRequest);
  ASSERT_FALSE(request.ok());
  EXPECT_EQ(request.status().code(), absl::StatusCode::kPermissionDenied);
}

// The committed artifact: the engine's dmc:mode=learned on the merged model gives the logits
// the trained PyTorch model gave (train/kvasir_train/dmc.py with hard decisions), and
// compresses as trained.
TEST(AdapterTest, EngineReproducesTheTrainedDmcModel) {
  const std::string artifact = testing::RepoPath(kArtifact);
  auto engine = LoadAdapted(artifact);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const Adapter& a = *(*engine)->adapter();
  ASSERT_FALSE(a.check_tokens.empty());
  EXPECT_EQ(a.method, "dmc");
  auto policy = (*engine)->Policy("dmc:mode=learned,weights=" + artifact);
  ASSERT_TRUE(policy.ok()) << policy.status();

  const e2e::ReplayCheck check =
      e2e::ReplayAndCompare(**engine, *policy, a.check_tokens, a.check_logits);
  // The engine computes in f32 as PyTorch does, in another order: logits of magnitude ~10-20
  // agree to ~1e-4. A merge decision within rounding of its threshold could flip and change
  // later logits more, hence the mean bound besides the max.
  EXPECT_LT(check.mean_err, 2e-4) << "max " << check.max_err;
  EXPECT_LT(check.max_err, 5e-2);
  EXPECT_EQ(check.argmax_agree, static_cast<int>(a.check_tokens.size()));
  const kvcache::KvUsage& usage = check.usage;
  // Trained for 4x: the cache holds well under half of the full cache's slots.
  EXPECT_LT(usage.ratio(), 0.4) << usage.slots << " of " << usage.full_slots;
}

// The committed PoD artifacts: the engine's pod policy (distant keys from the anchor layer) on the
// merged model gives the logits the post-trained PyTorch model gave (train/kvasir_train/pod.py),
// at the ratio of its spec; the adapter is named by the spec, kept in its canonical form, and
// never taken from a request.
class PodAdapterTest : public ::testing::TestWithParam<const char*> {};

TEST_P(PodAdapterTest, EngineReproducesThePostTrainedModel) {
  const std::string artifact = testing::RepoPath(GetParam());
  auto engine = LoadAdapted(artifact);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const Adapter& a = *(*engine)->adapter();
  ASSERT_FALSE(a.check_tokens.empty());
  EXPECT_EQ(a.method, "pod");
  ASSERT_EQ(a.kv_policy.rfind("pod:", 0), 0u) << a.kv_policy;
  const std::string spec = a.kv_policy + ",weights=" + artifact;
  auto named = AdapterOfSpec(spec);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(*named, artifact);
  // lococo's weights are its compressor's, not a model adapter.
  EXPECT_EQ(*AdapterOfSpec("lococo:slots=16,weights=/x/w.safetensors"), "");
  auto policy = (*engine)->Policy(spec);
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ((*policy)->model_adapter(), artifact);
  EXPECT_NE((*policy)->spec().find(",weights=" + artifact), std::string::npos) << (*policy)->spec();
  // The adapted engine refuses the same policy without its weights.
  EXPECT_EQ((*engine)->Policy(a.kv_policy).status().code(), absl::StatusCode::kFailedPrecondition);

  const e2e::ReplayCheck check =
      e2e::ReplayAndCompare(**engine, *policy, a.check_tokens, a.check_logits);
  // No discrete decision: only f32 rounding in another order (the engine merges the proximal and
  // distant partial attentions by log-sum-exp, PyTorch takes one softmax).
  EXPECT_LT(check.mean_err, 1e-4) << "max " << check.max_err;
  EXPECT_LT(check.max_err, 2e-3);
  EXPECT_EQ(check.argmax_agree, static_cast<int>(a.check_tokens.size()));
  // Past sink + window tokens the non-anchor keys stop growing: well under the full cache.
  const kvcache::KvUsage& usage = check.usage;
  EXPECT_LT(usage.ratio(), 0.9) << usage.slots << " of " << usage.full_slots;

  // The stock model under the same policy is far from the trained logits: the adapter matters.
  auto base = e2e::LoadEngine(Stories());
  ASSERT_NE(base, nullptr);
  EXPECT_EQ(base->Policy(spec).status().code(), absl::StatusCode::kFailedPrecondition);
  auto stock = base->Policy(a.kv_policy);
  ASSERT_TRUE(stock.ok()) << stock.status();
  const e2e::ReplayCheck untrained =
      e2e::ReplayAndCompare(*base, *stock, a.check_tokens, a.check_logits);
  EXPECT_GT(untrained.mean_err, 10 * check.mean_err);

  // A request may not name the adapter (nor any file): refused before anything is opened.
  auto request =
      kvcache::ParsePolicy(spec, (*engine)->cache().geometry(), kvcache::PolicySource::kRequest);
  ASSERT_FALSE(request.ok());
  EXPECT_EQ(request.status().code(), absl::StatusCode::kPermissionDenied) << request.status();
  auto elsewhere =
      kvcache::ParsePolicy("pod:window=60,group_size=5,weights=/etc/passwd",
                           (*engine)->cache().geometry(), kvcache::PolicySource::kRequest);
  EXPECT_EQ(elsewhere.status().code(), absl::StatusCode::kPermissionDenied) << elsewhere.status();
  EXPECT_EQ(kvcache::ParsePolicy("pod:weights=", (*engine)->cache().geometry()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Artifacts, PodAdapterTest, ::testing::ValuesIn(kPodArtifacts),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           // ".../stories260K-pod-1.5x.safetensors" -> "Pod1_5x"
                           std::string ratio = std::filesystem::path(info.param).stem().string();
                           ratio = ratio.substr(ratio.rfind('-') + 1);
                           std::replace(ratio.begin(), ratio.end(), '.', '_');
                           return "Pod" + ratio;
                         });

}  // namespace
}  // namespace kvasir::worker
