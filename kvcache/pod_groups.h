// The layer groups of the `pod` KV policy: for every KV head, the layers are split into runs of
// consecutive layers, and each run's lowest layer (its anchor) lends its keys of distant tokens to
// the other layers of the run. This file owns the in-memory form, its validation, the groups JSON
// file (docs/compression.md) and the greedy grouping that `kvasir calibrate pod` applies to
// measured similarities. Invariant of a valid PodGroups: anchor(l, h) <= l, anchor(0, h) == 0, and
// anchor(l, h) is either l or anchor(l - 1, h) (groups are consecutive).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvasir::kvcache {

class PodGroups {
 public:
  PodGroups() = default;

  // Every head split into groups of `group_size` consecutive layers (the last one may be shorter).
  // group_size >= 1; a group_size >= n_layer gives one group per head.
  static PodGroups FixedSize(int32_t n_layer, int32_t n_head_kv, int32_t group_size);
  // From explicit lists: lists[h] holds the groups of head h, each a list of layers. Every layer
  // must appear exactly once per head, in increasing order, and each group must be a run of
  // consecutive layers. InvalidArgument names the first violation.
  static absl::StatusOr<PodGroups> FromLists(
      int32_t n_layer, int32_t n_head_kv,
      const std::vector<std::vector<std::vector<int32_t>>>& lists);

  int32_t n_layer() const { return n_layer_; }
  int32_t n_head_kv() const { return n_head_kv_; }
  // The anchor layer of (layer, head): the lowest layer of its group.
  int32_t anchor(int32_t layer, int32_t head) const { return anchor_[layer * n_head_kv_ + head]; }
  bool is_anchor(int32_t layer, int32_t head) const { return anchor(layer, head) == layer; }
  // (layer, head) pairs that are anchors.
  int32_t num_anchors() const;
  // The groups of one head as lists of layers.
  std::vector<std::vector<int32_t>> Groups(int32_t head) const;

  bool operator==(const PodGroups& other) const {
    return n_layer_ == other.n_layer_ && n_head_kv_ == other.n_head_kv_ && anchor_ == other.anchor_;
  }

 private:
  int32_t n_layer_ = 0;
  int32_t n_head_kv_ = 0;
  std::vector<int32_t> anchor_;  // [n_layer * n_head_kv]
};

// What `kvasir calibrate pod` measured, recorded in the file for people (ignored by the policy).
struct PodCalibrationInfo {
  std::string text;       // the calibration text file
  std::string metric;     // "attention" or "keys"
  int64_t tokens = 0;     // tokens run through the model
  int32_t chunks = 0;     // sequences they were cut into
  int64_t queries = 0;    // query positions measured (per layer and KV head)
  double threshold = 0;   // similarity a layer needs to join its group (NaN: fixed-size groups)
  int32_t max_group = 0;  // cap on layers per group (0: none)
};

// The groups JSON file. Only `n_layer`, `n_head_kv` and `groups` are required.
struct PodGroupsFile {
  PodGroups groups;
  std::string model;            // (optional) the model it was measured on
  std::optional<int32_t> sink;  // (optional) the policy's defaults when the spec omits them
  std::optional<int32_t> window;
  // (optional) [n_head_kv][n_layer][n_layer]: mean similarity of two layers' attention over
  // distant tokens; NaN (null in JSON) where not measured.
  std::vector<std::vector<std::vector<double>>> similarity;
  std::optional<PodCalibrationInfo> calibration;  // (optional)
};

// Parses and validates the JSON text of a groups file. InvalidArgument with a one-line message.
absl::StatusOr<PodGroupsFile> ParsePodGroupsJson(std::string_view text);
// Reads and parses a groups file; errors name the path.
absl::StatusOr<PodGroupsFile> LoadPodGroupsFile(const std::string& path);
// The JSON text of a groups file (pretty-printed, ends with a newline); ParsePodGroupsJson reads
// it back to an equal PodGroupsFile (similarities to JSON double precision).
std::string PodGroupsToJson(const PodGroupsFile& file);

// Greedy bottom-up grouping per head: layer 0 opens the first group; layer l joins the current
// group when similarity[h][anchor][l] >= threshold (NaN never does) and the group has fewer than
// `max_group` layers (0: no cap); otherwise it opens a new group and becomes its anchor.
// similarity: [n_head_kv][n_layer][n_layer], as in PodGroupsFile.
PodGroups GreedyPodGroups(const std::vector<std::vector<std::vector<double>>>& similarity,
                          double threshold, int32_t max_group);

}  // namespace kvasir::kvcache
