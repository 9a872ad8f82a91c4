// safetensors header parsing and validation, and Hugging Face checkpoints of one or several
// files. The JSON header is parsed without exceptions and checked in full (dtype, shape, byte
// range, overlap) before any tensor is exposed.
#include "model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "nlohmann/json.hpp"

namespace kvasir::model {
namespace {

using json = nlohmann::json;

// The safetensors crate refuses headers above 100 MB; so do we.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr uint64_t kMaxIndexBytes = 64ull << 20;

struct DTypeEntry {
  SafeDType type;
  std::string_view name;
  int64_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {SafeDType::kBool, "BOOL", 1},      {SafeDType::kU8, "U8", 1},
    {SafeDType::kI8, "I8", 1},          {SafeDType::kI16, "I16", 2},
    {SafeDType::kU16, "U16", 2},        {SafeDType::kF16, "F16", 2},
    {SafeDType::kBF16, "BF16", 2},      {SafeDType::kI32, "I32", 4},
    {SafeDType::kU32, "U32", 4},        {SafeDType::kF32, "F32", 4},
    {SafeDType::kF64, "F64", 8},        {SafeDType::kI64, "I64", 8},
    {SafeDType::kU64, "U64", 8},        {SafeDType::kF8E4M3, "F8_E4M3", 1},
    {SafeDType::kF8E5M2, "F8_E5M2", 1},
};

const DTypeEntry* FindDType(std::string_view name) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

// A JSON number that is a non-negative integer (json stores such numbers as unsigned, and a
// negative one as signed).
bool AsUint(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t limit) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) {
    if (!std::filesystem::exists(path, ec)) {
      return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    }
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read"));
  }
  if (size > limit) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", size, " bytes is too large (limit ", limit, ")"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot open"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return text;
}

}  // namespace

int64_t SafeDTypeSize(SafeDType t) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.type == t) return e.size;
  }
  return 0;
}

std::string_view SafeDTypeName(SafeDType t) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.type == t) return e.name;
  }
  return "unknown";
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(std::span<const uint8_t> bytes,
                                                       std::string_view name) {
  SafetensorsFile file;
  file.name_ = std::string(name);
  const std::string& fname = file.name_;
  auto error = [&fname](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(fname, ": ", parts...));
  };
  const uint64_t size = bytes.size();
  if (size < 8) {
    return error("file of ", size, " bytes is too short for a safetensors header");
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  if (header_len > size - 8) {
    return error("header length ", header_len, " runs past the end of the file (", size, " bytes)");
  }
  if (header_len > kMaxHeaderBytes) {
    return error("header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes);
  }
  if (header_len < 2 || bytes[8] != '{') {
    return error("header does not start with a JSON object");
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), header_len);

  // Top-level keys are collected during the parse to refuse duplicates.
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && parsed.is_string() &&
        duplicate.empty()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  json header = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
  if (header.is_discarded()) return error("header is not valid JSON");
  if (!header.is_object()) return error("header is not a JSON object");
  if (!duplicate.empty()) return error("duplicate tensor name '", duplicate, "' in the header");

  const uint64_t buffer_size = size - 8 - header_len;
  const uint8_t* buffer = bytes.data() + 8 + header_len;
  struct Range {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) return error("__metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return error("__metadata__ value of '", m.key(), "' is not a string");
        }
        file.metadata_.emplace_back(m.key(), m.value().get<std::string>());
      }
      continue;
    }
    const std::string tensor = absl::StrCat("tensor '", key, "'");
    if (!v.is_object()) return error(tensor, ": entry is not an object");
    auto dtype_it = v.find("dtype");
    auto shape_it = v.find("shape");
    auto offsets_it = v.find("data_offsets");
    if (dtype_it == v.end() || !dtype_it->is_string()) {
      return error(tensor, ": missing or non-string \"dtype\"");
    }
    if (shape_it == v.end() || !shape_it->is_array()) {
      return error(tensor, ": missing or non-array \"shape\"");
    }
    if (offsets_it == v.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
      return error(tensor, ": \"data_offsets\" must be an array [begin, end]");
    }
    const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
    const DTypeEntry* dtype = FindDType(dtype_name);
    if (dtype == nullptr) return error(tensor, ": unknown dtype '", dtype_name, "'");
    SafeTensorInfo info;
    info.name = key;
    info.dtype = dtype->type;
    uint64_t elements = 1;
    for (const json& d : *shape_it) {
      uint64_t dim = 0;
      if (!AsUint(d, &dim)) return error(tensor, ": shape entries must be non-negative integers");
      if (__builtin_mul_overflow(elements, dim, &elements) ||
          elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return error(tensor, ": element count overflows");
      }
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t begin = 0;
    uint64_t end = 0;
    if (!AsUint((*offsets_it)[0], &begin) || !AsUint((*offsets_it)[1], &end)) {
      return error(tensor, ": data_offsets must be non-negative integers");
    }
    if (end < begin) return error(tensor, ": data_offsets [", begin, ", ", end, ") are reversed");
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(elements, static_cast<uint64_t>(dtype->size), &nbytes)) {
      return error(tensor, ": byte size overflows");
    }
    if (end - begin != nbytes) {
      return error(tensor, ": data_offsets [", begin, ", ", end, ") hold ", end - begin,
                   " bytes but shape and ", dtype_name, " need ", nbytes);
    }
    if (end > buffer_size) {
      return error(tensor, ": data_offsets [", begin, ", ", end, ") run past the end of the data (",
                   buffer_size, " bytes)");
    }
    info.data = buffer + begin;
    info.size_bytes = nbytes;
    ranges.push_back({begin, end, file.tensors_.size()});
    file.tensors_.push_back(std::move(info));
  }

  // Ranges must not overlap; order the tensors as they lie in the file.
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t prev_end = 0;
  const Range* prev = nullptr;
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;  // empty tensors overlap nothing
    if (prev != nullptr && r.begin < prev_end) {
      return error("tensor '", file.tensors_[r.index].name, "' [", r.begin, ", ", r.end,
                   ") overlaps tensor '", file.tensors_[prev->index].name, "' [", prev->begin, ", ",
                   prev->end, ")");
    }
    prev = &r;
    prev_end = r.end;
  }
  std::vector<SafeTensorInfo> ordered;
  ordered.reserve(file.tensors_.size());
  for (const Range& r : ranges) ordered.push_back(std::move(file.tensors_[r.index]));
  file.tensors_ = std::move(ordered);
  for (size_t i = 0; i < file.tensors_.size(); ++i) file.index_[file.tensors_[i].name] = i;
  return file;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  KVASIR_ASSIGN_OR_RETURN(MappedFile map, MappedFile::Open(path));
  KVASIR_ASSIGN_OR_RETURN(SafetensorsFile file, Parse(map.bytes(), path));
  file.map_ = std::move(map);  // the mapping's address survives the move
  return file;
}

