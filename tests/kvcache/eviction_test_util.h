// Test scaffolding for the KV policies that keep a subset of tokens (streaming, h2o, lococo):
// deterministic random q/k/v per (layer, token), a driver that feeds them to a policy through
// Reserve/Attend/EndStep in any chunking (several sequences per step), a copy of a sequence into
// a fresh cache through its tables and SaveState/LoadState, and the slow scalar pieces the
// references are made of (RoPE of one head, dense attention over a list of keys); and the checks
// every such policy passes (same bits as `full` when nothing is dropped, a restored sequence
// continues bit for bit).
#pragma once

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/base/thread_pool.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/ops.h"
#include "kvcache/full_policy.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache::testing_util {

inline KvGeometry TestGeometry(int32_t n_layer = 2, int32_t n_head = 4, int32_t n_head_kv = 2,
                               int32_t head_dim = 8) {
  KvGeometry g;
  g.n_layer = n_layer;
  g.n_head = n_head;
  g.n_head_kv = n_head_kv;
  g.head_dim = head_dim;
  g.n_rot = head_dim;
  g.rope_base = 10000.0f;
  return g;
}

// Pre-RoPE q/k/v of every (layer, token), uniform in [-scale, scale].
struct Inputs {
  KvGeometry g;
  int32_t n_tokens = 0;
  std::vector<float> q, k, v;
  int64_t qw() const { return int64_t{g.n_head} * g.head_dim; }
  int64_t kw() const { return int64_t{g.n_head_kv} * g.head_dim; }
  const float* Q(int32_t l, int32_t t) const {
    return q.data() + (int64_t{l} * n_tokens + t) * qw();
  }
  const float* K(int32_t l, int32_t t) const {
    return k.data() + (int64_t{l} * n_tokens + t) * kw();
  }
  const float* V(int32_t l, int32_t t) const {
    return v.data() + (int64_t{l} * n_tokens + t) * kw();
  }
};

inline Inputs RandomInputs(const KvGeometry& g, int32_t n_tokens, uint64_t seed,
                           float scale = 2.0f) {
  Inputs in;
  in.g = g;
  in.n_tokens = n_tokens;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  auto fill = [&](std::vector<float>& x, int64_t n) {
    x.resize(static_cast<size_t>(n));
    for (float& f : x) f = dist(rng);
  };
  fill(in.q, int64_t{g.n_layer} * n_tokens * in.qw());
  fill(in.k, int64_t{g.n_layer} * n_tokens * in.kw());
  fill(in.v, int64_t{g.n_layer} * n_tokens * in.kw());
  return in;
}

// One head's vector rotated at position `pos` with the scalar reference RoPE.
inline std::vector<float> Roped(const float* x, const KvGeometry& g, int32_t pos) {
  std::vector<float> out(x, x + g.head_dim);
  kernels::cpu::RopeRef(out.data(), 1, g.head_dim, 1, g.head_dim, g.n_rot, &pos, g.rope_base,
                        g.rope_layout);
  return out;
}
// Query head `qh` of token t in layer l, rotated; key/value of KV head h (key rotated).
inline std::vector<float> RefQ(const Inputs& in, int32_t l, int32_t t, int32_t qh) {
  return Roped(in.Q(l, t) + int64_t{qh} * in.g.head_dim, in.g, t);
}
inline std::vector<float> RefK(const Inputs& in, int32_t l, int32_t t, int32_t h) {
  return Roped(in.K(l, t) + int64_t{h} * in.g.head_dim, in.g, t);
}
inline std::vector<float> RefV(const Inputs& in, int32_t l, int32_t t, int32_t h) {
  const float* v = in.V(l, t) + int64_t{h} * in.g.head_dim;
  return std::vector<float>(v, v + in.g.head_dim);
}

