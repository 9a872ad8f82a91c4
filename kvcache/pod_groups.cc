// PoD layer groups: validation, the groups JSON file and greedy grouping (kvcache/pod_groups.h).
#include "kvcache/pod_groups.h"

#include <cmath>
#include <fstream>
#include <iterator>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvasir::kvcache {
namespace {

using nlohmann::json;

constexpr int64_t kMaxLayers = 1 << 16;
constexpr int64_t kMaxFileBytes = int64_t{64} << 20;
constexpr const char* kFormat = "kvasir.pod.groups";
constexpr int kVersion = 1;

absl::Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("pod groups: ", what));
}

// An integer in [min, max], or nullopt (wrong type or out of range).
std::optional<int64_t> GetInt(const json& j, int64_t min, int64_t max) {
  if (j.is_number_unsigned()) {
    const uint64_t u = j.get<uint64_t>();
    if (u > static_cast<uint64_t>(max)) return std::nullopt;
    const auto v = static_cast<int64_t>(u);
    return v < min ? std::nullopt : std::optional<int64_t>(v);
  }
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v < min || v > max) return std::nullopt;
    return v;
  }
  return std::nullopt;
}

absl::StatusOr<int64_t> RequireInt(const json& obj, const char* key, int64_t min, int64_t max) {
  auto it = obj.find(key);
  if (it == obj.end()) return Bad(absl::StrCat("missing \"", key, "\""));
  std::optional<int64_t> v = GetInt(*it, min, max);
  if (!v) {
    return Bad(absl::StrCat("\"", key, "\" must be an integer in [", min, ", ", max, "]"));
  }
  return *v;
}

absl::StatusOr<std::optional<int64_t>> OptionalInt(const json& obj, const char* key, int64_t min,
                                                   int64_t max) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<int64_t>();
  std::optional<int64_t> v = GetInt(*it, min, max);
  if (!v) {
    return Bad(absl::StrCat("\"", key, "\" must be an integer in [", min, ", ", max, "]"));
  }
  return v;
}

absl::StatusOr<std::string> OptionalString(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::string();
  if (!it->is_string()) return Bad(absl::StrCat("\"", key, "\" must be a string"));
  return it->get<std::string>();
}

absl::StatusOr<PodCalibrationInfo> ParseCalibration(const json& c) {
  if (!c.is_object()) return Bad("\"calibration\" must be an object");
  PodCalibrationInfo info;
  KVASIR_ASSIGN_OR_RETURN(info.text, OptionalString(c, "text"));
  KVASIR_ASSIGN_OR_RETURN(info.metric, OptionalString(c, "metric"));
  constexpr int64_t kBig = std::numeric_limits<int64_t>::max();
  KVASIR_ASSIGN_OR_RETURN(auto tokens, OptionalInt(c, "tokens", 0, kBig));
  KVASIR_ASSIGN_OR_RETURN(auto chunks, OptionalInt(c, "chunks", 0, 1 << 30));
  KVASIR_ASSIGN_OR_RETURN(auto queries, OptionalInt(c, "queries", 0, kBig));
  KVASIR_ASSIGN_OR_RETURN(auto max_group, OptionalInt(c, "max_group", 0, 1 << 30));
  info.tokens = tokens.value_or(0);
  info.chunks = static_cast<int32_t>(chunks.value_or(0));
  info.queries = queries.value_or(0);
  info.max_group = static_cast<int32_t>(max_group.value_or(0));
  if (auto it = c.find("threshold"); it != c.end() && !it->is_null()) {
    if (!it->is_number()) return Bad("\"calibration.threshold\" must be a number");
    info.threshold = it->get<double>();
  } else if (it != c.end()) {
    info.threshold = std::nan("");
  }
  return info;
}

}  // namespace

