// The `dmc` policy at the policy level: a plain scalar reference of the released code's decode
// step (one head, loops) against the policy's decode path; the parallel prefill against token by
// token; the update rule against the paper's formula; the window; lengths; the free mode's
// controller; SaveState/LoadState into a second cache, continued bit for bit; and bad input.
#include "kvcache/dmc_policy.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/base/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/ops.h"
#include "kvcache/full_policy.h"
#include "kvcache/kv_cache.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache {
namespace {

namespace cpu = kernels::cpu;

KvGeometry Geometry(int32_t n_layer, int32_t n_head, int32_t n_kv, int32_t hd,
                    kernels::RopeLayout layout = kernels::RopeLayout::kAdjacentPairs) {
  KvGeometry g;
  g.n_layer = n_layer;
  g.n_head = n_head;
  g.n_head_kv = n_kv;
  g.head_dim = hd;
  g.n_rot = hd;
  g.rope_base = 10000.0f;
  g.rope_layout = layout;
  return g;
}

// Random q, k, v for n tokens of every layer. In learned mode k[D-1] of (layer, head) is
// 5 + u with u > 0 (merge) with probability merge_prob[head % size], else 5 - u; q[D-1] varies
// widely so that ω spans (0, 1).
struct Inputs {
  int32_t n = 0;
  std::vector<std::vector<float>> q, k, v;  // [layer][n * width]
};

Inputs RandomInputs(const KvGeometry& g, int32_t n, uint32_t seed,
                    const std::vector<double>& merge_prob) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  Inputs in;
  in.n = n;
  const int32_t hd = g.head_dim;
  for (int32_t l = 0; l < g.n_layer; ++l) {
    std::vector<float> q(static_cast<size_t>(n) * g.n_head * hd);
    std::vector<float> k(static_cast<size_t>(n) * g.n_head_kv * hd);
    std::vector<float> v(k.size());
    for (float& x : q) x = normal(rng);
    for (float& x : k) x = normal(rng);
    for (float& x : v) x = normal(rng);
    for (int32_t t = 0; t < n; ++t) {
      for (int32_t h = 0; h < g.n_head_kv; ++h) {
        const double p = merge_prob[h % merge_prob.size()];
        const float u = 0.05f + 3.0f * unit(rng);
        k[(static_cast<size_t>(t) * g.n_head_kv + h) * hd + hd - 1] =
            unit(rng) < p ? kDmcInitVal + u : kDmcInitVal - u;
      }
      for (int32_t h = 0; h < g.n_head; ++h) {
        q[(static_cast<size_t>(t) * g.n_head + h) * hd + hd - 1] = -5.0f + 4.0f * normal(rng);
      }
    }
    in.q.push_back(std::move(q));
    in.k.push_back(std::move(k));
    in.v.push_back(std::move(v));
  }
  return in;
}

// Keys that drift slowly (neighbours are similar, as in real models), for the free mode.
Inputs DriftingInputs(const KvGeometry& g, int32_t n, uint32_t seed) {
  Inputs in = RandomInputs(g, n, seed, {0.0});
  std::mt19937 rng(seed + 1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int32_t hd = g.head_dim;
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t h = 0; h < g.n_head_kv; ++h) {
      std::vector<float> base(hd);
      for (float& x : base) x = normal(rng);
      for (int32_t t = 0; t < n; ++t) {
        float* k = in.k[l].data() + (static_cast<size_t>(t) * g.n_head_kv + h) * hd;
        for (int32_t d = 0; d < hd; ++d) {
          base[d] = 0.97f * base[d] + 0.25f * normal(rng);
          k[d] = base[d] + 0.3f * k[d];
        }
      }
    }
  }
  return in;
}

// A cache, one sequence under `policy`, and a thread pool: feeds tokens of `Inputs` in chunks
// through Reserve / Attend (every layer) / EndStep as the engine does, and keeps the outputs.
class Harness {
 public:
  Harness(const KvGeometry& g, std::shared_ptr<const KvPolicy> policy, int32_t page_size = 4,
          DType dtype = DType::kF32)
      : g_(g), policy_(std::move(policy)), pool_(2), backend_(&pool_) {
    KvCacheOptions o;
    o.page_size = page_size;
    o.dtype = dtype;
    o.capacity_bytes = 64 << 20;
    auto c = KvCache::Create(g, o);
    EXPECT_TRUE(c.ok()) << c.status();
    cache_ = std::move(*c);
    seq_ = &cache_->CreateSequence(policy_);
  }

  // Tokens [begin, begin + count) of `in`, as one chunk. out[layer] gets their outputs appended.
  absl::Status Feed(const Inputs& in, int32_t begin, int32_t count) {
    absl::Status s = policy_->Reserve(*cache_, *seq_, count);
    if (!s.ok()) return s;
    const int32_t hd = g_.head_dim;
    const int64_t qw = static_cast<int64_t>(g_.n_head) * hd;
    const int64_t kw = static_cast<int64_t>(g_.n_head_kv) * hd;
    out_.resize(g_.n_layer);
    std::vector<int32_t> pos(count);
    for (int32_t i = 0; i < count; ++i) pos[i] = static_cast<int32_t>(seq_->n_tokens()) + i;
    for (int32_t l = 0; l < g_.n_layer; ++l) {
      std::vector<float> q(in.q[l].begin() + begin * qw, in.q[l].begin() + (begin + count) * qw);
      std::vector<float> k(in.k[l].begin() + begin * kw, in.k[l].begin() + (begin + count) * kw);
      std::vector<float> v(in.v[l].begin() + begin * kw, in.v[l].begin() + (begin + count) * kw);
      std::vector<float> out(static_cast<size_t>(count) * qw, -1.0f);
      const SeqSpan span{seq_, 0, count};
      LayerInputs li;
      li.layer = l;
      li.seqs = std::span<const SeqSpan>(&span, 1);
      li.q = q.data();
      li.q_stride = qw;
      li.k = k.data();
      li.k_stride = kw;
      li.v = v.data();
      li.v_stride = kw;
      li.pos = pos.data();
      li.out = out.data();
      li.out_stride = qw;
      s = policy_->Attend(*cache_, li, backend_);
      if (!s.ok()) return s;
      out_[l].insert(out_[l].end(), out.begin(), out.end());
    }
    s = policy_->EndStep(*cache_, *seq_, count);
    seq_->set_n_tokens(seq_->n_tokens() + count);
    return s;
  }
  // Feeds tokens [begin, end) in chunks of the given sizes (the last one repeats).
  void FeedChunks(const Inputs& in, int32_t begin, int32_t end, std::vector<int32_t> sizes) {
    size_t c = 0;
    while (begin < end) {
      const int32_t n = std::min(sizes[std::min(c, sizes.size() - 1)], end - begin);
      ASSERT_TRUE(Feed(in, begin, n).ok());
      begin += n;
      ++c;
    }
  }

