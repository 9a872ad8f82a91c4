// Decode attention bandwidth of a backend: one query token per (sequence, KV head) item over a
// paged KV cache of `context / ratio` slots per head (what a policy compressing `ratio` times
// holds: full is 1), timed through kernels::Backend::Attention, and reported as the K and V bytes
// read per second, also as a fraction of a given peak (an H200's HBM: 4.8 TB/s).
//
//   build/bin/kvasir_attention_bench --device cuda --contexts 4096,32768 --ratios 1,2,4,8
//
// Defaults: a Llama-2-7B layer (32 KV heads, head_dim 128, no GQA), 16 sequences, f16 pages of 16
// slots. One JSON line per (context, ratio). Wall-clock time over --iters calls after a warm-up,
// with the backend synchronized before and after.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/base/dtype.h"
#include "common/base/thread_pool.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

#if KVASIR_HAVE_CUDA_BACKEND
#include "kernels/cuda/cuda_backend.h"
#endif

namespace kvasir::kernels {
namespace {

struct Options {
  std::string device = "cpu";
  std::vector<int> contexts = {4096, 32768};
  std::vector<int> ratios = {1, 2, 4, 8};
  int seqs = 16, kv_heads = 32, group = 1, head_dim = 128, page_size = 16, iters = 20;
  bool f16 = true;
  double peak_gbps = 4800;
};

std::vector<int> IntList(const char* s) {
  std::vector<int> out;
  for (const char* p = s; *p != '\0';) {
    char* end = nullptr;
    const long v = std::strtol(p, &end, 10);
    if (end == p || v <= 0) return {};
    out.push_back(static_cast<int>(v));
    p = *end == ',' ? end + 1 : end;
    if (*end != ',' && *end != '\0') return {};
  }
  return out;
}

[[noreturn]] void Usage(const char* why) {
  std::fprintf(stderr,
               "kvasir_attention_bench: %s\nusage: kvasir_attention_bench [--device cpu|cuda] "
               "[--contexts N,N] [--ratios N,N] [--seqs N] [--kv-heads N] [--group N] "
               "[--head-dim N] [--iters N] [--f32] [--peak-gbps X]\n",
               why);
  std::exit(2);
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--f32") {
      o.f16 = false;
      continue;
    }
    if (a == "--help") Usage("decode attention bandwidth of a backend");
    if (i + 1 >= argc) Usage(("missing value of " + a).c_str());
    const char* v = argv[++i];
    const int n = std::atoi(v);
    if (a == "--device") {
      o.device = v;
    } else if (a == "--contexts") {
      o.contexts = IntList(v);
    } else if (a == "--ratios") {
      o.ratios = IntList(v);
    } else if (a == "--peak-gbps") {
      o.peak_gbps = std::atof(v);
    } else if (a == "--seqs" || a == "--kv-heads" || a == "--group" || a == "--head-dim" ||
               a == "--iters") {
      if (n <= 0) Usage((a + " takes a positive count").c_str());
      (a == "--seqs"       ? o.seqs
       : a == "--kv-heads" ? o.kv_heads
       : a == "--group"    ? o.group
       : a == "--head-dim" ? o.head_dim
                           : o.iters) = n;
    } else {
      Usage(("unknown option " + a).c_str());
    }
  }
  if (o.contexts.empty() || o.ratios.empty()) Usage("--contexts and --ratios take N,N");
  return o;
}

std::unique_ptr<Backend> MakeBackend(const std::string& device) {
  if (device == "cpu") {
    static ThreadPool pool(0);
    return cpu::NewCpuBackend(&pool);
  }
#if KVASIR_HAVE_CUDA_BACKEND
  if (device == "cuda") {
    std::string why;
    std::unique_ptr<Backend> b = cuda::NewCudaBackend(0, &why);
    if (b == nullptr) Usage(why.c_str());
    return b;
  }
#endif
  Usage(("no backend '" + device + "' in this build").c_str());
}