PodGroups PodGroups::FixedSize(int32_t n_layer, int32_t n_head_kv, int32_t group_size) {
  PodGroups g;
  g.n_layer_ = n_layer;
  g.n_head_kv_ = n_head_kv;
  g.anchor_.resize(static_cast<size_t>(n_layer) * n_head_kv);
  const int32_t size = group_size < 1 ? 1 : group_size;
  for (int32_t l = 0; l < n_layer; ++l) {
    for (int32_t h = 0; h < n_head_kv; ++h) g.anchor_[l * n_head_kv + h] = l - l % size;
  }
  return g;
}

absl::StatusOr<PodGroups> PodGroups::FromLists(
    int32_t n_layer, int32_t n_head_kv,
    const std::vector<std::vector<std::vector<int32_t>>>& lists) {
  if (n_layer <= 0 || n_head_kv <= 0) {
    return Bad(
        absl::StrCat("n_layer (", n_layer, ") and n_head_kv (", n_head_kv, ") must be positive"));
  }
  if (static_cast<int64_t>(lists.size()) != n_head_kv) {
    return Bad(absl::StrCat("\"groups\" has ", lists.size(), " entries, expected one per KV head (",
                            n_head_kv, ")"));
  }
  PodGroups g;
  g.n_layer_ = n_layer;
  g.n_head_kv_ = n_head_kv;
  g.anchor_.assign(static_cast<size_t>(n_layer) * n_head_kv, -1);
  for (int32_t h = 0; h < n_head_kv; ++h) {
    int32_t next = 0;  // the layer that must come next
    for (size_t gi = 0; gi < lists[h].size(); ++gi) {
      const std::vector<int32_t>& group = lists[h][gi];
      if (group.empty()) return Bad(absl::StrCat("head ", h, ": group ", gi, " is empty"));
      const int32_t anchor = group[0];
      for (int32_t layer : group) {
        if (layer < 0 || layer >= n_layer) {
          return Bad(
              absl::StrCat("head ", h, ": layer ", layer, " is out of range [0, ", n_layer, ")"));
        }
        if (layer != next) {
          return Bad(absl::StrCat("head ", h, ": expected layer ", next, " next, got ", layer,
                                  " (every layer exactly once, in order, in runs of consecutive "
                                  "layers)"));
        }
        g.anchor_[layer * n_head_kv + h] = anchor;
        ++next;
      }
    }
    if (next != n_layer) {
      return Bad(
          absl::StrCat("head ", h, ": layers ", next, "..", n_layer - 1, " are in no group"));
    }
  }
  return g;
}

int32_t PodGroups::num_anchors() const {
  int32_t n = 0;
  for (int32_t l = 0; l < n_layer_; ++l) {
    for (int32_t h = 0; h < n_head_kv_; ++h) n += is_anchor(l, h) ? 1 : 0;
  }
  return n;
}

std::vector<std::vector<int32_t>> PodGroups::Groups(int32_t head) const {
  std::vector<std::vector<int32_t>> out;
  for (int32_t l = 0; l < n_layer_; ++l) {
    if (is_anchor(l, head)) out.emplace_back();
    out.back().push_back(l);
  }
  return out;
}