  std::vector<float> Slot(bool key, int32_t layer, int32_t head, int32_t slot) const {
    std::vector<float> x(g_.head_dim);
    const HeadTable& t = key ? seq_->k(layer, head) : seq_->v(layer, head);
    cache_->ReadSlot(t, slot, x.data());
    return x;
  }
  std::string State() const {
    std::string s;
    EXPECT_TRUE(policy_->SaveState(*seq_, s).ok());
    return s;
  }

  const KvGeometry& g() const { return g_; }
  KvCache& cache() { return *cache_; }
  SequenceKv& seq() { return *seq_; }
  const std::vector<std::vector<float>>& out() const { return out_; }

 private:
  KvGeometry g_;
  std::shared_ptr<const KvPolicy> policy_;
  ThreadPool pool_;
  cpu::CpuBackend backend_;
  std::unique_ptr<KvCache> cache_;
  SequenceKv* seq_ = nullptr;
  std::vector<std::vector<float>> out_;
};

std::shared_ptr<const DmcPolicy> Dmc(const KvGeometry& g, DmcOptions o) {
  auto p = DmcPolicy::Create(o, g);
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

DmcOptions Learned(DmcPrefill prefill = DmcPrefill::kParallel) {
  DmcOptions o;
  o.mode = DmcMode::kLearned;
  o.prefill = prefill;
  return o;
}

DmcOptions Free(double ratio, DmcPrefill prefill = DmcPrefill::kParallel, int32_t recent = 0) {
  DmcOptions o;
  o.mode = DmcMode::kFree;
  o.ratio = ratio;
  o.sink = 2;
  o.prefill = prefill;
  o.recent = recent;
  o.post_rope = recent > 0;
  return o;
}

// Every K and V slot of every head, in order.
std::vector<float> AllSlots(Harness& h) {
  std::vector<float> all;
  for (int32_t l = 0; l < h.g().n_layer; ++l) {
    for (int32_t kv = 0; kv < h.g().n_head_kv; ++kv) {
      for (bool key : {true, false}) {
        const HeadTable& t = key ? h.seq().k(l, kv) : h.seq().v(l, kv);
        for (int32_t s = 0; s < t.length; ++s) {
          const std::vector<float> x = h.Slot(key, l, kv, s);
          all.insert(all.end(), x.begin(), x.end());
        }
      }
    }
  }
  return all;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return m;
}

// ---- The released code's decode step, written plainly for one (layer, KV head) ----------------

struct RefHead {
  int32_t d = 0;
  int32_t window = 12;
  int32_t lens = -1;  // index of the last slot (the reference's convention)
  int32_t run_len = 0;
  std::vector<float> k_sum, v_sum;
  float w_sum = 0.0f;
  std::vector<std::vector<float>> ring_k, ring_v;
  std::vector<float> ring_w;
  int32_t win_ptr = 0;
  std::vector<std::vector<float>> k_cache, v_cache;  // rotated keys, values

  explicit RefHead(int32_t dim, int32_t win) : d(dim), window(win) {
    k_sum.assign(d, 0.0f);
    v_sum.assign(d, 0.0f);
    ring_k.assign(win, std::vector<float>(d, 0.0f));
    ring_v.assign(win, std::vector<float>(d, 0.0f));
    ring_w.assign(win, 0.0f);
  }

  // q_group: [group][d] before RoPE; returns out [group][d].
  std::vector<float> Step(std::vector<float> q_group, int32_t group, std::vector<float> k,
                          const std::vector<float>& v, int32_t p, const KvGeometry& g) {
    if (p == 0) k[d - 1] = -5.0f;  // the first token appends
    const float alpha = (k[d - 1] - 5.0f > 0.0f) ? 1.0f : 0.0f;
    float logit = 0.0f;  // the training path's mean of the logits over the GQA group
    for (int32_t h = 0; h < group; ++h) logit += q_group[h * d + d - 1];
    logit /= group;
    const float w = 1.0f / (1.0f + std::exp(-(logit + 5.0f))) + 0.0078125f;
    k[d - 1] = 0.0f;
    for (int32_t h = 0; h < group; ++h) q_group[h * d + d - 1] = 0.0f;
    run_len = static_cast<int32_t>(run_len * alpha) + 1;
    const float ovf = (window > 0 && run_len > window) ? 1.0f : 0.0f;
    std::vector<float> kw(d), vw(d);
    for (int32_t i = 0; i < d; ++i) {
      kw[i] = w * k[i];
      vw[i] = w * v[i];
    }
    for (int32_t i = 0; i < d; ++i) {
      const float old_k = window > 0 ? ring_k[win_ptr][i] : 0.0f;
      const float old_v = window > 0 ? ring_v[win_ptr][i] : 0.0f;
      k_sum[i] = k_sum[i] * alpha - ovf * old_k + kw[i];
      v_sum[i] = v_sum[i] * alpha - ovf * old_v + vw[i];
    }
    const float old_w = window > 0 ? ring_w[win_ptr] : 0.0f;
    w_sum = w_sum * alpha - ovf * old_w + w;
    if (window > 0) {
      ring_k[win_ptr] = kw;
      ring_v[win_ptr] = vw;
      ring_w[win_ptr] = w;
      win_ptr = (win_ptr + 1) % window;
    }
    lens = lens + 1 - static_cast<int32_t>(alpha);
    std::vector<float> k_slot(d), v_slot(d);
    for (int32_t i = 0; i < d; ++i) {
      k_slot[i] = k_sum[i] / w_sum;
      v_slot[i] = v_sum[i] / w_sum;
    }
    const int32_t pos = p;
    cpu::RopeRef(k_slot.data(), 1, d, 1, d, g.n_rot, &pos, g.rope_base, g.rope_layout);
    k_slot[d - 1] = 0.0f;
    cpu::RopeRef(q_group.data(), 1, group * d, group, d, g.n_rot, &pos, g.rope_base, g.rope_layout);
    for (int32_t h = 0; h < group; ++h) q_group[h * d + d - 1] = 0.0f;
    if (lens == static_cast<int32_t>(k_cache.size())) {
      k_cache.push_back(k_slot);
      v_cache.push_back(v_slot);
    } else {
      k_cache[lens] = k_slot;
      v_cache[lens] = v_slot;
    }
    // softmax(q K^T / sqrt(d)) V over slots 0..lens, in double.
    std::vector<float> out(static_cast<size_t>(group) * d);
    for (int32_t h = 0; h < group; ++h) {
      std::vector<double> s(lens + 1);
      double max = -1e300;
      for (int32_t j = 0; j <= lens; ++j) {
        double dot = 0.0;
        for (int32_t i = 0; i < d; ++i)
          dot += static_cast<double>(q_group[h * d + i]) * k_cache[j][i];
        s[j] = dot / std::sqrt(static_cast<double>(d));
        max = std::max(max, s[j]);
      }
      double sum = 0.0;
      for (double& x : s) sum += (x = std::exp(x - max));
      for (int32_t i = 0; i < d; ++i) {
        double o = 0.0;
        for (int32_t j = 0; j <= lens; ++j) o += s[j] / sum * v_cache[j][i];
        out[h * d + i] = static_cast<float>(o);
      }
    }
    return out;
  }
};

struct RefCase {
  int32_t n_head, n_kv, hd, window;
  kernels::RopeLayout layout;
};

class DmcReferenceTest : public ::testing::TestWithParam<RefCase> {};

TEST_P(DmcReferenceTest, DecodeMatchesTheReleasedCodeStep) {
  const RefCase rc = GetParam();
  const KvGeometry g = Geometry(2, rc.n_head, rc.n_kv, rc.hd, rc.layout);
  // Heads merge with different probabilities; 0.95 makes runs longer than the window.
  const Inputs in = RandomInputs(g, 90, 7, {0.3, 0.95, 0.0, 0.7});
  DmcOptions o = Learned();
  o.window = rc.window;
  Harness h(g, Dmc(g, o));
  for (int32_t t = 0; t < in.n; ++t) ASSERT_TRUE(h.Feed(in, t, 1).ok());

  const int32_t hd = g.head_dim, group = g.group();
  const int64_t qw = static_cast<int64_t>(g.n_head) * hd,
                kw = static_cast<int64_t>(g.n_head_kv) * hd;
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t kv = 0; kv < g.n_head_kv; ++kv) {
      SCOPED_TRACE(testing::Message() << "layer " << l << " head " << kv);
      RefHead ref(hd, rc.window);
      double max_out = 0.0;
      for (int32_t t = 0; t < in.n; ++t) {
        const float* q = in.q[l].data() + t * qw + kv * group * hd;
        const float* k = in.k[l].data() + t * kw + kv * hd;
        const float* v = in.v[l].data() + t * kw + kv * hd;
        const std::vector<float> out =
            ref.Step(std::vector<float>(q, q + group * hd), group, std::vector<float>(k, k + hd),
                     std::vector<float>(v, v + hd), t, g);
        const float* got = h.out()[l].data() + t * qw + kv * group * hd;
        for (int32_t i = 0; i < group * hd; ++i) {
          max_out = std::max(max_out, static_cast<double>(std::abs(got[i] - out[i])));
        }
      }
      EXPECT_LT(max_out, 2e-5);
      ASSERT_EQ(h.seq().k(l, kv).length, ref.lens + 1);
      ASSERT_EQ(h.seq().v(l, kv).length, ref.lens + 1);
      for (int32_t s = 0; s <= ref.lens; ++s) {
        EXPECT_LT(MaxAbsDiff(h.Slot(true, l, kv, s), ref.k_cache[s]), 1e-5) << "slot " << s;
        EXPECT_LT(MaxAbsDiff(h.Slot(false, l, kv, s), ref.v_cache[s]), 1e-5) << "slot " << s;
      }
      EXPECT_EQ(h.Slot(true, l, kv, ref.lens)[hd - 1], 0.0f) << "element D-1 is zeroed";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DmcReferenceTest,
    ::testing::Values(RefCase{4, 4, 8, 12, kernels::RopeLayout::kAdjacentPairs},
                      RefCase{6, 2, 16, 12, kernels::RopeLayout::kAdjacentPairs},
                      RefCase{4, 2, 8, 12, kernels::RopeLayout::kHalfSplit},
                      RefCase{4, 4, 8, 0, kernels::RopeLayout::kAdjacentPairs},
                      RefCase{4, 2, 8, 5, kernels::RopeLayout::kAdjacentPairs}));

TEST(DmcLearnedTest, LengthsAreOnePlusTheAppends) {
  const KvGeometry g = Geometry(2, 4, 2, 8);
  const Inputs in = RandomInputs(g, 77, 11, {0.5, 0.8});
  Harness h(g, Dmc(g, Learned()));
  h.FeedChunks(in, 0, in.n, {30, 1, 1, 9});
  int64_t slots = 0;
  const int64_t kw = static_cast<int64_t>(g.n_head_kv) * g.head_dim;
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t kv = 0; kv < g.n_head_kv; ++kv) {
      int32_t appends = 0;  // tokens 1.. with k[D-1] - 5 <= 0
      for (int32_t t = 1; t < in.n; ++t) {
        appends += in.k[l][t * kw + kv * g.head_dim + g.head_dim - 1] - 5.0f > 0.0f ? 0 : 1;
      }
      EXPECT_EQ(h.seq().k(l, kv).length, 1 + appends);
      EXPECT_EQ(h.seq().v(l, kv).length, 1 + appends);
      slots += 2 * (1 + appends);
    }
  }
  const KvUsage u = h.cache().Usage(h.seq());
  EXPECT_EQ(u.slots, slots);
  EXPECT_EQ(u.full_slots, 2 * in.n * g.n_layer * g.n_head_kv);
  EXPECT_LT(u.ratio(), 0.6);
}

