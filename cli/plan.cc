// `kvasir plan`: a capacity planner for tensor-parallel serving. From a model (a config.json, a
// Hugging Face folder or a GGUF file), a device preset, the tensor-parallel size and a KV policy,
// it computes per rank the weight bytes of the engine's shard plan (model/shard_plan.h), the KV
// bytes per token and per sequence the policy plans (KvPolicy::PlannedPages: what the scheduler
// reserves to admit a sequence), how many sequences of the context fit, and roofline estimates of
// decode and prefill tokens/s including the all-reduce time. Every formula and assumption is in
// docs/parallelism.md ("Capacity planning: kvasir plan") and in --help.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/plan_model.h"
#include "common/base/dtype.h"
#include "common/base/thread_pool.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "common/units.h"
#include "kernels/cpu/membw.h"
#include "kernels/cpu/ops.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"
#include "model/gguf.h"
#include "model/model_config.h"
#include "model/model_files.h"
#include "model/shard_plan.h"
#include "nlohmann/json.hpp"
#include "worker/engine.h"
#include "worker/model_runner.h"

namespace kvasir::cli {
namespace {

using Json = nlohmann::ordered_json;

constexpr const char* kCommand = "kvasir plan";
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr int32_t kMaxTensorParallel = 1024;
constexpr int64_t kMaxTokens = int64_t{1} << 24;

// ---- Devices ----

// One device kind. Figures are per device, and a rank runs on one device, except for `cpu`:
// all ranks run on this machine (loopback TCP between them), so they share its memory, memory
// bandwidth and FLOP/s, each rank getting 1/TP of them.
struct Device {
  std::string name;
  std::string description;
  double memory_bytes = 0;
  double bandwidth = 0;     // bytes/s of memory reads
  double flops = 0;         // dense FLOP/s (bf16 tensor cores on the GPUs, f32 FMA on cpu)
  double interconnect = 0;  // bytes/s per direction between two ranks
  double latency_s = 0;     // fixed cost of one collective
  bool gpu = true;
  bool shared = false;  // the ranks share one device (cpu)
};

// Public spec-sheet figures: memory in decimal GB as the sheets give it, HBM bandwidth, dense
// bf16 tensor FLOP/s (without sparsity), NVLink bandwidth per direction. The all-reduce latency
// (10 us) is an assumption, not a sheet figure.
struct Preset {
  const char* name;
  const char* description;
  double memory_gb;
  double bandwidth_gbs;
  double tflops;
  double interconnect_gbs;
  double latency_us;
};

constexpr Preset kGpuPresets[] = {
    {"h100-80g", "H100 SXM5 80GB", 80, 3350, 989, 450, 10},
    {"h200", "H200 SXM 141GB", 141, 4800, 989, 450, 10},
    {"a100-80g", "A100 SXM4 80GB", 80, 2039, 312, 300, 10},
};

// The cpu preset's defaults for what cannot be read from the machine without a measurement.
constexpr double kCpuBandwidthGbs = 20;  // until measured (RunPlan measures it)
constexpr double kCpuTflops = 0.2;       // 2 cores * 3 GHz * 32 f32 FLOP/cycle (2 AVX2 FMA ports)
constexpr double kCpuInterconnectGbs = 5;
constexpr double kCpuLatencyUs = 30;
constexpr double kCpuUtilization = 0.75;
constexpr double kGpuUtilization = 0.9;

// MemTotal of /proc/meminfo, in bytes.
// The rate at which this machine's kernels read quantized weights in a batch-1 product: a Q4_0
// matrix of 128 MiB (beyond the caches) times one vector, the best of 4 runs after a warm-up, in
// GB/s of weight bytes. The weights are random 4-bit values with a small scale.
double MeasureMatVecGBps(ThreadPool& pool) {
  constexpr int64_t kCols = 4096;
  const int64_t row_bytes = DTypeRowBytes(DType::kQ4_0, kCols);
  const int64_t rows = (int64_t{128} << 20) / row_bytes;
  std::vector<uint8_t> data(static_cast<size_t>(rows * row_bytes));
  uint64_t state = 0x9E3779B97F4A7C15ull;
  for (uint8_t& b : data) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    b = static_cast<uint8_t>(state);
  }
  const uint16_t scale = 0x1800;  // f16 0.0078125
  for (int64_t blk = 0; blk < rows * kCols / 32; ++blk) {
    std::memcpy(data.data() + blk * 18, &scale, 2);
  }
  kernels::WeightView w{DType::kQ4_0, data.data(), rows, kCols, row_bytes};
  std::vector<float> x(kCols, 0.01f), y(static_cast<size_t>(rows));
  kernels::cpu::CpuContext ctx;
  ctx.pool = &pool;
  double best = 0;
  for (int run = 0; run < 5; ++run) {
    const auto start = std::chrono::steady_clock::now();
    kernels::cpu::MatMul(ctx, w, x.data(), 1, kCols, y.data(), rows);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (run > 0 && s > 0) best = std::max(best, static_cast<double>(data.size()) / s / 1e9);
  }
  return best;
}

absl::StatusOr<double> MemTotalBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  double value = 0;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "MemTotal:") return value * 1024.0;  // the value is in kB (KiB)
  }
  return absl::UnavailableError(
      "cannot read MemTotal from /proc/meminfo; give the memory with --memory-gib");
}

