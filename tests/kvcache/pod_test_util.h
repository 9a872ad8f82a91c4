// Test scaffolding for the `pod` policy: drives a KvPolicy layer by layer with random pre-RoPE
// q/k/v (no model), remembers every token's rotated keys and values, and computes PoD attention
// the slow, obvious way: a dense softmax over the mixed key matrix (own keys where the key is
// proximal for the query, the anchor layer's keys where it is distant), one head, plain loops.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "common/base/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache::testing {

inline KvGeometry PodTestGeometry() {
  KvGeometry g;
  g.n_layer = 4;
  g.n_head = 6;
  g.n_head_kv = 2;
  g.head_dim = 8;
  g.n_rot = 8;
  g.rope_base = 10000.0f;
  g.rope_layout = kernels::RopeLayout::kAdjacentPairs;
  return g;
}

// Adjacent-pair RoPE of one head vector at `pos`, in double (independent of kernels/).
inline void RotateRef(const KvGeometry& g, int64_t pos, const float* x, double* out) {
  for (int32_t d = 0; d < g.head_dim; ++d) out[d] = x[d];
  for (int32_t j = 0; j < g.n_rot / 2; ++j) {
    const double theta =
        static_cast<double>(pos) * std::pow(static_cast<double>(g.rope_base), -2.0 * j / g.n_rot);
    const double c = std::cos(theta), s = std::sin(theta);
    const double x0 = x[2 * j], x1 = x[2 * j + 1];
    out[2 * j] = x0 * c - x1 * s;
    out[2 * j + 1] = x0 * s + x1 * c;
  }
}

// One layer's inputs and outputs of a step, [rows, width] each.
struct LayerData {
  std::vector<float> q, k, v, out;
};

// A sequence under test and what the reference remembers of it: per layer and token, the
// pre-RoPE key and the value of every KV head.
struct TrackedSeq {
  SequenceKv* seq = nullptr;
  std::vector<std::vector<std::vector<float>>> k, v;  // [layer][token][n_kv * hd]
};

class PolicyDriver {
 public:
  PolicyDriver(const KvGeometry& g, std::shared_ptr<const KvPolicy> policy, int32_t page_size = 4,
               DType dtype = DType::kF32, int64_t capacity_bytes = 8 << 20)
      : g_(g), policy_(std::move(policy)) {
    KvCacheOptions o;
    o.page_size = page_size;
    o.dtype = dtype;
    o.capacity_bytes = capacity_bytes;
    auto c = KvCache::Create(g, o);
    EXPECT_TRUE(c.ok()) << c.status();
    cache_ = std::move(*c);
    pool_ = std::make_unique<ThreadPool>(2);
    backend_ = std::make_unique<kernels::cpu::CpuBackend>(pool_.get());
  }

  KvCache& cache() { return *cache_; }
  const KvPolicy& policy() const { return *policy_; }
  kernels::Backend& backend() { return *backend_; }

  TrackedSeq NewSeq() {
    TrackedSeq t;
    t.seq = &cache_->CreateSequence(policy_);
    t.k.resize(g_.n_layer);
    t.v.resize(g_.n_layer);
    return t;
  }

  // Random inputs for one step: counts[s] new tokens for sequence s, for every layer.
  std::vector<LayerData> RandomInputs(const std::vector<int32_t>& counts, uint32_t seed) const {
    int32_t rows = 0;
    for (int32_t c : counts) rows += c;
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<LayerData> layers(g_.n_layer);
    const int32_t qd = g_.n_head * g_.head_dim, kvd = g_.n_head_kv * g_.head_dim;
    for (LayerData& d : layers) {
      d.q.resize(static_cast<size_t>(rows) * qd);
      d.k.resize(static_cast<size_t>(rows) * kvd);
      d.v.resize(static_cast<size_t>(rows) * kvd);
      d.out.assign(static_cast<size_t>(rows) * qd, 0.0f);
      for (float& x : d.q) x = normal(rng);
      for (float& x : d.k) x = normal(rng);
      for (float& x : d.v) x = normal(rng);
    }
    return layers;
  }