const SafeTensorInfo* SafetensorsFile::Find(std::string_view tensor) const {
  auto it = index_.find(ToAbsl(tensor));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// ---------------------------------------------------------------------------------------------
// SafetensorsCheckpoint

absl::StatusOr<SafetensorsCheckpoint> SafetensorsCheckpoint::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return absl::NotFoundError(absl::StrCat(dir, ": no such directory"));
  if (!fs::is_directory(dir, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": not a directory"));
  }
  SafetensorsCheckpoint ckpt;
  const fs::path root(dir);
  const fs::path index_path = root / "model.safetensors.index.json";
  const fs::path single_path = root / "model.safetensors";

  if (fs::exists(index_path, ec)) {
    const std::string ipath = index_path.string();
    KVASIR_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(ipath, kMaxIndexBytes));
    json index = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(ipath, ": not a JSON object"));
    }
    auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(ipath, ": missing \"weight_map\" object"));
    }
    absl::flat_hash_map<std::string, size_t> shard_of_file;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(ipath, ": weight_map entry '", it.key(), "' is not a file name"));
      }
      const std::string& shard = it.value().get_ref<const std::string&>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
        return absl::InvalidArgumentError(
            absl::StrCat(ipath, ": shard name '", shard, "' is not a plain file name"));
      }
      auto [pos, inserted] = shard_of_file.emplace(shard, ckpt.files_.size());
      if (inserted) {
        KVASIR_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open((root / shard).string()));
        ckpt.files_.push_back(std::make_unique<SafetensorsFile>(std::move(f)));
      }
      const SafetensorsFile& file = *ckpt.files_[pos->second];
      const SafeTensorInfo* info = file.Find(it.key());
      if (info == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(ipath, ": tensor '", it.key(), "' is not in its shard '", shard, "'"));
      }
      ckpt.index_[it.key()] = info;
    }
    if (ckpt.files_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(ipath, ": empty weight_map"));
    }
    return ckpt;
  }

  std::vector<fs::path> paths;
  if (fs::exists(single_path, ec)) {
    paths.push_back(single_path);
  } else {
    for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
      if (e.path().extension() == ".safetensors" && e.is_regular_file(ec)) {
        paths.push_back(e.path());
      }
    }
    std::sort(paths.begin(), paths.end());
  }
  if (paths.empty()) {
    return absl::NotFoundError(absl::StrCat(
        dir, ": no model.safetensors, model.safetensors.index.json or *.safetensors file"));
  }
  for (const fs::path& p : paths) {
    KVASIR_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(p.string()));
    ckpt.files_.push_back(std::make_unique<SafetensorsFile>(std::move(f)));
    for (const SafeTensorInfo& t : ckpt.files_.back()->tensors()) {
      if (!ckpt.index_.emplace(t.name, &t).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(p.string(), ": tensor '", t.name, "' is also in another file of ", dir));
      }
    }
  }
  return ckpt;
}

const SafeTensorInfo* SafetensorsCheckpoint::Find(std::string_view tensor) const {
  auto it = index_.find(ToAbsl(tensor));
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> SafetensorsCheckpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, info] : index_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace kvasir::model
