// PoD calibration measurements (kvcache/pod_recorder.h): per-layer distributions over distant
// keys, their Jensen-Shannon similarities, and the recording policy.
#include "kvcache/pod_recorder.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "kvcache/attention.h"

namespace kvasir::kvcache {
namespace {

// softmax(scale * q . keys[j]) over n keys of head_dim elements, in double.
void SoftmaxScores(const float* q, const float* keys, int64_t n, int32_t hd, double scale,
                   double* p) {
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    double dot = 0;
    for (int32_t d = 0; d < hd; ++d) dot += static_cast<double>(q[d]) * keys[j * hd + d];
    p[j] = dot * scale;
    max = std::max(max, p[j]);
  }
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    p[j] = std::exp(p[j] - max);
    sum += p[j];
  }
  for (int64_t j = 0; j < n; ++j) p[j] /= sum;
}

}  // namespace

absl::StatusOr<PodMetric> ParsePodMetric(std::string_view name) {
  if (name == "attention") return PodMetric::kAttention;
  if (name == "keys") return PodMetric::kKeys;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown PoD similarity metric '", ToAbsl(name), "' (attention or keys)"));
}

const char* PodMetricName(PodMetric metric) {
  return metric == PodMetric::kAttention ? "attention" : "keys";
}

double PodSimilarityOf(const double* p, const double* q, int64_t n) {
  double js = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double m = 0.5 * (p[j] + q[j]);
    if (p[j] > 0) js += 0.5 * p[j] * std::log2(p[j] / m);
    if (q[j] > 0) js += 0.5 * q[j] * std::log2(q[j] / m);
  }
  return 1.0 - std::clamp(js, 0.0, 1.0);
}

PodSimilarity::PodSimilarity(const KvGeometry& geometry, const PodSimilarityOptions& options)
    : g_(geometry), o_(options), n_layer_(geometry.n_layer) {
  const size_t cells = static_cast<size_t>(geometry.n_head_kv) * n_layer_ * n_layer_;
  sum_.assign(cells, 0.0);
  count_.assign(cells, 0);
}

void PodSimilarity::SetQueryRange(SeqId seq, int64_t begin, int64_t end) {
  seq_ = seq;
  begin_ = begin;
  end_ = std::max(begin, end);
  offset_.assign(static_cast<size_t>(end_ - begin_) + 1, 0);
  for (int64_t i = begin_; i < end_; ++i) {
    const int64_t d = std::max<int64_t>(0, i - o_.window - o_.sink + 1);
    offset_[i - begin_ + 1] = offset_[i - begin_] + d;
  }
  probs_.clear();
  plogp_.clear();
  if (o_.metric == PodMetric::kAttention) {
    probs_.resize(n_layer_);
    for (auto& p : probs_) p.assign(static_cast<size_t>(offset_.back()) * g_.n_head, 0.0f);
    plogp_.assign(n_layer_, std::vector<double>(static_cast<size_t>(end_ - begin_) * g_.n_head));
  }
}