// Inside the window the slot is the paper's running weighted mean
//   K <- (z K + ω k) / (z + ω), z <- z + ω,
// rotated at the newest position with element D-1 zeroed.
TEST(DmcLearnedTest, MergeFollowsThePaperFormulaInsideTheWindow) {
  const KvGeometry g = Geometry(1, 2, 1, 16);
  Inputs in = RandomInputs(g, 10, 21, {1.0});  // token 0 appends (first), 1..9 merge
  Harness h(g, Dmc(g, Learned()));
  h.FeedChunks(in, 0, in.n, {1});
  ASSERT_EQ(h.seq().k(0, 0).length, 1);
  const int32_t hd = g.head_dim;
  std::vector<double> K(hd, 0.0), V(hd, 0.0);
  double z = 0.0;
  for (int32_t t = 0; t < in.n; ++t) {
    const float* q = in.q[0].data() + t * 2 * hd;
    const float* k = in.k[0].data() + t * hd;
    const float* v = in.v[0].data() + t * hd;
    const double logit = (q[hd - 1] + q[2 * hd - 1]) / 2.0;
    const double w = 1.0 / (1.0 + std::exp(-(logit + 5.0))) + 1.0 / 128;
    for (int32_t d = 0; d < hd; ++d) {
      const double kd = d == hd - 1 ? 0.0 : k[d];
      K[d] = (z * K[d] + w * kd) / (z + w);
      V[d] = (z * V[d] + w * v[d]) / (z + w);
    }
    z += w;
  }
  std::vector<float> expect_k(K.begin(), K.end());
  const int32_t last = in.n - 1;
  cpu::RopeRef(expect_k.data(), 1, hd, 1, hd, hd, &last, g.rope_base, g.rope_layout);
  expect_k[hd - 1] = 0.0f;
  EXPECT_LT(MaxAbsDiff(h.Slot(true, 0, 0, 0), expect_k), 1e-5);
  EXPECT_LT(MaxAbsDiff(h.Slot(false, 0, 0, 0), std::vector<float>(V.begin(), V.end())), 1e-5);
}

