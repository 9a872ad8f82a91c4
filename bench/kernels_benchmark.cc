// Micro-benchmarks of the CPU kernels at the default model's shapes (SmolLM2-135M: dim 576,
// ffn 1536, 30 layers, 9 heads / 3 KV heads of 64, vocab 49152):
//  - BM_MatMul/<type>/<rows>/<cols>/<n>: one matrix, hot in cache after the first call; reports
//    GB/s of weights and GOP/s (2 rows cols n).
//  - BM_MatMulCold: the same, cycling through copies of the matrix that add up to 96 MiB (the
//    default model's weight bytes), so every call reads its weights from DRAM as decode does.
//  - BM_ModelMatMuls/<n>: every matrix product of one forward step of SmolLM2 Q4_1 (30 layers of
//    q, k, v, o, gate, up, down plus the Q8_0 LM head for min(n, 16) tokens) with MatMulShared as
//    an engine would use it; reports tokens/s, the ceiling the matmuls put on the engine.
//  - BM_AttentionDecode/<keys>/<f16>: one query token, GQA group 3, head_dim 64, pages of 16.
//  - BM_MemoryReadBandwidth: the STREAM-style probe of kernels/cpu/membw.h.
// Threads: KVASIR_NUM_THREADS or all cores. ISA: KVASIR_ISA=scalar|avx2|avx512 picks it. Weights
// are repacked as the CPU runner repacks them (kernels/cpu/ops.h PrefersRows8; KVASIR_REPACK=0:
// not). All rates are per wall-clock second (on a busy machine compare the CPU column too).
//   build/bin/kvasir_kernels_benchmark --benchmark_filter='MatMul/q4_1'
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/base/dtype.h"
#include "common/base/thread_pool.h"
#include "kernels/cpu/membw.h"
#include "kernels/cpu/ops.h"

namespace kvasir::kernels::cpu {
namespace {

ThreadPool& Pool() {
  static ThreadPool* pool = new ThreadPool(0);
  return *pool;
}

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.5f);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// A quantized matrix; rows are made from a few random source rows to keep set-up fast.
struct Weights {
  std::vector<uint8_t> data;
  WeightView view;
  Weights(DType t, int64_t rows, int64_t cols, uint32_t seed) {
    const int64_t row_bytes = DTypeRowBytes(t, cols);
    data.resize(static_cast<size_t>(rows * row_bytes));
    const std::vector<float> src = Random(static_cast<size_t>(cols * 8), seed);
    std::vector<uint8_t> proto(static_cast<size_t>(8 * row_bytes));
    for (int i = 0; i < 8; ++i) {
      QuantizeRow(t, src.data() + i * cols, cols, proto.data() + i * row_bytes);
    }
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(proto.begin() + (r % 8) * row_bytes, proto.begin() + (r % 8 + 1) * row_bytes,
                data.begin() + r * row_bytes);
    }
    view = WeightView{t, data.data(), rows, cols, row_bytes};
    // The layout the CPU runner would use (KVASIR_REPACK=0: the rows as mapped).
    if (PrefersRows8(view)) {
      std::vector<uint8_t> packed(data.size());
      view = RepackRows8(view, packed.data());
      data.swap(packed);
    }
  }
};