// Softmax attention of one query over keys/values (double accumulation). probs gets the
// probabilities when not null.
inline std::vector<double> DenseAttention(const std::vector<float>& q,
                                          const std::vector<std::vector<float>>& keys,
                                          const std::vector<std::vector<float>>& values,
                                          std::vector<double>* probs = nullptr) {
  const size_t hd = q.size();
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> s(keys.size());
  double max = -INFINITY;
  for (size_t j = 0; j < keys.size(); ++j) {
    double dot = 0;
    for (size_t d = 0; d < hd; ++d) dot += static_cast<double>(q[d]) * keys[j][d];
    s[j] = dot * scale;
    max = std::max(max, s[j]);
  }
  double sum = 0;
  for (double& x : s) {
    x = std::exp(x - max);
    sum += x;
  }
  std::vector<double> out(hd, 0.0);
  for (size_t j = 0; j < keys.size(); ++j) {
    s[j] /= sum;
    for (size_t d = 0; d < hd; ++d) out[d] += s[j] * values[j][d];
  }
  if (probs != nullptr) *probs = s;
  return out;
}

// Feeds Inputs to sequences of one policy in a KvCache, and records every attention output.
class Driver {
 public:
  Driver(const KvGeometry& g, std::shared_ptr<const KvPolicy> policy, int32_t page_size = 4,
         DType dtype = DType::kF32)
      : g_(g), policy_(std::move(policy)), pool_(2), backend_(&pool_) {
    KvCacheOptions o;
    o.page_size = page_size;
    o.dtype = dtype;
    o.capacity_bytes = 64 << 20;
    auto cache = KvCache::Create(g, o);
    EXPECT_TRUE(cache.ok()) << cache.status();
    cache_ = std::move(*cache);
  }

  // A new sequence fed from `inputs` (which must outlive the driver). Returns its index.
  int AddSequence(const Inputs* inputs) {
    seqs_.push_back(&cache_->CreateSequence(policy_));
    inputs_.push_back(inputs);
    outputs_.emplace_back(static_cast<size_t>(g_.n_layer) * inputs->n_tokens * qw(), NAN);
    return static_cast<int>(seqs_.size()) - 1;
  }

  // One forward step: for every (sequence index, count), that sequence's next `count` tokens.
  absl::Status Step(const std::vector<std::pair<int, int32_t>>& parts) {
    int32_t n = 0;
    for (auto [s, count] : parts) {
      KVASIR_RETURN_IF_ERROR(policy_->Reserve(*cache_, *seqs_[s], count));
      n += count;
    }
    const int64_t kw = int64_t{g_.n_head_kv} * g_.head_dim;
    std::vector<float> q(n * qw()), k(n * kw), v(n * kw), out(n * qw(), NAN);
    std::vector<int32_t> pos(n);
    std::vector<SeqSpan> spans;
    int32_t row = 0;
    for (auto [s, count] : parts) {
      spans.push_back({seqs_[s], row, count});
      for (int32_t i = 0; i < count; ++i) pos[row + i] = seqs_[s]->n_tokens() + i;
      row += count;
    }
    for (int32_t l = 0; l < g_.n_layer; ++l) {
      row = 0;
      for (auto [s, count] : parts) {
        for (int32_t i = 0; i < count; ++i) {
          const int32_t t = static_cast<int32_t>(seqs_[s]->n_tokens()) + i;
          std::memcpy(&q[(row + i) * qw()], inputs_[s]->Q(l, t), sizeof(float) * qw());
          std::memcpy(&k[(row + i) * kw], inputs_[s]->K(l, t), sizeof(float) * kw);
          std::memcpy(&v[(row + i) * kw], inputs_[s]->V(l, t), sizeof(float) * kw);
        }
        row += count;
      }
      LayerInputs in;
      in.layer = l;
      in.seqs = spans;
      in.q = q.data();
      in.q_stride = qw();
      in.k = k.data();
      in.k_stride = kw;
      in.v = v.data();
      in.v_stride = kw;
      in.pos = pos.data();
      in.out = out.data();
      in.out_stride = qw();
      in.scratch = &scratch_;
      KVASIR_RETURN_IF_ERROR(policy_->Attend(*cache_, in, backend_));
      row = 0;
      for (auto [s, count] : parts) {
        for (int32_t i = 0; i < count; ++i) {
          const int32_t t = static_cast<int32_t>(seqs_[s]->n_tokens()) + i;
          std::memcpy(Out(s, l, t), &out[(row + i) * qw()], sizeof(float) * qw());
        }
        row += count;
      }
    }
    for (auto [s, count] : parts) {
      KVASIR_RETURN_IF_ERROR(policy_->EndStep(*cache_, *seqs_[s], count));
      seqs_[s]->set_n_tokens(seqs_[s]->n_tokens() + count);
    }
    return absl::OkStatus();
  }