// Past the window the tail slot averages only the last `window` tokens of its run.
TEST(DmcLearnedTest, TailAveragesOnlyTheLastWindowOfALongRun) {
  for (int32_t window : {12, 5, 0}) {
    SCOPED_TRACE(testing::Message() << "window " << window);
    const KvGeometry g = Geometry(1, 1, 1, 8);
    Inputs in = RandomInputs(g, 40, 5, {1.0});
    DmcOptions o = Learned();
    o.window = window;
    Harness h(g, Dmc(g, o));
    h.FeedChunks(in, 0, in.n, {17, 1});
    ASSERT_EQ(h.seq().k(0, 0).length, 1);
    const int32_t hd = g.head_dim;
    const int32_t first = window == 0 ? 0 : in.n - window;
    std::vector<double> ks(hd, 0.0), vs(hd, 0.0);
    double ws = 0.0;
    for (int32_t t = first; t < in.n; ++t) {
      const double w = 1.0 / (1.0 + std::exp(-(in.q[0][t * hd + hd - 1] + 5.0))) + 1.0 / 128;
      for (int32_t d = 0; d < hd; ++d) {
        ks[d] += w * (d == hd - 1 ? 0.0 : in.k[0][t * hd + d]);
        vs[d] += w * in.v[0][t * hd + d];
      }
      ws += w;
    }
    std::vector<float> ek(hd), ev(hd);
    for (int32_t d = 0; d < hd; ++d) {
      ek[d] = static_cast<float>(ks[d] / ws);
      ev[d] = static_cast<float>(vs[d] / ws);
    }
    const int32_t last = in.n - 1;
    cpu::RopeRef(ek.data(), 1, hd, 1, hd, hd, &last, g.rope_base, g.rope_layout);
    ek[hd - 1] = 0.0f;
    EXPECT_LT(MaxAbsDiff(h.Slot(true, 0, 0, 0), ek), 2e-5);
    EXPECT_LT(MaxAbsDiff(h.Slot(false, 0, 0, 0), ev), 2e-5);
  }
}