// Wall-clock time of the timed loop: the library's rate counters divide by the main thread's CPU
// time, which undercounts multi-threaded kernels.
class WallTimer {
 public:
  WallTimer() : start_(std::chrono::steady_clock::now()) {}
  // `amount` per iteration, per wall-clock second.
  double Rate(const benchmark::State& state, double amount) const {
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    return amount * static_cast<double>(state.iterations()) / s;
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

void SetCounters(benchmark::State& state, const WallTimer& timer, double weight_bytes, double ops) {
  state.counters["GB/s"] = timer.Rate(state, weight_bytes) / 1e9;
  state.counters["GOP/s"] = timer.Rate(state, ops) / 1e9;
}

void BM_MatMul(benchmark::State& state, DType t, bool cold) {
  const int64_t rows = state.range(0), cols = state.range(1), n = state.range(2);
  const int64_t row_bytes = DTypeRowBytes(t, cols);
  const int64_t copies = cold ? std::max<int64_t>(1, (int64_t{96} << 20) / (rows * row_bytes)) : 1;
  std::vector<std::unique_ptr<Weights>> w;
  for (int64_t i = 0; i < copies; ++i) {
    w.push_back(std::make_unique<Weights>(t, rows, cols, static_cast<uint32_t>(i + 1)));
  }
  const std::vector<float> x = Random(static_cast<size_t>(n * cols), 99);
  std::vector<float> y(static_cast<size_t>(n * rows));
  CpuContext ctx{&Pool()};
  int64_t i = 0;
  const WallTimer timer;
  for (auto _ : state) {
    MatMul(ctx, w[static_cast<size_t>(i)]->view, x.data(), n, cols, y.data(), rows);
    benchmark::DoNotOptimize(y.data());
    i = (i + 1) % copies;
  }
  SetCounters(state, timer, static_cast<double>(rows * row_bytes), 2.0 * rows * cols * n);
  state.SetLabel(std::string(DTypeName(t)) + " " + ActiveIsa() +
                 " threads=" + std::to_string(Pool().num_threads()));
}

void MatMulArgs(benchmark::internal::Benchmark* b, bool k_type) {
  for (int64_t n : {1, 16, 512}) {
    b->Args({576, 1536, n});               // ffn_down
    if (!k_type) b->Args({1536, 576, n});  // ffn_gate / ffn_up (576 is not a multiple of 256)
  }
  b->Unit(benchmark::kMicrosecond);
}

void RegisterMatMuls() {
  for (DType t : {DType::kQ4_1, DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K, DType::kF16,
                  DType::kBF16, DType::kF32}) {
    const bool k_type = t == DType::kQ4_K || t == DType::kQ6_K;
    const std::string name(DTypeName(t));
    MatMulArgs(benchmark::RegisterBenchmark(("BM_MatMul/" + name).c_str(),
                                            [t](benchmark::State& s) { BM_MatMul(s, t, false); }),
               k_type);
  }
  for (DType t : {DType::kQ4_1, DType::kQ8_0}) {
    benchmark::RegisterBenchmark(("BM_MatMulCold/" + std::string(DTypeName(t))).c_str(),
                                 [t](benchmark::State& s) { BM_MatMul(s, t, true); })
        ->Args({576, 1536, 1})
        ->Args({1536, 576, 1})
        ->Args({49152, 576, 1})
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
}

// One forward step's matrix products for SmolLM2-135M Q4_1.
void BM_ModelMatMuls(benchmark::State& state) {
  const int64_t n = state.range(0);
  constexpr int64_t kDim = 576, kKv = 192, kFfn = 1536, kVocab = 49152, kLayers = 30;
  struct Layer {
    Weights q{DType::kQ4_1, kDim, kDim, 1}, k{DType::kQ4_1, kKv, kDim, 2},
        v{DType::kQ4_1, kKv, kDim, 3}, o{DType::kQ4_1, kDim, kDim, 4},
        gate{DType::kQ4_1, kFfn, kDim, 5}, up{DType::kQ4_1, kFfn, kDim, 6},
        down{DType::kQ4_1, kDim, kFfn, 7};
  };
  std::vector<std::unique_ptr<Layer>> layers;
  for (int l = 0; l < kLayers; ++l) layers.push_back(std::make_unique<Layer>());
  const Weights head(DType::kQ8_0, kVocab, kDim, 8);
  const std::vector<float> x = Random(static_cast<size_t>(n * kFfn), 9);
  std::vector<float> q(n * kDim), k(n * kKv), v(n * kKv), o(n * kDim), g(n * kFfn), u(n * kFfn),
      logits(16 * kVocab);
  CpuContext ctx{&Pool()};
  const int64_t head_n = std::min<int64_t>(n, 16);
  const WallTimer timer;
  for (auto _ : state) {
    for (const auto& layer : layers) {
      const MatMulTarget qkv[3] = {{layer->q.view, q.data(), kDim},
                                   {layer->k.view, k.data(), kKv},
                                   {layer->v.view, v.data(), kKv}};
      MatMulShared(ctx, qkv, 3, x.data(), n, kDim);
      MatMul(ctx, layer->o.view, q.data(), n, kDim, o.data(), kDim);
      const MatMulTarget gu[2] = {{layer->gate.view, g.data(), kFfn},
                                  {layer->up.view, u.data(), kFfn}};
      MatMulShared(ctx, gu, 2, o.data(), n, kDim);
      MatMul(ctx, layer->down.view, g.data(), n, kFfn, o.data(), kDim);
    }
    MatMul(ctx, head.view, x.data() + (n - head_n) * kDim, head_n, kDim, logits.data(), kVocab);
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["tokens/s"] = timer.Rate(state, static_cast<double>(n));
  state.SetLabel(std::string(ActiveIsa()) + " threads=" + std::to_string(Pool().num_threads()));
}
BENCHMARK(BM_ModelMatMuls)
    ->Arg(1)
    ->Arg(4)
    ->Arg(16)
    ->Arg(512)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_AttentionDecode(benchmark::State& state) {
  const int32_t keys = static_cast<int32_t>(state.range(0));
  const DType dtype = state.range(1) ? DType::kF16 : DType::kF32;
  constexpr int32_t kHeadDim = 64, kGroup = 3, kPage = 16;
  const int32_t pages = (keys + kPage - 1) / kPage;
  std::vector<int32_t> indptr = {0, pages}, indices(pages), last = {keys - (pages - 1) * kPage};
  for (int32_t p = 0; p < pages; ++p) indices[p] = (p * 7) % pages;  // scattered pages
  const std::vector<float> kv = Random(static_cast<size_t>(pages) * kPage * kHeadDim, 1);
  std::vector<uint16_t> kv16(kv.size());
  ConvertF32ToF16(kv.data(), static_cast<int64_t>(kv.size()), kv16.data());
  PagedKvView view{1,
                   indptr.data(),
                   indices.data(),
                   last.data(),
                   kPage,
                   kHeadDim,
                   dtype,
                   dtype == DType::kF16 ? static_cast<const void*>(kv16.data())
                                        : static_cast<const void*>(kv.data())};
  const std::vector<float> q = Random(kGroup * kHeadDim, 2);
  std::vector<float> out(kGroup * kHeadDim), lse(kGroup);
  AttentionArgs a;
  a.q = q.data();
  a.q_token_stride = kGroup * kHeadDim;
  a.n_q = 1;
  a.group = kGroup;
  a.head_dim = kHeadDim;
  a.scale = 0.125f;
  a.k = a.v = view;
  a.n_keys = keys;
  a.out = out.data();
  a.out_token_stride = kGroup * kHeadDim;
  a.lse = lse.data();
  const WallTimer timer;
  for (auto _ : state) {
    Attention(a);
    benchmark::DoNotOptimize(out.data());
  }
  const double kv_bytes = 2.0 * keys * kHeadDim * (dtype == DType::kF16 ? 2 : 4);
  state.counters["GB/s"] = timer.Rate(state, kv_bytes) / 1e9;
  state.SetLabel(std::string(dtype == DType::kF16 ? "f16 " : "f32 ") + ActiveIsa());
}
BENCHMARK(BM_AttentionDecode)
    ->ArgsProduct({{512, 2048, 4096}, {0, 1}})
    ->Unit(benchmark::kMicrosecond);

// Causal attention of a 512-token prefill chunk over its own keys (one KV head, f16 pool): the
// engine runs 30 layers x 3 KV heads of these per prefill. GFLOP/s counts q.k and p.v.
void BM_AttentionPrefill(benchmark::State& state) {
  const int32_t n = static_cast<int32_t>(state.range(0));
  constexpr int32_t kHeadDim = 64, kGroup = 3, kPage = 16;
  const int32_t pages = (n + kPage - 1) / kPage;
  std::vector<int32_t> indptr = {0, pages}, indices(pages), last = {n - (pages - 1) * kPage};
  for (int32_t p = 0; p < pages; ++p) indices[p] = p;
  const std::vector<float> kv = Random(static_cast<size_t>(pages) * kPage * kHeadDim, 1);
  std::vector<uint16_t> kv16(kv.size());
  ConvertF32ToF16(kv.data(), static_cast<int64_t>(kv.size()), kv16.data());
  PagedKvView view{1,     indptr.data(), indices.data(), last.data(),
                   kPage, kHeadDim,      DType::kF16,    kv16.data()};
  const std::vector<float> q = Random(static_cast<size_t>(n) * kGroup * kHeadDim, 2);
  std::vector<float> out(q.size());
  std::vector<int32_t> visible(n);
  for (int32_t i = 0; i < n; ++i) visible[i] = i + 1;
  AttentionArgs a;
  a.q = q.data();
  a.q_token_stride = kGroup * kHeadDim;
  a.n_q = n;
  a.group = kGroup;
  a.head_dim = kHeadDim;
  a.scale = 0.125f;
  a.k = a.v = view;
  a.n_keys = n;
  a.n_visible = visible.data();
  a.out = out.data();
  a.out_token_stride = kGroup * kHeadDim;
  const WallTimer timer;
  for (auto _ : state) {
    Attention(a);
    benchmark::DoNotOptimize(out.data());
  }
  const double pairs = 0.5 * n * (n + 1.0) * kGroup;
  state.counters["GFLOP/s"] = timer.Rate(state, pairs * 4.0 * kHeadDim) / 1e9;
  state.SetLabel(std::string("f16 ") + ActiveIsa());
}
BENCHMARK(BM_AttentionPrefill)->Arg(512)->Unit(benchmark::kMillisecond);

void BM_MemoryReadBandwidth(benchmark::State& state) {
  double gbps = 0.0;
  for (auto _ : state) gbps = MeasureMemoryReadGBps(Pool());
  state.counters["GB/s"] = gbps;
  state.SetLabel("threads=" + std::to_string(Pool().num_threads()));
}
BENCHMARK(BM_MemoryReadBandwidth)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvasir::kernels::cpu

int main(int argc, char** argv) {
  kvasir::kernels::cpu::RegisterMatMuls();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