void PodSimilarity::Observe(const KvCache& cache, const LayerInputs& in,
                            kernels::Backend& backend) {
  const int32_t l = in.layer;
  struct Row {
    const SequenceKv* seq;
    int64_t row;  // row of the step's buffers
    int64_t qi;   // query index in the range
    int64_t d;    // distant keys
  };
  std::vector<Row> rows;
  for (const SeqSpan& span : in.seqs) {
    if (span.seq->id() != seq_) continue;
    for (int32_t i = 0; i < span.count; ++i) {
      const int64_t row = span.begin + i;
      const int64_t pos = in.pos[row];
      const int64_t d = pos - o_.window - o_.sink + 1;
      if (pos < begin_ || pos >= end_ || d <= 0) continue;
      rows.push_back({span.seq, row, pos - begin_, d});
    }
  }
  if (rows.empty()) return;
  if (l == 0) queries_ += static_cast<int64_t>(rows.size());
  const int32_t n_kv = g_.n_head_kv, group = g_.group(), hd = g_.head_dim, n_head = g_.n_head;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const int64_t tasks = static_cast<int64_t>(rows.size()) * n_kv;
  std::vector<double> task_sum(static_cast<size_t>(tasks) * std::max(l, 1), 0.0);

  auto run = [&](int64_t task, int) {
    const Row& r = rows[static_cast<size_t>(task / n_kv)];
    const int32_t h = static_cast<int32_t>(task % n_kv);
    thread_local std::vector<float> keys, other_keys;
    thread_local std::vector<double> own, p_other;  // own: [query head][key]
    keys.resize(static_cast<size_t>(r.d) * hd);
    own.resize(static_cast<size_t>(group) * r.d);
    p_other.resize(r.d);
    const HeadTable& kt = r.seq->k(l, h);
    for (int64_t j = 0; j < r.d; ++j) {
      cache.ReadSlot(kt, static_cast<int32_t>(o_.sink + j), keys.data() + j * hd);
    }
    double* sums = task_sum.data() + task * std::max(l, 1);
    for (int32_t gq = 0; gq < group; ++gq) {
      const int32_t qh = h * group + gq;
      const float* q = in.q + r.row * in.q_stride + static_cast<int64_t>(qh) * hd;
      double* p = own.data() + static_cast<size_t>(gq) * r.d;
      SoftmaxScores(q, keys.data(), r.d, hd, scale, p);
      if (o_.metric == PodMetric::kAttention) {
        // Stored as float; JS(P, Q) = (sum P log P + sum Q log Q) / 2 - sum M log M with
        // M = (P + Q) / 2, so each pair costs one logarithm per key.
        const size_t at = static_cast<size_t>(offset_[r.qi] * n_head + qh * r.d);
        float* mine = probs_[l].data() + at;
        double plogp = 0;
        for (int64_t j = 0; j < r.d; ++j) {
          mine[j] = static_cast<float>(p[j]);
          if (mine[j] > 0) plogp += mine[j] * std::log2(static_cast<double>(mine[j]));
        }
        plogp_[l][static_cast<size_t>(r.qi * n_head + qh)] = plogp;
        for (int32_t a = 0; a < l; ++a) {
          const float* theirs = probs_[a].data() + at;
          double mlogm = 0;
          for (int64_t j = 0; j < r.d; ++j) {
            const double m = 0.5 * (static_cast<double>(mine[j]) + theirs[j]);
            if (m > 0) mlogm += m * std::log2(m);
          }
          const double js =
              0.5 * (plogp + plogp_[a][static_cast<size_t>(r.qi * n_head + qh)]) - mlogm;
          sums[a] += 1.0 - std::clamp(js, 0.0, 1.0);
        }
      }
    }
    if (o_.metric == PodMetric::kKeys) {
      other_keys.resize(keys.size());
      for (int32_t a = 0; a < l; ++a) {
        const HeadTable& at = r.seq->k(a, h);
        for (int64_t j = 0; j < r.d; ++j) {
          cache.ReadSlot(at, static_cast<int32_t>(o_.sink + j), other_keys.data() + j * hd);
        }
        for (int32_t gq = 0; gq < group; ++gq) {
          const float* q = in.q + r.row * in.q_stride + static_cast<int64_t>(h * group + gq) * hd;
          SoftmaxScores(q, other_keys.data(), r.d, hd, scale, p_other.data());
          sums[a] +=
              PodSimilarityOf(own.data() + static_cast<size_t>(gq) * r.d, p_other.data(), r.d);
        }
      }
    }
  };
  // std::cref: the std::function refers to `run` instead of copying it to the heap.
  backend.HostParallelFor(tasks, std::cref(run));
  // Reduce in a fixed order, so that the result does not depend on the thread count.
  for (int64_t task = 0; task < tasks; ++task) {
    const int32_t h = static_cast<int32_t>(task % n_kv);
    for (int32_t a = 0; a < l; ++a) {
      sum_[Index(h, a, l)] += task_sum[task * l + a];
      count_[Index(h, a, l)] += group;
    }
  }
}

double PodSimilarity::Similarity(int32_t head, int32_t a, int32_t b) const {
  if (a == b) return 1.0;
  if (a > b) std::swap(a, b);
  const int64_t n = count_[Index(head, a, b)];
  return n == 0 ? std::nan("") : sum_[Index(head, a, b)] / static_cast<double>(n);
}

std::vector<std::vector<std::vector<double>>> PodSimilarity::Matrices() const {
  std::vector<std::vector<std::vector<double>>> m(
      g_.n_head_kv, std::vector<std::vector<double>>(n_layer_, std::vector<double>(n_layer_)));
  for (int32_t h = 0; h < g_.n_head_kv; ++h) {
    for (int32_t a = 0; a < n_layer_; ++a) {
      for (int32_t b = 0; b < n_layer_; ++b) m[h][a][b] = Similarity(h, a, b);
    }
  }
  return m;
}

absl::Status PodRecordingPolicy::Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const {
  return ReserveAppend(cache, seq, n_new);
}

absl::Status PodRecordingPolicy::Attend(KvCache& cache, const LayerInputs& in,
                                        kernels::Backend& backend) const {
  if (!backend.host_addressable()) {
    return absl::FailedPreconditionError(
        "the pod recording KV policy runs on the CPU backend only for now");
  }
  absl::Status s = AppendAndAttend(cache, in, backend);
  if (!s.ok()) return s;
  observer_->Observe(cache, in, backend);
  return absl::OkStatus();
}

}  // namespace kvasir::kvcache