// ---- Parallel prefill against token by token ---------------------------------------------------

struct PrefillCase {
  DmcMode mode;
  DType dtype;
  kernels::RopeLayout layout;
  int32_t recent = 0;  // free mode's recent window (always token by token)
};

class DmcPrefillTest : public ::testing::TestWithParam<PrefillCase> {};

TEST_P(DmcPrefillTest, ParallelChunksEqualTokenByToken) {
  const PrefillCase pc = GetParam();
  const KvGeometry g = Geometry(2, 6, 3, 16, pc.layout);
  const bool learned = pc.mode == DmcMode::kLearned;
  const Inputs in = learned ? RandomInputs(g, 150, 3, {0.4, 0.9, 0.0}) : DriftingInputs(g, 150, 3);
  auto make = [&](DmcPrefill prefill) {
    return Dmc(g, learned ? Learned(prefill) : Free(3.0, prefill, pc.recent));
  };
  Harness chunked(g, make(DmcPrefill::kParallel), 4, pc.dtype);
  Harness serial_chunks(g, make(DmcPrefill::kSerial), 4, pc.dtype);
  Harness one_by_one(g, make(DmcPrefill::kParallel), 4, pc.dtype);
  chunked.FeedChunks(in, 0, in.n, {37, 1, 20, 1, 1, 64});
  serial_chunks.FeedChunks(in, 0, in.n, {37, 1, 20, 1, 1, 64});
  one_by_one.FeedChunks(in, 0, in.n, {1});

  // Same decisions, same cache, same state, bit for bit.
  EXPECT_TRUE(BitEqual(AllSlots(chunked), AllSlots(one_by_one)));
  EXPECT_EQ(chunked.State(), one_by_one.State());
  EXPECT_LT(chunked.cache().Usage(chunked.seq()).ratio(), 0.75) << "merges happened";
  for (int32_t l = 0; l < g.n_layer; ++l) {
    // The serial chunk path is the decode path: identical. The parallel one: fp tolerance.
    EXPECT_TRUE(BitEqual(serial_chunks.out()[l], one_by_one.out()[l]));
    EXPECT_LT(MaxAbsDiff(chunked.out()[l], one_by_one.out()[l]), 2e-5);
    if (pc.recent > 0) EXPECT_TRUE(BitEqual(chunked.out()[l], one_by_one.out()[l]));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Modes, DmcPrefillTest,
    ::testing::Values(
        PrefillCase{DmcMode::kLearned, DType::kF32, kernels::RopeLayout::kAdjacentPairs},
        PrefillCase{DmcMode::kLearned, DType::kF16, kernels::RopeLayout::kHalfSplit},
        PrefillCase{DmcMode::kFree, DType::kF32, kernels::RopeLayout::kAdjacentPairs},
        PrefillCase{DmcMode::kFree, DType::kF16, kernels::RopeLayout::kAdjacentPairs},
        PrefillCase{DmcMode::kFree, DType::kF32, kernels::RopeLayout::kAdjacentPairs, 16}));

// ---- Free mode -----------------------------------------------------------------------------

TEST(DmcFreeTest, RatioOneKeepsEverythingLikeFull) {
  const KvGeometry g = Geometry(2, 4, 2, 8);
  const Inputs in = DriftingInputs(g, 60, 9);
  Harness dmc_decode(g, Dmc(g, Free(1.0)));
  Harness dmc_prefill(g, Dmc(g, Free(1.0)));
  Harness full(g, std::make_shared<FullPolicy>());
  dmc_decode.FeedChunks(in, 0, in.n, {1});
  dmc_prefill.FeedChunks(in, 0, in.n, {25, 35});
  full.FeedChunks(in, 0, in.n, {1});
  EXPECT_TRUE(BitEqual(AllSlots(dmc_decode), AllSlots(full)));
  EXPECT_TRUE(BitEqual(AllSlots(dmc_prefill), AllSlots(full)));
  for (int32_t l = 0; l < g.n_layer; ++l) {
    EXPECT_TRUE(BitEqual(dmc_decode.out()[l], full.out()[l]));
    EXPECT_LT(MaxAbsDiff(dmc_prefill.out()[l], full.out()[l]), 2e-5);
  }
}

// The threshold moves by gain * (1/ratio - appended) per decision, so
//   appends = decisions / ratio - (threshold - threshold_0) / gain
// exactly, and the threshold stays in [-1 - gain, 1 + gain]: the append rate converges.
TEST(DmcFreeTest, ControllerSteersTheAppendRateToTheRatio) {
  const KvGeometry g = Geometry(2, 2, 2, 16);
  const int32_t n = 1500;
  const Inputs in = DriftingInputs(g, n, 17);
  for (double ratio : {2.0, 4.0, 8.0}) {
    SCOPED_TRACE(testing::Message() << "ratio " << ratio);
    DmcOptions o = Free(ratio);
    auto policy = Dmc(g, o);
    Harness h(g, policy);
    h.FeedChunks(in, 0, n, {200, 1, 1, 1, 97});
    for (int32_t l = 0; l < g.n_layer; ++l) {
      for (int32_t kv = 0; kv < g.n_head_kv; ++kv) {
        const DmcHeadStats st = policy->HeadStats(h.seq(), l, kv);
        EXPECT_EQ(st.decisions, n - (o.sink + 1));
        EXPECT_EQ(st.slots, o.sink + 1 + st.appends);
        const double predicted = st.decisions / ratio - (st.threshold - o.threshold) / o.gain;
        EXPECT_NEAR(static_cast<double>(st.appends), predicted, 1e-6 * n);
        EXPECT_LE(std::abs(st.threshold), 1.0 + o.gain);
        // Empirically the rate is close long before the bound.
        EXPECT_NEAR(static_cast<double>(st.slots) / n, 1.0 / ratio, 0.25 / ratio);
      }
    }
  }
}

TEST(DmcFreeTest, SinksAreNeverMergedInto) {
  const KvGeometry g = Geometry(1, 1, 1, 8);
  Inputs in = DriftingInputs(g, 30, 2);
  // Identical keys: every free decision merges (similarity 1 >= any threshold).
  for (int32_t t = 1; t < in.n; ++t) {
    std::copy(in.k[0].begin(), in.k[0].begin() + 8, in.k[0].begin() + t * 8);
  }
  DmcOptions o = Free(1e6);
  o.sink = 3;
  o.threshold = 0.9;
  Harness h(g, Dmc(g, o));
  h.FeedChunks(in, 0, in.n, {11, 1});
  ASSERT_EQ(h.seq().k(0, 0).length, o.sink + 1);
  for (int32_t s = 0; s < o.sink; ++s) {
    std::vector<float> v(in.v[0].begin() + s * 8, in.v[0].begin() + (s + 1) * 8);
    EXPECT_TRUE(BitEqual(h.Slot(false, 0, 0, s), v)) << "sink slot " << s << " holds its token";
  }
}

// ---- Free mode with a recent window ------------------------------------------------------

TEST(DmcRecentTest, WindowLongerThanTheSequenceIsFull) {
  const KvGeometry g = Geometry(2, 4, 2, 8);
  const Inputs in = DriftingInputs(g, 60, 12);
  Harness dmc(g, Dmc(g, Free(4.0, DmcPrefill::kParallel, 100)));
  Harness full(g, std::make_shared<FullPolicy>());
  dmc.FeedChunks(in, 0, in.n, {25, 35});
  full.FeedChunks(in, 0, in.n, {1});
  EXPECT_TRUE(BitEqual(AllSlots(dmc), AllSlots(full)));
  for (int32_t l = 0; l < g.n_layer; ++l) EXPECT_TRUE(BitEqual(dmc.out()[l], full.out()[l]));
}

TEST(DmcRecentTest, RatioOneKeepsEveryTokenInAnotherOrder) {
  const KvGeometry g = Geometry(1, 4, 2, 8);
  const Inputs in = DriftingInputs(g, 60, 13);
  Harness dmc(g, Dmc(g, Free(1.0, DmcPrefill::kParallel, 8)));
  Harness full(g, std::make_shared<FullPolicy>());
  dmc.FeedChunks(in, 0, in.n, {19, 1, 40});
  full.FeedChunks(in, 0, in.n, {1});
  for (int32_t kv = 0; kv < g.n_head_kv; ++kv) {
    for (bool key : {true, false}) {
      std::vector<std::vector<float>> a, b;
      for (int32_t s = 0; s < in.n; ++s) {
        a.push_back(dmc.Slot(key, 0, kv, s));
        b.push_back(full.Slot(key, 0, kv, s));
      }
      ASSERT_EQ((key ? dmc.seq().k(0, kv) : dmc.seq().v(0, kv)).length, in.n);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      EXPECT_EQ(a, b) << "the same slots, bit for bit";
    }
  }
  EXPECT_LT(MaxAbsDiff(dmc.out()[0], full.out()[0]), 2e-5);
}

// Sinks, then the ring of the last `recent` tokens, then the merged slots of the tokens that
// left the ring: with a threshold of -1 every decision merges, so the merged part is one slot,
// the mean of the last `window` rotated keys (values) that left the ring.
TEST(DmcRecentTest, RingHoldsTheLastTokensAndTheMergedSlotTheirPredecessors) {
  const KvGeometry g = Geometry(1, 1, 1, 8);
  const int32_t n = 40, sink = 2, recent = 8, hd = 8;
  const Inputs in = DriftingInputs(g, n, 14);
  DmcOptions o = Free(1e6, DmcPrefill::kParallel, recent);
  o.threshold = -1.0;
  auto policy = Dmc(g, o);
  Harness h(g, policy);
  h.FeedChunks(in, 0, n, {13, 1, 26});
  const DmcHeadStats st = policy->HeadStats(h.seq(), 0, 0);
  EXPECT_EQ(st.slots, sink + recent + 1);
  EXPECT_EQ(st.tokens, n);
  EXPECT_EQ(st.decisions, n - sink - recent - 1) << "the first token to leave the ring appends";
  EXPECT_EQ(st.appends, 0);
  auto rotated = [&](int32_t t) {
    std::vector<float> k(in.k[0].begin() + t * hd, in.k[0].begin() + (t + 1) * hd);
    cpu::RopeRef(k.data(), 1, hd, 1, hd, hd, &t, g.rope_base, g.rope_layout);
    return k;
  };
  for (int32_t t = 0; t < n; ++t) {
    const int32_t slot = t < sink ? t : sink + (t - sink) % recent;
    if (t >= sink && t < n - recent) continue;  // left the ring
    EXPECT_LT(MaxAbsDiff(h.Slot(true, 0, 0, slot), rotated(t)), 1e-6) << "token " << t;
    const std::vector<float> v(in.v[0].begin() + t * hd, in.v[0].begin() + (t + 1) * hd);
    EXPECT_TRUE(BitEqual(h.Slot(false, 0, 0, slot), v)) << "token " << t;
  }
  std::vector<float> km(hd, 0.0f), vm(hd, 0.0f);
  const int32_t last = n - recent - 1, first = last - o.window + 1;
  for (int32_t t = first; t <= last; ++t) {
    const std::vector<float> k = rotated(t);
    for (int32_t d = 0; d < hd; ++d) {
      km[d] += k[d] / o.window;
      vm[d] += in.v[0][t * hd + d] / o.window;
    }
  }
  EXPECT_LT(MaxAbsDiff(h.Slot(true, 0, 0, sink + recent), km), 1e-5);
  EXPECT_LT(MaxAbsDiff(h.Slot(false, 0, 0, sink + recent), vm), 1e-5);
}

// ---- State: save, restore, continue --------------------------------------------------------

// Copies every table and the state of `from` into `to` (a fresh sequence of another cache).
void CopySequence(Harness& from, Harness& to, const KvPolicy& policy) {
  const KvGeometry& g = from.g();
  std::vector<float> x(g.head_dim);
  for (int32_t l = 0; l < g.n_layer; ++l) {
    for (int32_t kv = 0; kv < g.n_head_kv; ++kv) {
      for (bool key : {true, false}) {
        const HeadTable& src = key ? from.seq().k(l, kv) : from.seq().v(l, kv);
        HeadTable& dst = key ? to.seq().k(l, kv) : to.seq().v(l, kv);
        ASSERT_TRUE(to.cache().Reserve(dst, src.length, 0).ok());
        dst.length = src.length;
        for (int32_t s = 0; s < src.length; ++s) {
          from.cache().ReadSlot(src, s, x.data());
          to.cache().WriteSlot(dst, s, x.data());
        }
      }
    }
  }
  to.seq().set_n_tokens(from.seq().n_tokens());
  ASSERT_TRUE(policy.LoadState(from.State(), to.seq()).ok());
}

TEST(DmcStateTest, RestoredSequenceContinuesBitForBit) {
  for (int32_t config : {0, 1, 2}) {
    const bool learned = config == 0;
    SCOPED_TRACE(testing::Message() << "config " << config);
    const KvGeometry g = Geometry(2, 4, 2, 8);
    const Inputs in = learned ? RandomInputs(g, 120, 4, {0.6, 0.95}) : DriftingInputs(g, 120, 4);
    auto policy = Dmc(g, learned ? Learned() : Free(4.0, DmcPrefill::kParallel, 16 * (config - 1)));
    // The same page size (the attention kernel's summation order follows page runs), but other
    // pages: b's pool hands out different page ids.
    Harness a(g, policy, 4);
    Harness b(g, policy, 4);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(b.cache().pool().Allocate().has_value());
    a.FeedChunks(in, 0, 53, {31, 22});
    CopySequence(a, b, *policy);
    ASSERT_EQ(b.State(), a.State());
    ASSERT_NE(b.seq().k(0, 0).pages[0], a.seq().k(0, 0).pages[0]);
    const size_t before = a.out()[0].size();
    a.FeedChunks(in, 53, 120, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 20});
    b.FeedChunks(in, 53, 120, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 20});
    for (int32_t l = 0; l < g.n_layer; ++l) {
      std::vector<float> tail(a.out()[l].begin() + before, a.out()[l].end());
      EXPECT_TRUE(BitEqual(tail, b.out()[l]));
    }
    EXPECT_TRUE(BitEqual(AllSlots(a), AllSlots(b)));
    EXPECT_EQ(a.State(), b.State());
  }
}