  // Feeds all of sequence s's remaining tokens up to `end` in steps of the given sizes (cycled).
  absl::Status Feed(int s, int32_t end, const std::vector<int32_t>& chunks) {
    for (size_t c = 0; seqs_[s]->n_tokens() < end; ++c) {
      const int32_t left = end - static_cast<int32_t>(seqs_[s]->n_tokens());
      KVASIR_RETURN_IF_ERROR(Step({{s, std::min(left, chunks[c % chunks.size()])}}));
    }
    return absl::OkStatus();
  }

  // A new driver whose only sequence continues sequence s, restored from its tables (slot by
  // slot) and its policy state (SaveState, then LoadState), as the block codec does.
  std::unique_ptr<Driver> Restore(int s, absl::Status* status) const {
    auto d =
        std::make_unique<Driver>(g_, policy_, cache_->pool().page_size(), cache_->pool().dtype());
    d->AddSequence(inputs_[s]);
    SequenceKv& src = *seqs_[s];
    SequenceKv& dst = *d->seqs_[0];
    std::vector<float> slot(g_.head_dim);
    for (int32_t l = 0; l < g_.n_layer; ++l) {
      for (int32_t h = 0; h < g_.n_head_kv; ++h) {
        for (bool is_k : {true, false}) {
          const HeadTable& from = is_k ? src.k(l, h) : src.v(l, h);
          HeadTable& to = is_k ? dst.k(l, h) : dst.v(l, h);
          *status = d->cache_->Reserve(to, from.length, 0);
          if (!status->ok()) return nullptr;
          for (int32_t i = 0; i < from.length; ++i) {
            cache_->ReadSlot(from, i, slot.data());
            d->cache_->WriteSlot(to, i, slot.data());
          }
          to.length = from.length;
        }
      }
    }
    dst.set_n_tokens(src.n_tokens());
    std::string blob;
    *status = policy_->SaveState(src, blob);
    if (!status->ok()) return nullptr;
    *status = policy_->LoadState(blob, dst);
    if (!status->ok()) return nullptr;
    d->outputs_[0] = outputs_[s];
    return d;
  }

  KvCache& cache() { return *cache_; }
  SequenceKv& seq(int s) { return *seqs_[s]; }
  int64_t qw() const { return int64_t{g_.n_head} * g_.head_dim; }
  // Output of query head group of token t in layer l: [n_head * head_dim].
  float* Out(int s, int32_t l, int32_t t) {
    return outputs_[s].data() + (int64_t{l} * inputs_[s]->n_tokens + t) * qw();
  }
  const std::vector<float>& outputs(int s) const { return outputs_[s]; }

  // Every slot of a table as f32.
  std::vector<std::vector<float>> Slots(const HeadTable& t) const {
    std::vector<std::vector<float>> out(t.length, std::vector<float>(g_.head_dim));
    for (int32_t i = 0; i < t.length; ++i) cache_->ReadSlot(t, i, out[i].data());
    return out;
  }