absl::StatusOr<PodGroupsFile> ParsePodGroupsJson(std::string_view text) {
  const json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Bad("not valid JSON");
  if (!j.is_object()) return Bad("the top level must be a JSON object");
  PodGroupsFile file;
  if (auto it = j.find("format"); it != j.end()) {
    if (!it->is_string() || it->get<std::string>() != kFormat) {
      return Bad(absl::StrCat("\"format\" must be \"", kFormat, "\""));
    }
  }
  KVASIR_ASSIGN_OR_RETURN(auto version, OptionalInt(j, "version", 0, 1 << 30));
  if (version && *version != kVersion) {
    return Bad(
        absl::StrCat("version ", *version, " is not supported (this build reads ", kVersion, ")"));
  }
  KVASIR_ASSIGN_OR_RETURN(const int64_t n_layer, RequireInt(j, "n_layer", 1, kMaxLayers));
  KVASIR_ASSIGN_OR_RETURN(const int64_t n_head_kv, RequireInt(j, "n_head_kv", 1, kMaxLayers));
  KVASIR_ASSIGN_OR_RETURN(file.model, OptionalString(j, "model"));
  KVASIR_ASSIGN_OR_RETURN(auto sink, OptionalInt(j, "sink", 0, 1 << 30));
  KVASIR_ASSIGN_OR_RETURN(auto window, OptionalInt(j, "window", 1, 1 << 30));
  if (sink) file.sink = static_cast<int32_t>(*sink);
  if (window) file.window = static_cast<int32_t>(*window);

  auto groups_it = j.find("groups");
  if (groups_it == j.end()) return Bad("missing \"groups\"");
  if (!groups_it->is_array()) return Bad("\"groups\" must be an array (one entry per KV head)");
  std::vector<std::vector<std::vector<int32_t>>> lists;
  for (size_t h = 0; h < groups_it->size(); ++h) {
    const json& head = (*groups_it)[h];
    if (!head.is_array()) return Bad(absl::StrCat("groups of head ", h, " must be an array"));
    if (head.size() > static_cast<size_t>(n_layer)) {
      return Bad(absl::StrCat("head ", h, " has more groups (", head.size(), ") than layers"));
    }
    std::vector<std::vector<int32_t>>& groups = lists.emplace_back();
    for (size_t gi = 0; gi < head.size(); ++gi) {
      const json& group = head[gi];
      if (!group.is_array()) {
        return Bad(absl::StrCat("head ", h, ": group ", gi, " must be an array of layers"));
      }
      if (group.size() > static_cast<size_t>(n_layer)) {
        return Bad(absl::StrCat("head ", h, ": group ", gi, " has more entries than layers"));
      }
      std::vector<int32_t>& layers = groups.emplace_back();
      for (const json& layer : group) {
        std::optional<int64_t> v = GetInt(layer, -kMaxLayers, kMaxLayers);
        if (!v) {
          return Bad(absl::StrCat("head ", h, ": group ", gi, " holds a non-integer layer"));
        }
        layers.push_back(static_cast<int32_t>(*v));
      }
    }
  }
  KVASIR_ASSIGN_OR_RETURN(
      file.groups,
      PodGroups::FromLists(static_cast<int32_t>(n_layer), static_cast<int32_t>(n_head_kv), lists));

  if (auto it = j.find("similarity"); it != j.end() && !it->is_null()) {
    const auto bad_shape = [&] {
      return Bad(
          absl::StrCat("\"similarity\" must be [n_head_kv][n_layer][n_layer] numbers or "
                       "nulls (",
                       n_head_kv, " x ", n_layer, " x ", n_layer, ")"));
    };
    if (!it->is_array() || it->size() != static_cast<size_t>(n_head_kv)) return bad_shape();
    file.similarity.resize(n_head_kv);
    for (int64_t h = 0; h < n_head_kv; ++h) {
      const json& m = (*it)[h];
      if (!m.is_array() || m.size() != static_cast<size_t>(n_layer)) return bad_shape();
      file.similarity[h].resize(n_layer);
      for (int64_t a = 0; a < n_layer; ++a) {
        const json& row = m[a];
        if (!row.is_array() || row.size() != static_cast<size_t>(n_layer)) return bad_shape();
        file.similarity[h][a].resize(n_layer);
        for (int64_t b = 0; b < n_layer; ++b) {
          const json& x = row[b];
          if (x.is_null()) {
            file.similarity[h][a][b] = std::nan("");
          } else if (x.is_number()) {
            file.similarity[h][a][b] = x.get<double>();
          } else {
            return bad_shape();
          }
        }
      }
    }
  }
  if (auto it = j.find("calibration"); it != j.end() && !it->is_null()) {
    KVASIR_ASSIGN_OR_RETURN(file.calibration, ParseCalibration(*it));
  }
  return file;
}

absl::StatusOr<PodGroupsFile> LoadPodGroupsFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("pod groups file '", path, "' cannot be read"));
  std::string text;
  char buffer[1 << 16];
  while (in.read(buffer, sizeof(buffer)) || in.gcount() > 0) {
    text.append(buffer, static_cast<size_t>(in.gcount()));
    if (static_cast<int64_t>(text.size()) > kMaxFileBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("pod groups file '", path, "' is larger than 64 MiB"));
    }
  }
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat("pod groups file '", path, "': read error"));
  }
  auto file = ParsePodGroupsJson(text);
  if (!file.ok()) return Annotate(file.status(), absl::StrCat("'", path, "'"));
  return file;
}