TEST(DmcStateTest, LoadStateRefusesForeignOrDamagedBytes) {
  const KvGeometry g = Geometry(2, 4, 2, 8);
  const Inputs in = RandomInputs(g, 40, 8, {0.5});
  auto learned = Dmc(g, Learned());
  Harness h(g, learned);
  h.FeedChunks(in, 0, 40, {40});
  const std::string good = h.State();
  ASSERT_FALSE(good.empty());

  auto refused = [&](const KvPolicy& policy, std::string bytes, const char* what) {
    SCOPED_TRACE(what);
    const absl::Status s = policy.LoadState(bytes, h.seq());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(h.State(), good) << "a refused load changes nothing";
  };
  refused(*learned, "", "empty");
  refused(*learned, good.substr(0, 20), "truncated header");
  refused(*learned, good.substr(0, good.size() - 1), "truncated body");
  refused(*learned, good + "x", "trailing byte");
  std::string bad = good;
  bad[0] ^= 1;
  refused(*learned, bad, "magic");
  bad = good;
  bad[4] = 2;
  refused(*learned, bad, "version");
  DmcOptions w = Learned();
  w.window = 8;
  refused(*Dmc(g, w), good, "window");
  refused(*Dmc(g, Free(4.0)), good, "mode");
  bad = good;
  bad[24] = static_cast<char>(bad[24] + 1);  // head 0's slot count
  refused(*learned, bad, "slot count");
  bad = good;
  bad[24 + 8] = 100;  // head 0's window pointer
  refused(*learned, bad, "window pointer");
  const KvGeometry other = Geometry(2, 4, 1, 8);
  refused(*Dmc(other, Learned()), good, "geometry");
  EXPECT_TRUE(learned->LoadState(good, h.seq()).ok());
}