 private:
  KvGeometry g_;
  std::shared_ptr<const KvPolicy> policy_;
  ThreadPool pool_;
  kernels::cpu::CpuBackend backend_;
  BackendScratch scratch_;
  std::unique_ptr<KvCache> cache_;
  std::vector<SequenceKv*> seqs_;
  std::vector<const Inputs*> inputs_;
  std::vector<std::vector<float>> outputs_;
};

// Bitwise equality of float arrays (NaN patterns included).
inline bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Driver d's outputs of sequence 0 for KV head h's query group in layer l, tokens [0, n), are
// within `tol` of the reference's ([token * group + g][head_dim]).
inline void ExpectHeadOutputsNear(Driver& d, const KvGeometry& g, int32_t l, int32_t h, int32_t n,
                                  const std::vector<std::vector<double>>& ref, double tol) {
  for (int32_t t = 0; t < n; ++t) {
    for (int32_t gi = 0; gi < g.group(); ++gi) {
      const float* out = d.Out(0, l, t) + int64_t{h * g.group() + gi} * g.head_dim;
      for (int32_t e = 0; e < g.head_dim; ++e) {
        ASSERT_NEAR(out[e], ref[t * g.group() + gi][e], tol) << "token " << t;
      }
    }
  }
}

// The policy `spec` parses (a failed expectation and nullptr otherwise).
inline std::shared_ptr<const KvPolicy> Parse(const std::string& spec, const KvGeometry& g) {
  auto p = ParsePolicy(spec, g);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *p : nullptr;
}

// The K and V slots of every (layer, KV head) of sequence 0 are the same in both drivers.
inline void ExpectSameTables(const KvGeometry& g, Driver& a, Driver& b) {
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      EXPECT_EQ(a.Slots(a.seq(0).k(l, h)), b.Slots(b.seq(0).k(l, h)));
      EXPECT_EQ(a.Slots(a.seq(0).v(l, h)), b.Slots(b.seq(0).v(l, h)));
    }
  }
}

// Feeds all of `in` under `spec` and under `full` in the same chunks: the outputs are the same
// bits and the caches hold as many slots; with `same_tables`, the very same slots too.
inline void ExpectEqualsFull(const KvGeometry& g, const Inputs& in, const std::string& spec,
                             const std::vector<int32_t>& chunks, bool same_tables) {
  SCOPED_TRACE(spec);
  Driver p(g, Parse(spec, g)), f(g, std::make_shared<FullPolicy>());
  p.AddSequence(&in);
  f.AddSequence(&in);
  ASSERT_TRUE(p.Feed(0, in.n_tokens, chunks).ok());
  ASSERT_TRUE(f.Feed(0, in.n_tokens, chunks).ok());
  EXPECT_TRUE(BitwiseEqual(p.outputs(0), f.outputs(0)));
  EXPECT_EQ(p.cache().Usage(p.seq(0)).slots, f.cache().Usage(f.seq(0)).slots);
  if (same_tables) ExpectSameTables(g, p, f);
}

// For every cut: a sequence fed up to the cut (in chunks `before`) and restored into a fresh cache
// (Driver::Restore) continues, fed to the end in chunks `after`, with the original's bits.
inline void ExpectRestoredContinuesBitForBit(const KvGeometry& g,
                                             const std::shared_ptr<const KvPolicy>& policy,
                                             const Inputs& in, const std::vector<int32_t>& cuts,
                                             const std::vector<int32_t>& before,
                                             const std::vector<int32_t>& after) {
  for (int32_t cut : cuts) {
    SCOPED_TRACE(cut);
    Driver d(g, policy);
    d.AddSequence(&in);
    ASSERT_TRUE(d.Feed(0, cut, before).ok());
    absl::Status st;
    std::unique_ptr<Driver> r = d.Restore(0, &st);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_TRUE(d.Feed(0, in.n_tokens, after).ok());
    ASSERT_TRUE(r->Feed(0, in.n_tokens, after).ok());
    EXPECT_TRUE(BitwiseEqual(d.outputs(0), r->outputs(0)));
  }
}

}  // namespace kvasir::kvcache::testing_util
