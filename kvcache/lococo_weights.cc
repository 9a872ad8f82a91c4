// Reading LoCoCo compressor weights from safetensors (kvcache/lococo_weights.h). kvcache/ does not
// depend on model/, so this is a small reader of its own for the few tensors it needs: the JSON
// header is parsed without exceptions and each tensor used is checked (dtype, shape, byte range
// inside the data section) before a byte of it is read.
#include "kvcache/lococo_weights.h"

#include <cmath>
#include <cstring>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "common/base/half.h"
#include "common/mmap_file.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvasir::kvcache {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct Tensor {
  std::string dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};

bool AsUint(const json& j, uint64_t& out) {
  if (j.is_number_unsigned()) {
    out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

class Reader {
 public:
  static absl::StatusOr<Reader> Open(const std::string& path) {
    Reader r;
    r.path_ = path;
    KVASIR_ASSIGN_OR_RETURN(r.map_, MappedFile::Open(path));
    const uint64_t size = r.map_.size();
    if (size < 8) return r.Error("too short for a safetensors file");
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | r.map_.data()[i];
    if (header_len > kMaxHeaderBytes || header_len > size - 8) {
      return r.Error(
          absl::StrCat("header length ", header_len, " does not fit the file (", size, " bytes)"));
    }
    const auto* text = reinterpret_cast<const char*>(r.map_.data() + 8);
    r.header_ = json::parse(text, text + header_len, nullptr, /*allow_exceptions=*/false);
    if (r.header_.is_discarded() || !r.header_.is_object()) {
      return r.Error("the header is not a JSON object");
    }
    r.data_ = r.map_.data() + 8 + header_len;
    r.data_size_ = size - 8 - header_len;
    return r;
  }

  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat("LoCoCo weights ", path_, ": ", what));
  }

  absl::StatusOr<Tensor> Find(const std::string& name) const {
    auto it = header_.find(name);
    if (it == header_.end()) return Error(absl::StrCat("tensor ", name, " is missing"));
    const json& e = *it;
    auto bad = [&](const std::string& why) {
      return Error(absl::StrCat("tensor ", name, ": ", why));
    };
    if (!e.is_object()) return bad("entry is not an object");
    auto dtype = e.find("dtype");
    auto shape = e.find("shape");
    auto offsets = e.find("data_offsets");
    if (dtype == e.end() || !dtype->is_string()) return bad("no dtype");
    if (shape == e.end() || !shape->is_array()) return bad("no shape");
    if (offsets == e.end() || !offsets->is_array() || offsets->size() != 2) {
      return bad("no data_offsets pair");
    }
    Tensor t;
    t.dtype = dtype->get<std::string>();
    int64_t elem = 0;
    if (t.dtype == "F32") {
      elem = 4;
    } else if (t.dtype == "F16" || t.dtype == "BF16") {
      elem = 2;
    } else {
      return bad(absl::StrCat("dtype ", t.dtype, " is not F32, F16 or BF16"));
    }
    uint64_t count = 1;
    for (const json& d : *shape) {
      uint64_t n = 0;
      if (!AsUint(d, n) || n > (uint64_t{1} << 31)) return bad("bad shape");
      t.shape.push_back(static_cast<int64_t>(n));
      count *= n;
      if (count > (uint64_t{1} << 40)) return bad("shape too large");
    }
    uint64_t begin = 0, end = 0;
    if (!AsUint((*offsets)[0], begin) || !AsUint((*offsets)[1], end) || begin > end ||
        end > data_size_) {
      return bad("data_offsets outside the data section");
    }
    if (end - begin != count * static_cast<uint64_t>(elem)) {
      return bad(absl::StrCat("holds ", end - begin, " bytes, its shape needs ",
                              count * static_cast<uint64_t>(elem)));
    }
    t.data = data_ + begin;
    t.size = count;
    return t;
  }

  // The tensor's values as f32; refuses NaN and infinities.
  absl::StatusOr<std::vector<float>> Values(const std::string& name, const Tensor& t) const {
    std::vector<float> out(t.size);
    for (uint64_t i = 0; i < t.size; ++i) {
      if (t.dtype == "F32") {
        std::memcpy(&out[i], t.data + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = t.dtype == "F16" ? Fp16ToFp32(h) : Bits2Float(static_cast<uint32_t>(h) << 16);
      }
      if (!std::isfinite(out[i])) {
        return Error(absl::StrCat("tensor ", name, " holds a non-finite value"));
      }
    }
    return out;
  }

 private:
  std::string path_;
  MappedFile map_;
  json header_;
  const uint8_t* data_ = nullptr;
  uint64_t data_size_ = 0;
};

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? ", " : "", shape[i]);
  return s + "]";
}

}  // namespace

absl::StatusOr<LococoWeights> ReadLococoWeights(const std::string& path, int32_t n_layer,
                                                int32_t head_dim, int32_t m_c) {
  KVASIR_ASSIGN_OR_RETURN(Reader reader, Reader::Open(path));
  LococoWeights w;
  w.m_c = m_c;
  w.in_channels = 2 * head_dim;
  w.layers.resize(n_layer);
  for (int32_t l = 0; l < n_layer; ++l) {
    const std::string prefix = absl::StrCat("layers.", l, ".");
    const std::string wname = prefix + "conv.weight";
    const std::string bname = prefix + "conv.bias";
    const std::string lname = prefix + "lambda";
    KVASIR_ASSIGN_OR_RETURN(Tensor wt, reader.Find(wname));
    KVASIR_ASSIGN_OR_RETURN(Tensor bt, reader.Find(bname));
    KVASIR_ASSIGN_OR_RETURN(Tensor lt, reader.Find(lname));
    if (wt.shape.size() != 3 || wt.shape[0] != m_c || wt.shape[1] != w.in_channels ||
        wt.shape[2] < 1 || wt.shape[2] % 2 == 0 || wt.shape[2] > 1023) {
      return reader.Error(
          absl::StrCat(wname, " has shape ", ShapeText(wt.shape), ", expected [", m_c, ", ",
                       w.in_channels, ", odd kernel] (M_c = slots / 2 fused slots, 2 * head_dim)"));
    }
    if (l == 0) w.kernel = static_cast<int32_t>(wt.shape[2]);
    if (wt.shape[2] != w.kernel) {
      return reader.Error(
          absl::StrCat(wname, ": kernel ", wt.shape[2], " differs from layer 0's ", w.kernel));
    }
    if (bt.shape.size() != 1 || bt.shape[0] != m_c) {
      return reader.Error(
          absl::StrCat(bname, " has shape ", ShapeText(bt.shape), ", expected [", m_c, "]"));
    }
    if (lt.size != 1 || lt.shape.size() > 1) {
      return reader.Error(
          absl::StrCat(lname, " has shape ", ShapeText(lt.shape), ", expected [] or [1]"));
    }
    LococoLayerWeights& lw = w.layers[l];
    KVASIR_ASSIGN_OR_RETURN(lw.conv_weight, reader.Values(wname, wt));
    KVASIR_ASSIGN_OR_RETURN(lw.conv_bias, reader.Values(bname, bt));
    KVASIR_ASSIGN_OR_RETURN(std::vector<float> lambda, reader.Values(lname, lt));
    lw.lambda = lambda[0];
  }
  return w;
}

}  // namespace kvasir::kvcache