  // Runs one step of `seqs` (counts[s] tokens each) through the policy: Reserve, Attend per layer,
  // EndStep, n_tokens advances. `inputs` (from RandomInputs) gets the outputs; the tracked
  // sequences remember the pre-RoPE keys and values. Returns the first error.
  absl::Status Step(std::vector<TrackedSeq*> seqs, const std::vector<int32_t>& counts,
                    std::vector<LayerData>& inputs) {
    std::vector<SeqSpan> spans;
    std::vector<int32_t> pos;
    int32_t begin = 0;
    for (size_t s = 0; s < seqs.size(); ++s) {
      absl::Status st = policy_->Reserve(*cache_, *seqs[s]->seq, counts[s]);
      if (!st.ok()) return st;
      spans.push_back({seqs[s]->seq, begin, counts[s]});
      for (int32_t i = 0; i < counts[s]; ++i) {
        pos.push_back(static_cast<int32_t>(seqs[s]->seq->n_tokens() + i));
      }
      begin += counts[s];
    }
    const int32_t qd = g_.n_head * g_.head_dim, kvd = g_.n_head_kv * g_.head_dim;
    for (int32_t l = 0; l < g_.n_layer; ++l) {
      LayerData& d = inputs[l];
      for (size_t s = 0; s < seqs.size(); ++s) {
        for (int32_t i = 0; i < counts[s]; ++i) {
          const size_t row = static_cast<size_t>(spans[s].begin + i);
          seqs[s]->k[l].emplace_back(d.k.begin() + row * kvd, d.k.begin() + (row + 1) * kvd);
          seqs[s]->v[l].emplace_back(d.v.begin() + row * kvd, d.v.begin() + (row + 1) * kvd);
        }
      }
      // The policy rotates q and k in place: give it copies, keep the originals.
      std::vector<float> q = d.q, k = d.k, v = d.v;
      LayerInputs in;
      in.layer = l;
      in.seqs = spans;
      in.q = q.data();
      in.q_stride = qd;
      in.k = k.data();
      in.k_stride = kvd;
      in.v = v.data();
      in.v_stride = kvd;
      in.pos = pos.data();
      in.out = d.out.data();
      in.out_stride = qd;
      absl::Status st = policy_->Attend(*cache_, in, *backend_);
      if (!st.ok()) return st;
    }
    for (size_t s = 0; s < seqs.size(); ++s) {
      absl::Status st = policy_->EndStep(*cache_, *seqs[s]->seq, counts[s]);
      if (!st.ok()) return st;
      seqs[s]->seq->set_n_tokens(seqs[s]->seq->n_tokens() + counts[s]);
    }
    return absl::OkStatus();
  }

 private:
  KvGeometry g_;
  std::shared_ptr<const KvPolicy> policy_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<kernels::cpu::CpuBackend> backend_;
};

// The slow PoD reference: the output of query head `qh` of `layer` for the token at position t of
// `seq` (q_raw: its pre-RoPE query vector), with anchor(layer, head) given.
//   key j (j <= t) = own layer's key if j < sink or j > t - window, else the anchor layer's key.
inline std::vector<double> PodReference(const KvGeometry& g, const TrackedSeq& seq, int32_t layer,
                                        int32_t anchor, int32_t qh, int64_t t, const float* q_raw,
                                        int32_t sink, int32_t window) {
  const int32_t hd = g.head_dim;
  const int32_t h = qh / g.group();
  std::vector<double> q(hd), key(hd);
  RotateRef(g, t, q_raw, q.data());
  std::vector<double> scores(static_cast<size_t>(t + 1));
  double max = -INFINITY;
  for (int64_t j = 0; j <= t; ++j) {
    const bool proximal = j < sink || j > t - window;
    const int32_t src = proximal ? layer : anchor;
    RotateRef(g, j, seq.k[src][j].data() + h * hd, key.data());
    double dot = 0;
    for (int32_t d = 0; d < hd; ++d) dot += q[d] * key[d];
    scores[j] = dot / std::sqrt(static_cast<double>(hd));
    max = std::max(max, scores[j]);
  }
  double sum = 0;
  for (double& s : scores) {
    s = std::exp(s - max);
    sum += s;
  }
  std::vector<double> out(hd, 0.0);
  for (int64_t j = 0; j <= t; ++j) {
    for (int32_t d = 0; d < hd; ++d) out[d] += scores[j] / sum * seq.v[layer][j][h * hd + d];
  }
  return out;
}

}  // namespace kvasir::kvcache::testing