int Run(const Options& o) {
  std::unique_ptr<Backend> backend = MakeBackend(o.device);
  const int64_t elem = o.f16 ? 2 : 4;
  const int rows = o.seqs * o.kv_heads;
  for (int context : o.contexts) {
    for (int ratio : o.ratios) {
      const int slots = std::max(1, context / ratio);
      const int pages_per_row = (slots + o.page_size - 1) / o.page_size;
      const int64_t pages = int64_t{rows} * pages_per_row;
      const int64_t pool_bytes = pages * o.page_size * o.head_dim * elem;
      BackendBuffer k(*backend), v(*backend), q(*backend), out(*backend);
      if (!k.Reserve(pool_bytes) || !v.Reserve(pool_bytes) ||
          !q.Reserve(sizeof(float) * rows * o.group * o.head_dim) ||
          !out.Reserve(sizeof(float) * rows * o.group * o.head_dim)) {
        std::fprintf(stderr, "kvasir_attention_bench: out of memory at context %d\n", context);
        return 1;
      }
      // Small random values (the contents do not change the work).
      std::vector<uint8_t> fill(std::min<int64_t>(pool_bytes, int64_t{64} << 20));
      std::mt19937 rng(1);
      for (size_t i = 0; i < fill.size(); i += 2) fill[i] = static_cast<uint8_t>(rng());
      for (int64_t at = 0; at < pool_bytes; at += static_cast<int64_t>(fill.size())) {
        const int64_t n = std::min<int64_t>(static_cast<int64_t>(fill.size()), pool_bytes - at);
        backend->Upload(k.as<uint8_t>() + at, fill.data(), n);
        backend->Upload(v.as<uint8_t>() + at, fill.data(), n);
      }
      std::vector<float> qh(static_cast<size_t>(rows) * o.group * o.head_dim, 0.01f);
      backend->Upload(q.as(), qh.data(), sizeof(float) * qh.size());
      // Row r's pages are r * pages_per_row ...; every row full to `slots`.
      std::vector<int32_t> indptr(rows + 1), indices(pages), last(rows);
      for (int r = 0; r <= rows; ++r) indptr[r] = r * pages_per_row;
      for (int64_t p = 0; p < pages; ++p) indices[p] = static_cast<int32_t>(p);
      for (int r = 0; r < rows; ++r) last[r] = slots - (pages_per_row - 1) * o.page_size;
      auto view = [&](const void* pool) {
        PagedKvView pv;
        pv.num_rows = rows;
        pv.indptr = indptr.data();
        pv.indices = indices.data();
        pv.last_page_len = last.data();
        pv.page_size = o.page_size;
        pv.head_dim = o.head_dim;
        pv.dtype = o.f16 ? DType::kF16 : DType::kF32;
        pv.pool = pool;
        return pv;
      };
      std::vector<AttentionItem> items(rows);
      const int64_t token = int64_t{o.group} * o.head_dim;
      for (int r = 0; r < rows; ++r) {
        AttentionItem& it = items[r];
        it.q = q.as<float>() + r * token;
        it.q_token_stride = token;
        it.n_q = 1;
        it.k_row = r;
        it.v_row = r;
        it.n_keys = slots;
        it.out = out.as<float>() + r * token;
        it.out_token_stride = token;
      }
      AttentionBatch batch;
      batch.k = view(k.as());
      batch.v = view(v.as());
      batch.group = o.group;
      batch.head_dim = o.head_dim;
      batch.scale = 1.0f / std::sqrt(static_cast<float>(o.head_dim));
      batch.items = items;
      backend->Attention(batch);  // warm-up
      backend->Synchronize();
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < o.iters; ++i) backend->Attention(batch);
      backend->Synchronize();
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / o.iters;
      const double bytes = 2.0 * rows * slots * o.head_dim * elem;
      const double gbps = bytes / secs / 1e9;
      std::printf(
          "{\"device\": \"%s\", \"context\": %d, \"ratio\": %d, \"slots\": %d, \"seqs\": %d, "
          "\"kv_heads\": %d, \"group\": %d, \"head_dim\": %d, \"dtype\": \"%s\", \"us\": %.1f, "
          "\"gbps\": %.1f, \"fraction_of_peak\": %.3f}\n",
          backend->Describe().c_str(), context, ratio, slots, o.seqs, o.kv_heads, o.group,
          o.head_dim, o.f16 ? "f16" : "f32", secs * 1e6, gbps, gbps / o.peak_gbps);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace kvasir::kernels

int main(int argc, char** argv) { return kvasir::kernels::Run(kvasir::kernels::Parse(argc, argv)); }