std::string DeviceNames() {
  std::vector<std::string> names;
  for (const Preset& p : kGpuPresets) names.emplace_back(p.name);
  names.emplace_back("cpu");
  return absl::StrJoin(names, ", ");
}

absl::StatusOr<Device> PresetDevice(const std::string& name) {
  for (const Preset& p : kGpuPresets) {
    if (name != p.name) continue;
    Device d;
    d.name = p.name;
    d.description = p.description;
    d.memory_bytes = p.memory_gb * 1e9;
    d.bandwidth = p.bandwidth_gbs * 1e9;
    d.flops = p.tflops * 1e12;
    d.interconnect = p.interconnect_gbs * 1e9;
    d.latency_s = p.latency_us * 1e-6;
    return d;
  }
  if (name == "cpu") {
    Device d;
    d.name = "cpu";
    d.description = "this machine";
    d.gpu = false;
    d.shared = true;
    d.bandwidth = kCpuBandwidthGbs * 1e9;
    d.flops = kCpuTflops * 1e12;
    d.interconnect = kCpuInterconnectGbs * 1e9;
    d.latency_s = kCpuLatencyUs * 1e-6;
    return d;  // memory_bytes: MemTotal, read unless --memory-gib is given
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown --device '", name, "' (known: ", DeviceNames(), ")"));
}

// ---- The plan ----

struct Options {
  int32_t tp = 1;
  int64_t context = 0;
  int64_t prompt = 2048;
  int64_t chunk = 512;
  int64_t max_num_seqs = 0;
  double utilization = 0;
  double workspace_override = -1;  // bytes; < 0: the formula
  int kv_bytes = 2;                // per element
  std::string kv_dtype;
  int act_bytes = 2;  // activations on the wire
};

struct RankPlan {
  model::ShardPlan shard;
  RankWeights w;
  double memory = 0, bandwidth = 0, flops = 0;  // this rank's share of the device
  int64_t kv_bytes_per_token = 0;               // a full cache, dense
  int64_t kv_bytes_per_sequence = 0;            // what the scheduler reserves (whole pages)
  int64_t kv_read_per_sequence = 0;             // the slots a decode step reads (no rounding)
  double usable = 0, workspace = 0, kv_available = 0;
  int64_t kv_token_slots = 0;
  int64_t max_sequences = 0;
};

// One roofline estimate: a step is max(memory, compute) plus the collectives (not overlapped).
struct Step {
  int64_t tokens = 0;  // batch (decode) or prompt tokens (prefill)
  double bytes = 0, flops = 0;
  double memory_s = 0, compute_s = 0, comm_s = 0;
  double seconds() const { return std::max(memory_s, compute_s) + comm_s; }
  double tokens_per_s() const { return seconds() > 0 ? tokens / seconds() : 0; }
  const char* bound() const {
    if (comm_s > std::max(memory_s, compute_s)) return "interconnect";
    return memory_s >= compute_s ? "memory" : "compute";
  }
};

class Planner {
 public:
  Planner(const ModelInput& m, const Device& d, const Options& o,
          std::shared_ptr<const kvcache::KvPolicy> policy, const kvcache::KvGeometry& geometry,
          int32_t page)
      : m_(m), d_(d), o_(o), policy_(std::move(policy)), geometry_(geometry), page_(page) {}

  // Slots (K and V of every layer and KV head) the policy plans for a sequence of `tokens`
  // tokens at a page size, the whole model's: the engine's own bound.
  double ModelSlots(int32_t page, int64_t tokens) const {
    return static_cast<double>(policy_->PlannedPages(geometry_, page, tokens)) * page;
  }
  // The share of a full cache the policy keeps at `tokens` tokens.
  double KeptFraction(int64_t tokens) const {
    return ModelSlots(1, tokens) /
           static_cast<double>(kvcache::UniformTablePages(geometry_, 1, tokens));
  }
  // Slots of one (layer, KV head) table, K and V averaged, at `tokens` tokens.
  double SlotsPerTable(int64_t tokens) const {
    return ModelSlots(1, tokens) / (2.0 * geometry_.n_layer * geometry_.n_head_kv);
  }

  absl::StatusOr<RankPlan> Rank(int32_t rank) const {
    const model::ModelConfig& c = m_.config;
    RankPlan r;
    KVASIR_ASSIGN_OR_RETURN(r.shard, model::PlanShard(c, o_.tp, rank));
    KVASIR_ASSIGN_OR_RETURN(r.w, ShardWeights(m_, r.shard));
    const double share = d_.shared ? 1.0 / o_.tp : 1.0;
    r.memory = d_.memory_bytes * share;
    r.bandwidth = d_.bandwidth * share;
    r.flops = d_.flops * share;
    r.kv_bytes_per_token = model::ShardConfig(c, r.shard).KvBytesPerToken(o_.kv_bytes);
    // The rank holds kv_heads/n_head_kv of every planned table (a replicated head counts once).
    const double head_share = static_cast<double>(r.shard.n_head_kv()) / c.n_head_kv;
    const double slot_bytes = static_cast<double>(c.head_dim) * o_.kv_bytes;
    r.kv_bytes_per_sequence =
        static_cast<int64_t>(std::ceil(ModelSlots(page_, o_.context) * head_share * slot_bytes));
    r.kv_read_per_sequence =
        static_cast<int64_t>(std::ceil(ModelSlots(1, o_.context) * head_share * slot_bytes));
    r.usable = r.memory * o_.utilization;
    r.workspace = o_.workspace_override >= 0 ? o_.workspace_override : Workspace(r.shard);
    r.kv_available = std::max(0.0, r.usable - static_cast<double>(r.w.bytes) - r.workspace);
    r.kv_token_slots = static_cast<int64_t>(r.kv_available / r.kv_bytes_per_token);
    r.max_sequences = r.kv_bytes_per_sequence > 0
                          ? static_cast<int64_t>(r.kv_available / r.kv_bytes_per_sequence)
                          : 0;
    return r;
  }

  // Fixed overhead (GPU: CUDA context, cuBLAS workspace, NCCL buffers; cpu: the process, its
  // thread pool and tokenizer) plus the live activations of one prefill chunk in one layer and
  // f32 logits of the rank's vocabulary slice for as many rows.
  double Workspace(const model::ShardPlan& s) const {
    const model::ModelConfig& c = m_.config;
    const double fixed = d_.gpu ? kGiB : 0.25 * kGiB;
    const double rows = static_cast<double>(std::min(o_.prompt, o_.chunk));
    // Residual and normed input, q/k/v, the attention output, gate and up.
    const double per_token =
        2.0 * c.n_embd + (2.0 * s.n_head() + 2.0 * s.n_head_kv()) * c.head_dim + 2.0 * s.n_ff();
    return fixed + rows * per_token * o_.act_bytes + rows * s.n_vocab() * 4.0;
  }

  // Ring all-reduce of `bytes` per rank: 2 (TP-1)/TP of them cross each link, plus the latency.
  double AllReduce(double bytes) const {
    if (o_.tp == 1) return 0;
    return 2.0 * (o_.tp - 1) / o_.tp * bytes / d_.interconnect + d_.latency_s;
  }
  // Ring all-gather of `bytes` in all (each rank contributes 1/TP).
  double AllGather(double bytes) const {
    if (o_.tp == 1) return 0;
    return (o_.tp - 1.0) / o_.tp * bytes / d_.interconnect + d_.latency_s;
  }
  // The collectives of a forward step over `rows` tokens: two all-reduces per layer (after o and
  // after down) and one after the vocabulary-parallel embedding, each of rows * n_embd
  // activations, and an all-gather of `logit_rows` rows of f32 logits.
  double StepComm(double rows, double logit_rows) const {
    const model::ModelConfig& c = m_.config;
    return (2.0 * c.n_layer + 1) * AllReduce(rows * c.n_embd * o_.act_bytes) +
           AllGather(logit_rows * c.n_vocab * 4.0);
  }

  // Weight bytes a forward pass reads: all the rank holds except the embedding table, of which a
  // lookup reads only its rows (unless it is also the LM head).
  double WeightBytesRead(const RankPlan& r) const {
    return static_cast<double>(r.w.bytes) -
           (m_.config.tied_embeddings ? 0.0 : static_cast<double>(r.w.embedding_bytes));
  }

  // One decode step of `batch` sequences, each at the context length.
  Step Decode(const RankPlan& r, int64_t batch) const {
    const model::ModelConfig& c = m_.config;
    Step s;
    s.tokens = batch;
    const double b = static_cast<double>(batch);
    s.bytes = WeightBytesRead(r) + b * static_cast<double>(r.kv_read_per_sequence);
    const double attention =
        4.0 * c.n_layer * r.shard.n_head() * c.head_dim * SlotsPerTable(o_.context);
    s.flops =
        b * (2.0 * static_cast<double>(r.w.layer_matmul_params + r.w.output_params) + attention);
    s.memory_s = s.bytes / r.bandwidth;
    s.compute_s = s.flops / r.flops;
    s.comm_s = StepComm(b, b);
    return s;
  }

  // The prefill of one prompt of `prompt` tokens in chunks: the weights are read once per chunk,
  // the LM head runs for the last token only, attention is causal over the whole prompt.
  Step Prefill(const RankPlan& r) const {
    const model::ModelConfig& c = m_.config;
    Step s;
    const double p = static_cast<double>(o_.prompt);
    s.tokens = o_.prompt;
    const int64_t chunks = (o_.prompt + o_.chunk - 1) / o_.chunk;
    const double kv_written = ModelSlots(1, o_.prompt) *
                              (static_cast<double>(r.shard.n_head_kv()) / c.n_head_kv) *
                              c.head_dim * o_.kv_bytes;
    s.bytes = static_cast<double>(chunks) * WeightBytesRead(r) + kv_written;
    s.flops = 2.0 * static_cast<double>(r.w.layer_matmul_params) * p +
              2.0 * static_cast<double>(r.w.output_params) +
              4.0 * c.n_layer * r.shard.n_head() * c.head_dim * p * (p + 1) / 2.0;
    s.memory_s = s.bytes / r.bandwidth;
    s.compute_s = s.flops / r.flops;
    for (int64_t i = 0; i < chunks; ++i) {
      const double rows = static_cast<double>(std::min(o_.chunk, o_.prompt - i * o_.chunk));
      s.comm_s += StepComm(rows, i + 1 == chunks ? 1.0 : 0.0);
    }
    return s;
  }

 private:
  const ModelInput& m_;
  const Device& d_;
  const Options& o_;
  std::shared_ptr<const kvcache::KvPolicy> policy_;
  kvcache::KvGeometry geometry_;
  int32_t page_;
};

// The slowest rank's step (the ranks run every step together).
Step Slowest(const std::vector<RankPlan>& ranks, const std::function<Step(const RankPlan&)>& f) {
  Step worst;
  bool first = true;
  for (const RankPlan& r : ranks) {
    Step s = f(r);
    if (first || s.seconds() > worst.seconds()) worst = s;
    first = false;
  }
  return worst;
}

Json StepJson(const Step& s, bool decode) {
  Json j;
  j[decode ? "batch" : "prompt_tokens"] = s.tokens;
  j["tokens_per_s"] = s.tokens_per_s();
  if (decode) j["tokens_per_s_per_sequence"] = s.seconds() > 0 ? 1.0 / s.seconds() : 0.0;
  j["seconds"] = s.seconds();
  j["memory_s"] = s.memory_s;
  j["compute_s"] = s.compute_s;
  j["allreduce_s"] = s.comm_s;
  j["bytes_read"] = s.bytes;
  j["flops"] = s.flops;
  j["bound"] = s.bound();
  return j;
}

// A duration for the table, in us, ms or s.
std::string Ms(double s) {
  if (s == 0) return "0";
  if (s < 1e-3) return absl::StrFormat("%.3g us", s * 1e6);
  return s < 1 ? absl::StrFormat("%.3g ms", s * 1e3) : absl::StrFormat("%.3g s", s);
}

constexpr const char* kAssumptions =
    "\nassumptions (docs/parallelism.md, \"Capacity planning: kvasir plan\"):\n"
    "  weights   the engine's shard plan (model/shard_plan.h): q/k/v column-parallel by head, o\n"
    "            row-parallel, gate/up column-parallel, down row-parallel, token embedding and\n"
    "            output layer split by vocabulary (ceil(n_vocab/TP) rows per rank, the last rank\n"
    "            short), norms replicated. KV heads are split, or replicated when TP > n_head_kv.\n"
    "            Refused: n_head % TP != 0, n_head_kv neither a multiple nor a divisor of TP,\n"
    "            n_ff % TP != 0. GGUF: every tensor's real bytes; config.json: --weight-dtype\n"
    "            (default torch_dtype; q4_0 18, q4_1 20, q8_0 34 bytes per 32 weights; norms f32\n"
    "            when quantized)\n"
    "  KV        per token per rank 2 * n_layer * kv_heads_per_rank * head_dim * dtype bytes; a\n"
    "            sequence of the context holds what the policy's PlannedPages plans (the\n"
    "            scheduler's admission bound, whole pages of 16 slots): full every token,\n"
    "            streaming sink+window, h2o budget+1, lococo slots+chunk, dmc sink+recent plus "
    "the\n"
    "            rest / ratio (free mode), pod every V and anchor-layer K, the other K "
    "sink+window\n"
    "  memory    per rank: memory * utilization - weights - workspace, where workspace = 1 GiB\n"
    "            (GPU; cpu 0.25 GiB) + one prefill chunk's activations in one layer + f32 logits\n"
    "            of the rank's vocabulary slice for that many rows (--workspace-gib overrides)\n"
    "  cpu       memory = MemTotal of /proc/meminfo, utilization 0.75; bandwidth = the lower of\n"
    "            the memory's read rate and the rate the kernels read Q4_0 weights at batch 1,\n"
    "            both measured (about 2 s; --bandwidth-gbs skips it); 0.2 TFLOP/s\n"
    "            (2 cores * 3 GHz * 32 f32 FLOP/cycle), loopback TCP 5 GB/s + 30 us; the TP ranks\n"
    "            share the machine (each gets 1/TP of its memory, bandwidth and FLOP/s). Measure\n"
    "            the bandwidth with `kvasir bench engine` and pass --bandwidth-gbs\n"
    "  decode    a step of B sequences, each at the context length: max(memory, compute) +\n"
    "            collectives; memory = (weights except the embedding table + B * KV held per\n"
    "            sequence) / bandwidth; compute = B * (2 * matmul params per rank + 4 * n_layer *\n"
    "            heads_per_rank * head_dim * kept slots per head) / FLOP/s\n"
    "  prefill   one prompt of --prompt-len tokens in chunks of --prefill-chunk: compute = (2 *\n"
    "            layer matmul params * P + 2 * LM head params + 4 * n_layer * heads_per_rank *\n"
    "            head_dim * P(P+1)/2) / FLOP/s; memory = chunks * weights / bandwidth\n"
    "  network   per step 2 all-reduces per layer + 1 after the embedding, of tokens * n_embd\n"
    "            * (2 bytes GPU, 4 cpu) each: ring 2(TP-1)/TP * bytes / interconnect + latency;\n"
    "            plus an all-gather of f32 logits ((TP-1)/TP * bytes / interconnect + latency).\n"
    "            Collectives do not overlap compute; TP 1 has none\n"
    "  presets   public spec sheet figures: h100-80g 80 GB, 3.35 TB/s, 989 TFLOP/s bf16 dense,\n"
    "            NVLink 450 GB/s per direction; h200 141 GB, 4.8 TB/s, 989 TFLOP/s, 450 GB/s;\n"
    "            a100-80g 80 GB, 2.039 TB/s, 312 TFLOP/s, 300 GB/s; GB = 1e9 bytes; all-reduce\n"
    "            latency 10 us (an assumption)\n";

}  // namespace