std::string PodGroupsToJson(const PodGroupsFile& file) {
  const PodGroups& g = file.groups;
  const auto dump = [](const json& v) {
    return v.dump(-1, ' ', false, json::error_handler_t::replace);  // invalid UTF-8 replaced
  };
  // One line per field, per head's groups and per similarity row: readable and diffable.
  std::vector<std::pair<std::string, std::string>> fields;
  fields.emplace_back("format", dump(kFormat));
  fields.emplace_back("version", dump(kVersion));
  if (!file.model.empty()) fields.emplace_back("model", dump(file.model));
  fields.emplace_back("n_layer", dump(g.n_layer()));
  fields.emplace_back("n_head_kv", dump(g.n_head_kv()));
  if (file.sink) fields.emplace_back("sink", dump(*file.sink));
  if (file.window) fields.emplace_back("window", dump(*file.window));
  std::string groups = "[";
  for (int32_t h = 0; h < g.n_head_kv(); ++h) {
    absl::StrAppend(&groups, h == 0 ? "" : ",", "\n    ", dump(json(g.Groups(h))));
  }
  fields.emplace_back("groups", groups + "\n  ]");
  if (!file.similarity.empty()) {
    std::string sim = "[";
    for (size_t h = 0; h < file.similarity.size(); ++h) {
      absl::StrAppend(&sim, h == 0 ? "" : ",", "\n    [");
      for (size_t a = 0; a < file.similarity[h].size(); ++a) {
        json row = json::array();
        for (double x : file.similarity[h][a]) {
          row.push_back(std::isfinite(x) ? json(std::round(x * 1e6) / 1e6) : json(nullptr));
        }
        absl::StrAppend(&sim, a == 0 ? "" : ",", "\n      ", dump(row));
      }
      absl::StrAppend(&sim, "\n    ]");
    }
    fields.emplace_back("similarity", sim + "\n  ]");
  }
  if (file.calibration) {
    const PodCalibrationInfo& c = *file.calibration;
    json cal = {{"text", c.text},
                {"metric", c.metric},
                {"tokens", c.tokens},
                {"chunks", c.chunks},
                {"queries", c.queries},
                {"threshold", std::isfinite(c.threshold) ? json(c.threshold) : json(nullptr)},
                {"max_group", c.max_group}};
    fields.emplace_back("calibration", dump(cal));
  }
  std::string out = "{";
  for (size_t i = 0; i < fields.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "" : ",", "\n  \"", fields[i].first, "\": ", fields[i].second);
  }
  return out + "\n}\n";
}

PodGroups GreedyPodGroups(const std::vector<std::vector<std::vector<double>>>& similarity,
                          double threshold, int32_t max_group) {
  const int32_t n_head_kv = static_cast<int32_t>(similarity.size());
  const int32_t n_layer = n_head_kv > 0 ? static_cast<int32_t>(similarity[0].size()) : 0;
  std::vector<std::vector<std::vector<int32_t>>> lists(n_head_kv);
  for (int32_t h = 0; h < n_head_kv; ++h) {
    for (int32_t l = 0; l < n_layer; ++l) {
      auto& groups = lists[h];
      bool join = false;
      if (!groups.empty()) {
        const int32_t anchor = groups.back()[0];
        const double s = similarity[h][anchor][l];
        join = !std::isnan(s) && s >= threshold &&
               (max_group <= 0 || static_cast<int32_t>(groups.back().size()) < max_group);
      }
      if (join) {
        groups.back().push_back(l);
      } else {
        groups.push_back({l});
      }
    }
  }
  auto g = PodGroups::FromLists(n_layer, n_head_kv, lists);
  return g.ok() ? *g : PodGroups();
}

}  // namespace kvasir::kvcache
