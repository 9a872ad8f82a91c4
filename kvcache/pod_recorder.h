// What `kvasir calibrate pod` measures, without the model: a recording policy (the full cache plus
// a hook after each layer's attention) and the accumulator of per-head similarities between
// layers' attention over distant tokens, from which kvcache/pod_groups.h forms the groups. The
// driver that runs a model through it is worker/pod_calibration.h.
//
// Thread contract: one sequence is recorded at a time, by the thread that runs the forward pass.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/policy.h"

namespace kvasir::kvcache {

// How two layers a < b of a KV head are compared, per query position i and query head of the
// head's group, over the distant keys j in [sink, i - window] (distributions renormalized there):
//   kAttention: P_a = softmax_j(q_a,i . k_a,j / sqrt(d)) against P_b (each layer's own attention,
//               the comparison the PoD paper describes);
//   kKeys:      P_b against softmax_j(q_b,i . k_a,j / sqrt(d)), i.e. layer b's attention with its
//               own keys against the one PoD gives it with the anchor a's keys.
// similarity = 1 - JS(P, Q), Jensen-Shannon divergence in bits (so in [0, 1]).
enum class PodMetric { kAttention, kKeys };
absl::StatusOr<PodMetric> ParsePodMetric(std::string_view name);
const char* PodMetricName(PodMetric metric);

// 1 - JS(p || q) in bits for two distributions of n entries (each sums to 1).
double PodSimilarityOf(const double* p, const double* q, int64_t n);

struct PodSimilarityOptions {
  int32_t sink = 4;
  int32_t window = 252;
  PodMetric metric = PodMetric::kAttention;
};

class PodSimilarity {
 public:
  PodSimilarity(const KvGeometry& geometry, const PodSimilarityOptions& options);

  // Measures the next rows of sequence `seq` whose positions are in [begin, end) and have at
  // least one distant key (position >= sink + window). Call before the sequence's forward passes.
  void SetQueryRange(SeqId seq, int64_t begin, int64_t end);
  // Called by PodRecordingPolicy after layer in.layer attended over a full cache: q has been
  // rotated in place, and the K tables of layers 0..in.layer hold every token, rotated. Reads q
  // and the tables on the host (the backend must be host-addressable), in parallel over its host
  // threads.
  void Observe(const KvCache& cache, const LayerInputs& in, kernels::Backend& backend);

  // Mean similarity of layers a and b for KV head h (symmetric; 1 for a == b), NaN when nothing
  // was measured.
  double Similarity(int32_t head, int32_t a, int32_t b) const;
  // [n_head_kv][n_layer][n_layer] of Similarity().
  std::vector<std::vector<std::vector<double>>> Matrices() const;
  // Query positions measured so far (each counts once, whatever the number of heads).
  int64_t queries() const { return queries_; }

 private:
  int64_t Index(int32_t h, int32_t a, int32_t b) const {
    return (static_cast<int64_t>(h) * n_layer_ + a) * n_layer_ + b;
  }

  KvGeometry g_;
  PodSimilarityOptions o_;
  int32_t n_layer_;
  SeqId seq_ = -1;
  int64_t begin_ = 0, end_ = 0;
  // kAttention: [layer] the distributions of the measured queries of the current range,
  // [query][query head][distant key], at offsets offset_[query - begin_] * n_head.
  std::vector<std::vector<float>> probs_;
  std::vector<int64_t> offset_;
  std::vector<std::vector<double>> plogp_;  // [layer][query * n_head + query head]: sum p log2 p
  std::vector<double> sum_;                 // [h][a][b], a < b
  std::vector<int64_t> count_;              // [h][a][b]
  int64_t queries_ = 0;
};

// The full cache, plus observer->Observe after every layer. For calibration only: spec "full".
// On the CPU backend only for now (Observe reads the pool on the host).
class PodRecordingPolicy : public KvPolicy {
 public:
  // `observer` must outlive the policy and every sequence under it.
  explicit PodRecordingPolicy(PodSimilarity* observer) : observer_(observer) {}
  std::string spec() const override { return "full"; }
  absl::Status Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const override;
  absl::Status Attend(KvCache& cache, const LayerInputs& in,
                      kernels::Backend& backend) const override;

 private:
  PodSimilarity* observer_;
};

}  // namespace kvasir::kvcache