// ---- Pages ---------------------------------------------------------------------------------

TEST(DmcPagesTest, AttendWithoutReserveFails) {
  const KvGeometry g = Geometry(1, 2, 1, 8);
  const Inputs in = RandomInputs(g, 4, 1, {0.5});
  auto policy = Dmc(g, Learned());
  Harness h(g, policy);
  std::vector<float> q = in.q[0], k = in.k[0], v = in.v[0], out(q.size());
  std::vector<int32_t> pos = {0, 1, 2, 3};
  const SeqSpan span{&h.seq(), 0, 4};
  LayerInputs li;
  li.seqs = std::span<const SeqSpan>(&span, 1);
  li.q = q.data();
  li.q_stride = 16;
  li.k = k.data();
  li.k_stride = 8;
  li.v = v.data();
  li.v_stride = 8;
  li.pos = pos.data();
  li.out = out.data();
  li.out_stride = 16;
  cpu::CpuBackend backend(nullptr);
  EXPECT_EQ(policy->Attend(h.cache(), li, backend).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(DmcPagesTest, EndStepGivesBackUnusedPagesAndTheSharedTailIsCopied) {
  const KvGeometry g = Geometry(1, 2, 2, 8);
  const Inputs in = RandomInputs(g, 64, 6, {1.0, 0.5});
  auto policy = Dmc(g, Learned());
  Harness a(g, policy, 4);
  a.FeedChunks(in, 0, 24, {24});
  // Only the pages the slots need are held.
  int32_t pages = 0;
  for (int32_t kv = 0; kv < 2; ++kv) {
    for (const HeadTable* t : {&a.seq().k(0, kv), &a.seq().v(0, kv)}) {
      EXPECT_EQ(static_cast<int32_t>(t->pages.size()), (t->length + 3) / 4);
      pages += static_cast<int32_t>(t->pages.size());
    }
  }
  EXPECT_EQ(a.cache().pool().pages_used(), pages);
  EXPECT_EQ(a.seq().k(0, 0).length, 1) << "head 0 merges everything after its first token";

  // A second sequence shares a's pages (prefix sharing) and continues; a must not change.
  SequenceKv& b = a.cache().CreateSequence(policy);
  for (int32_t kv = 0; kv < 2; ++kv) {
    a.cache().ShareTable(a.seq().k(0, kv), a.seq().k(0, kv).length, b.k(0, kv));
    a.cache().ShareTable(a.seq().v(0, kv), a.seq().v(0, kv).length, b.v(0, kv));
  }
  b.set_n_tokens(a.seq().n_tokens());
  ASSERT_TRUE(policy->LoadState(a.State(), b).ok());
  const std::vector<float> a_slots = AllSlots(a);
  ASSERT_TRUE(policy->Reserve(a.cache(), b, 1).ok());
  std::vector<float> q(in.q[0].begin() + 24 * 16, in.q[0].begin() + 25 * 16);
  std::vector<float> k(in.k[0].begin() + 24 * 16, in.k[0].begin() + 25 * 16);
  std::vector<float> v(in.v[0].begin() + 24 * 16, in.v[0].begin() + 25 * 16), out(16);
  k[7] = 9.0f;  // head 0 merges into its shared tail
  const int32_t pos = 24;
  const SeqSpan span{&b, 0, 1};
  LayerInputs li;
  li.seqs = std::span<const SeqSpan>(&span, 1);
  li.q = q.data();
  li.q_stride = 16;
  li.k = k.data();
  li.k_stride = 16;
  li.v = v.data();
  li.v_stride = 16;
  li.pos = &pos;
  li.out = out.data();
  li.out_stride = 16;
  cpu::CpuBackend backend(nullptr);
  ASSERT_TRUE(policy->Attend(a.cache(), li, backend).ok());
  ASSERT_TRUE(policy->EndStep(a.cache(), b, 1).ok());
  EXPECT_EQ(b.k(0, 0).length, 1);
  EXPECT_NE(b.k(0, 0).pages[0], a.seq().k(0, 0).pages[0]) << "the tail page was copied";
  EXPECT_TRUE(BitEqual(AllSlots(a), a_slots)) << "the sharing sequence saw no write";
  a.cache().FreeSequence(b.id());
  EXPECT_EQ(a.cache().pool().pages_used(), pages);
}

// ---- Spec strings --------------------------------------------------------------------------

TEST(DmcSpecTest, ParsesEveryParameterAndRefusesBadOnes) {
  const KvGeometry g = Geometry(2, 4, 2, 8);
  auto p = ParsePolicy("dmc", g);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->spec(),
            "dmc:mode=free,ratio=4,window=12,sink=4,threshold=0.8,gain=0.02,space=post,recent=64");
  auto again = ParsePolicy((*p)->spec(), g);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->spec(), (*p)->spec());
  p = ParsePolicy("dmc:mode=learned", g);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->spec(), "dmc:mode=learned,window=12,sink=0");
  p = ParsePolicy(
      "dmc:mode=free,ratio=2.5,window=0,sink=0,threshold=0.8,gain=0.1,recent=0,prefill=serial", g);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(
      (*p)->spec(),
      "dmc:mode=free,ratio=2.5,window=0,sink=0,threshold=0.8,gain=0.1,recent=0,prefill=serial");
  // The canonical spec parses back to the same policy (recent=0 is not the default).
  again = ParsePolicy((*p)->spec(), g);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->spec(), (*p)->spec());
  const auto* dmc = dynamic_cast<const DmcPolicy*>(p->get());
  ASSERT_NE(dmc, nullptr);
  EXPECT_EQ(dmc->options().window, 0);
  EXPECT_EQ(dmc->options().prefill, DmcPrefill::kSerial);

  for (const char* bad :
       {"dmc:mode=trained", "dmc:ratio=0.5", "dmc:ratio=x", "dmc:mode=learned,ratio=4",
        "dmc:mode=learned,gain=0.1", "dmc:window=-1", "dmc:window=5000", "dmc:sink=-2",
        "dmc:threshold=2", "dmc:gain=0", "dmc:prefill=fast", "dmc:rate=4", "dmc:recent=8,space=pre",
        "dmc:space=mid", "dmc:mode=learned,recent=4", "dmc:recent=-1"}) {
    SCOPED_TRACE(bad);
    auto r = ParsePolicy(bad, g);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(std::string(r.status().message()).find('\n'), std::string::npos) << r.status();
  }
}

}  // namespace
}  // namespace kvasir::kvcache