int RunPlan(int argc, char** argv) {
  const std::string cmd = kCommand;
  ArgParser p("kvasir plan --model CONFIG --device NAME [--tensor-parallel-size N] [options]",
              "Estimates, per tensor-parallel rank, the weight and KV cache memory, how many "
              "sequences of a context length fit, and roofline decode and prefill tokens/s, for a "
              "model config, a device and a KV policy. Nothing is loaded onto a device.");
  std::string model_flag = "default", device_name, kv_dtype, weight_dtype, kv_policy = "full";
  int32_t tp = 1;
  int64_t context = 0, prompt = 2048, chunk = worker::GenerateRequest().prefill_chunk,
          max_num_seqs = 0;
  // Number flags whose default depends on the device: "" until given.
  std::string memory_gib, bandwidth_gbs, tflops, interconnect_gbs, latency_us, utilization,
      workspace_gib;
  bool json = false;
  p.AddString("model", &model_flag, "PATH",
              "a config.json, a Hugging Face folder holding one, a .gguf file, or 'default'");
  p.AddString("device", &device_name, "NAME", "h100-80g, h200, a100-80g or cpu (required)");
  p.AddInt32("tensor-parallel-size", &tp, "ranks of the group, one device each (cpu: shared)");
  p.AddString("kv-dtype", &kv_dtype, "TYPE",
              "KV element type: f16, bf16 or f32 (default f16 on "
              "GPUs, f32 on cpu as the CPU engine)");
  p.AddString("weight-dtype", &weight_dtype, "TYPE",
              "config.json inputs: f16, bf16, f32, q4_0, q4_1 or q8_0 (default: torch_dtype)");
  p.AddString("kv-policy", &kv_policy, "SPEC", "KV policy spec (docs/compression.md)");
  p.AddInt("context-len", &context, "tokens per sequence (0: the model's context length)");
  p.AddInt("prompt-len", &prompt, "prompt tokens of the prefill estimate");
  p.AddInt("prefill-chunk", &chunk, "prompt tokens per forward step (the engine's default)");
  p.AddInt("max-num-seqs", &max_num_seqs,
           "cap on the batch of the decode estimate (0: as many as the KV memory holds)");
  p.AddString("gpu-memory-utilization", &utilization, "X",
              "share of the device memory to use (default 0.9 on GPUs, 0.75 of MemTotal on cpu)");
  p.AddString("memory-gib", &memory_gib, "X",
              "override the device memory, GiB (cpu: the whole machine's)");
  p.AddString("bandwidth-gbs", &bandwidth_gbs, "X", "override the memory bandwidth, GB/s");
  p.AddString("tflops", &tflops, "X", "override the dense FLOP/s, TFLOP/s");
  p.AddString("interconnect-gbs", &interconnect_gbs, "X",
              "override the bandwidth between ranks, GB/s per direction");
  p.AddString("interconnect-latency-us", &latency_us, "X",
              "override the latency of one collective, microseconds");
  p.AddString("workspace-gib", &workspace_gib, "X",
              "override the activation/workspace allowance per rank, GiB (default: the formula "
              "below)");
  p.AddBool("json", &json, "print one JSON object");
  p.AddEpilog(kAssumptions);
  p.AddEpilog(
      "\nexample:\n  kvasir plan --model tests/testing/fixtures/llama2-70b --device h200 "
      "--tensor-parallel-size 8 --kv-policy streaming:sink=4,window=1020\n");
  p.AddEpilog("\nKV policies:\n" + kvcache::PolicyHelp());
  if (absl::Status s = p.Parse(argc, argv); !s.ok()) return Fail(cmd, s, 2);
  if (p.help_requested()) {
    std::fputs(p.Help().c_str(), stdout);
    return 0;
  }
  auto usage = [&](std::string message) {
    return Fail(cmd, absl::InvalidArgumentError(std::move(message)), 2);
  };
  if (device_name.empty()) return usage(absl::StrCat("--device is required (", DeviceNames(), ")"));
  auto preset = PresetDevice(device_name);
  if (!preset.ok()) return Fail(cmd, preset.status(), 2);
  Device device = *preset;
  // A number flag: nullopt when not given; a usage error unless finite and >= `min` (> `min`
  // unless `min_included`).
  auto number = [&](const char* flag, const std::string& text, double min,
                    bool min_included) -> absl::StatusOr<std::optional<double>> {
    if (!p.was_set(flag)) return std::optional<double>();
    double v = 0;
    if (!absl::SimpleAtod(text, &v) || !std::isfinite(v) || v < min ||
        (!min_included && v == min)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", flag, " wants a number ", min_included ? ">= " : "> ", min, ", got '", text, "'"));
    }
    return std::optional<double>(v);
  };
  const struct {
    const char* flag;
    const std::string& text;
    double scale;
    double* field;
  } overrides[] = {
      {"memory-gib", memory_gib, kGiB, &device.memory_bytes},
      {"bandwidth-gbs", bandwidth_gbs, 1e9, &device.bandwidth},
      {"tflops", tflops, 1e12, &device.flops},
      {"interconnect-gbs", interconnect_gbs, 1e9, &device.interconnect},
      {"interconnect-latency-us", latency_us, 1e-6, &device.latency_s},
  };
  for (const auto& o : overrides) {
    auto v = number(o.flag, o.text, 0, o.field == &device.latency_s);
    if (!v.ok()) return Fail(cmd, v.status(), 2);
    if (v->has_value()) *o.field = **v * o.scale;
  }
  if (!device.gpu && !p.was_set("memory-gib")) {
    auto mem = MemTotalBytes();
    if (!mem.ok()) return Fail(cmd, mem.status(), 1);
    device.memory_bytes = *mem;
  }
  if (!device.gpu && !p.was_set("bandwidth-gbs")) {
    // On a few cores decode is bound by how fast the kernels consume quantized weights rather
    // than by the memory: take the lower of the two, both measured here (about 2 s).
    ThreadPool pool(0);
    const double memory = kernels::cpu::MeasureMemoryReadGBps(pool);
    const double kernels = MeasureMatVecGBps(pool);
    device.bandwidth = std::min(memory, kernels) * 1e9;
    device.description = absl::StrFormat(
        "this machine; weights read at %.1f GB/s by the kernels, memory %.1f GB/s: measured",
        kernels, memory);
  }

  Options o;
  if (tp < 1 || tp > kMaxTensorParallel) {
    return usage(absl::StrCat("--tensor-parallel-size must be in [1, ", kMaxTensorParallel, "]"));
  }
  o.tp = tp;
  auto util = number("gpu-memory-utilization", utilization, 0, false);
  if (!util.ok()) return Fail(cmd, util.status(), 2);
  o.utilization = util->value_or(device.gpu ? kGpuUtilization : kCpuUtilization);
  if (o.utilization > 1) return usage("--gpu-memory-utilization must be in (0, 1]");
  auto workspace = number("workspace-gib", workspace_gib, 0, true);
  if (!workspace.ok()) return Fail(cmd, workspace.status(), 2);
  if (workspace->has_value()) o.workspace_override = **workspace * kGiB;
  o.kv_dtype = kv_dtype.empty() ? (device.gpu ? "f16" : "f32") : kv_dtype;
  if (o.kv_dtype == "f16" || o.kv_dtype == "bf16") {
    o.kv_bytes = 2;
  } else if (o.kv_dtype == "f32") {
    o.kv_bytes = 4;
  } else {
    return usage(absl::StrCat("--kv-dtype must be f16, bf16 or f32, got '", kv_dtype, "'"));
  }
  o.act_bytes = device.gpu ? 2 : 4;
  if (prompt < 1 || prompt > kMaxTokens || chunk < 1 || chunk > kMaxTokens || context < 0 ||
      context > kMaxTokens || max_num_seqs < 0) {
    return usage(absl::StrCat("--prompt-len and --prefill-chunk must be in [1, ", kMaxTokens,
                              "], --context-len in [0, ", kMaxTokens, "] and --max-num-seqs >= 0"));
  }
  o.prompt = prompt;
  o.chunk = chunk;
  o.max_num_seqs = max_num_seqs;

  int load_exit = 1;
  auto loaded = LoadModel(model_flag, weight_dtype, &load_exit);
  if (!loaded.ok()) return Fail(cmd, loaded.status(), load_exit);
  const ModelInput& m = *loaded;
  const model::ModelConfig& c = m.config;
  o.context = context > 0 ? context : c.context_length;
  if (o.context > c.context_length) {
    std::fprintf(stderr, "%s: note: --context-len %lld is beyond the model's context length %d\n",
                 cmd.c_str(), static_cast<long long>(o.context), c.context_length);
  }

  const kvcache::KvGeometry geometry = worker::GeometryOf(c);
  auto policy = kvcache::ParsePolicy(kv_policy, geometry);
  if (!policy.ok()) return Fail(cmd, policy.status(), 2);
  const int32_t page = worker::EngineOptions().kv_page_size;

  const Planner planner(m, device, o, *policy, geometry, page);
  std::vector<RankPlan> ranks;
  for (int32_t r = 0; r < tp; ++r) {
    auto plan = planner.Rank(r);
    if (!plan.ok()) {
      const int code = absl::IsInvalidArgument(plan.status()) ? 2 : 1;
      return Fail(cmd, plan.status(), code);
    }
    ranks.push_back(std::move(*plan));
  }
  int64_t max_seqs = ranks[0].max_sequences;
  int64_t max_weights = 0, kv_per_token = 0;
  double min_available = ranks[0].kv_available, shortfall = 0;
  for (const RankPlan& r : ranks) {
    max_seqs = std::min(max_seqs, r.max_sequences);
    max_weights = std::max(max_weights, r.w.bytes);
    kv_per_token = std::max(kv_per_token, r.kv_bytes_per_token);
    min_available = std::min(min_available, r.kv_available);
    // What one sequence of the context lacks on this rank.
    shortfall = std::max(shortfall, static_cast<double>(r.w.bytes + r.kv_bytes_per_sequence) +
                                        r.workspace - r.usable);
  }
  int64_t total_weight_bytes = 0, total_params = 0;
  for (const Weight& w : m.weights) {
    total_weight_bytes += w.bytes;
    int64_t e = 1;
    for (int64_t n : w.ne) e *= n;
    total_params += e;
  }
  const int64_t batch = o.max_num_seqs > 0 ? std::min(max_seqs, o.max_num_seqs) : max_seqs;
  const bool fits = max_seqs >= 1;
  const Step decode1 = Slowest(ranks, [&](const RankPlan& r) { return planner.Decode(r, 1); });
  std::optional<Step> decode_max;
  if (fits) {
    decode_max = Slowest(ranks, [&](const RankPlan& r) { return planner.Decode(r, batch); });
  }
  const Step prefill = Slowest(ranks, [&](const RankPlan& r) { return planner.Prefill(r); });
  const double kept = planner.KeptFraction(o.context);

  if (json) {
    Json out;
    out["model"] = {{"name", c.name},
                    {"format", m.format},
                    {"path", m.path},
                    {"n_layer", c.n_layer},
                    {"n_head", c.n_head},
                    {"n_head_kv", c.n_head_kv},
                    {"head_dim", c.head_dim},
                    {"n_embd", c.n_embd},
                    {"n_ff", c.n_ff},
                    {"n_vocab", c.n_vocab},
                    {"context_length", c.context_length},
                    {"tied_embeddings", c.tied_embeddings},
                    {"weight_types", m.weight_types},
                    {"params", total_params},
                    {"weight_bytes", total_weight_bytes}};
    out["device"] = {{"name", device.name},
                     {"description", device.description},
                     {"memory_bytes", device.memory_bytes},
                     {"bandwidth_bytes_per_s", device.bandwidth},
                     {"flops_per_s", device.flops},
                     {"interconnect_bytes_per_s", device.interconnect},
                     {"interconnect_latency_s", device.latency_s},
                     {"shared_by_ranks", device.shared}};
    out["tensor_parallel_size"] = tp;
    out["kv_policy"] = (*policy)->spec();
    out["kv_dtype"] = o.kv_dtype;
    out["context_len"] = o.context;
    out["prompt_len"] = o.prompt;
    out["prefill_chunk"] = o.chunk;
    out["gpu_memory_utilization"] = o.utilization;
    out["page_size"] = page;
    out["kv_heads_per_rank"] = ranks[0].shard.n_head_kv();
    out["kv_replicas"] = ranks[0].shard.kv_replicas;
    out["kv_kept_fraction"] = kept;
    out["weight_bytes_per_rank"] = max_weights;
    out["kv_bytes_per_token_per_rank"] = kv_per_token;
    out["kv_available_bytes_per_rank"] = min_available;
    out["max_sequences"] = max_seqs;
    out["fits"] = fits;
    out["shortfall_bytes_per_rank"] = fits ? 0.0 : shortfall;
    Json rank_list = Json::array();
    for (const RankPlan& r : ranks) {
      rank_list.push_back({{"rank", r.shard.rank},
                           {"query_heads", r.shard.n_head()},
                           {"kv_heads", r.shard.n_head_kv()},
                           {"vocab_rows", r.shard.n_vocab()},
                           {"weight_bytes", r.w.bytes},
                           {"params", r.w.params},
                           {"matmul_params", r.w.layer_matmul_params + r.w.output_params},
                           {"kv_bytes_per_token", r.kv_bytes_per_token},
                           {"kv_bytes_per_token_at_context", r.kv_bytes_per_token * kept},
                           {"kv_bytes_per_sequence", r.kv_bytes_per_sequence},
                           {"memory_bytes", r.memory},
                           {"usable_bytes", r.usable},
                           {"workspace_bytes", r.workspace},
                           {"kv_available_bytes", r.kv_available},
                           {"kv_token_slots", r.kv_token_slots},
                           {"max_sequences", r.max_sequences}});
    }
    out["ranks"] = std::move(rank_list);
    out["decode"] = {{"batch_1", StepJson(decode1, true)},
                     {"max_batch", decode_max ? StepJson(*decode_max, true) : Json()}};
    out["prefill"] = StepJson(prefill, false);
    std::cout << out.dump(2) << "\n";
    return 0;
  }

  std::string text;
  absl::StrAppendFormat(&text, "kvasir plan: %s (%s) on %d x %s, tensor-parallel size %d\n", c.name,
                        m.format, device.shared ? 1 : tp, device.name, tp);
  absl::StrAppendFormat(
      &text,
      "  model    %d layers, %d heads, %d KV heads, head dim %d, hidden %d, ffn %d, vocab %d;\n"
      "           %s parameters, %s of weights (%s)\n",
      c.n_layer, c.n_head, c.n_head_kv, c.head_dim, c.n_embd, c.n_ff, c.n_vocab,
      total_params >= 1000000000 ? absl::StrFormat("%.2f B", total_params / 1e9)
                                 : absl::StrFormat("%.3f M", total_params / 1e6),
      FormatBytes(static_cast<double>(total_weight_bytes)), m.weight_types);
  absl::StrAppendFormat(
      &text,
      "  device   %s (%s): %.1f GB (%s), %.0f GB/s, %.4g TFLOP/s;\n"
      "           interconnect %.4g GB/s + %.4g us per collective%s\n",
      device.name, device.description, device.memory_bytes / 1e9, FormatBytes(device.memory_bytes),
      device.bandwidth / 1e9, device.flops / 1e12, device.interconnect / 1e9,
      device.latency_s * 1e6,
      device.shared && tp > 1 ? absl::StrCat("; the ", tp, " ranks share it") : "");
  absl::StrAppendFormat(
      &text, "  KV       %s, %s, context %d: %.1f%% of a full cache; %d KV head(s) per rank%s\n",
      (*policy)->spec(), o.kv_dtype, o.context, 100.0 * kept, ranks[0].shard.n_head_kv(),
      ranks[0].shard.kv_replicas > 1
          ? absl::StrCat(", each on ", ranks[0].shard.kv_replicas, " ranks")
          : "");
  absl::StrAppendFormat(&text, "  memory   utilization %.2f, workspace %s per rank\n\n",
                        o.utilization, FormatBytes(ranks[0].workspace));
  absl::StrAppendFormat(&text, "%-7s %12s %12s %12s %12s %12s %14s %10s\n", "rank", "weights",
                        "workspace", "KV free", "KV/token", "KV/sequence", "KV tokens", "max seqs");
  // Consecutive ranks with the same figures share a line.
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i + 1;
    while (j < ranks.size() && ranks[j].w.bytes == ranks[i].w.bytes &&
           ranks[j].max_sequences == ranks[i].max_sequences &&
           ranks[j].kv_token_slots == ranks[i].kv_token_slots) {
      ++j;
    }
    const RankPlan& r = ranks[i];
    const std::string label = j - i == 1 ? absl::StrCat(i) : absl::StrCat(i, "-", j - 1);
    absl::StrAppendFormat(&text, "%-7s %12s %12s %12s %10d B %12s %14d %10d\n", label,
                          FormatBytes(static_cast<double>(r.w.bytes)), FormatBytes(r.workspace),
                          FormatBytes(r.kv_available), r.kv_bytes_per_token,
                          FormatBytes(static_cast<double>(r.kv_bytes_per_sequence)),
                          r.kv_token_slots, r.max_sequences);
    i = j;
  }
  if (!fits) {
    absl::StrAppendFormat(&text,
                          "\ndoes not fit: the weights, the workspace and one sequence of %d "
                          "tokens exceed a rank's usable memory by %s (more ranks, a shorter "
                          "context or a KV policy help)\n",
                          o.context, FormatBytes(shortfall));
  }
  absl::StrAppendFormat(&text,
                        "\nroofline: a step takes max(memory, compute) + collectives\n"
                        "%-20s %12s %10s %10s %10s %11s  %s\n",
                        "", "tokens/s", "per seq", "memory", "compute", "all-reduce", "bound");
  auto row = [&](const std::string& label, const Step& s, bool decode) {
    absl::StrAppendFormat(&text, "%-20s %12.1f %10s %10s %10s %11s  %s\n", label, s.tokens_per_s(),
                          decode ? absl::StrFormat("%.1f", 1.0 / s.seconds()) : std::string("-"),
                          Ms(s.memory_s), Ms(s.compute_s), Ms(s.comm_s), s.bound());
  };
  row("decode, batch 1", decode1, true);
  if (decode_max && decode_max->tokens > 1)
    row(absl::StrCat("decode, batch ", decode_max->tokens), *decode_max, true);
  row(absl::StrCat("prefill, ", o.prompt, " tokens"), prefill, false);
  std::fputs(text.c_str(), stdout);
  return 0;
}

}  // namespace kvasir::cli
