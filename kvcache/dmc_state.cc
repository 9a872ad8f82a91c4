#include "kvcache/dmc_state.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/strings.h"

namespace kvasir::kvcache::dmc {
namespace {

constexpr uint32_t kStateMagic = 0x53434D44;  // "DMCS" little-endian
constexpr uint16_t kStateVersion = 1;
// magic, version, mode, reserved, n_layer, n_head_kv, head_dim, window.
constexpr size_t kHeaderBytes = 4 + 2 + 1 + 1 + 4 * 4;
// slots, run_len, win_ptr, tokens, w_sum, threshold, decisions, appends.
constexpr size_t kScalarBytes = 4 + 4 + 4 + 8 + 4 + 8 + 8 + 8;

class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  template <typename T>
  void Put(T v) {
    uint64_t x = 0;
    std::memcpy(&x, &v, sizeof(T));
    for (size_t i = 0; i < sizeof(T); ++i) out_.push_back(static_cast<char>((x >> (8 * i)) & 0xFF));
  }

 private:
  std::string& out_;
};

// Reads fixed-size little-endian values; the caller checked the total size first.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  template <typename T>
  T Get() {
    KVASIR_CHECK(pos_ + sizeof(T) <= in_.size());
    uint64_t x = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      x |= static_cast<uint64_t>(static_cast<uint8_t>(in_[pos_ + i])) << (8 * i);
    }
    pos_ += sizeof(T);
    T v;
    std::memcpy(&v, &x, sizeof(T));
    return v;
  }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

absl::Status Bad(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("dmc state: ", ToAbsl(what)));
}

}  // namespace

State::State(int32_t heads, int32_t head_dim, int32_t window, double threshold)
    : head_dim_(head_dim),
      window_(window),
      stride_(static_cast<int64_t>(2 + 2 * window) * head_dim + window),
      scalars_(static_cast<size_t>(heads)),
      data_(static_cast<size_t>(heads) * stride_, 0.0f) {
  for (HeadScalars& s : scalars_) s.threshold = threshold;
}

bool Step(const StepParams& p, State& state, int32_t head, const float* q, int64_t q_head_stride,
          const float* k, const float* v, int32_t slots, float* k_mean, float* v_mean) {
  const int32_t d_last = p.head_dim - 1;
  HeadScalars& s = state.scalars(head);
  float* k_sum = state.k_sum(head);
  float* v_sum = state.v_sum(head);
  const bool forced = slots == 0 || slots <= p.sink;
  bool alpha = false;
  float omega = 1.0f;
  if (p.mode == DmcMode::kLearned) {
    alpha = !forced && k[d_last] - kDmcInitVal > 0.0f;
    float logit = 0.0f;
    for (int32_t g = 0; g < p.group; ++g) logit += q[g * q_head_stride + d_last];
    logit /= static_cast<float>(p.group);
    omega = 1.0f / (1.0f + std::exp(-(logit + kDmcInitVal))) + kDmcWeightEps;
  } else if (!forced && !p.never_merge) {
    double dot = 0.0, kk = 0.0, ss = 0.0;
    for (int32_t d = 0; d < p.head_dim; ++d) {
      dot += static_cast<double>(k[d]) * k_sum[d];
      kk += static_cast<double>(k[d]) * k[d];
      ss += static_cast<double>(k_sum[d]) * k_sum[d];
    }
    const double denom = std::sqrt(kk * ss);
    const double similarity = denom > 0.0 ? dot / denom : 0.0;
    alpha = similarity >= s.threshold;
    ++s.decisions;
    if (!alpha) ++s.appends;
    s.threshold += p.gain * (p.inv_ratio - (alpha ? 0.0 : 1.0));
  }

  s.run_len = alpha ? s.run_len + 1 : 1;
  const bool overflow = p.window > 0 && s.run_len > p.window;
  float* ring_k =
      p.window > 0 ? state.ring_k(head) + static_cast<int64_t>(s.win_ptr) * p.head_dim : nullptr;
  float* ring_v =
      p.window > 0 ? state.ring_v(head) + static_cast<int64_t>(s.win_ptr) * p.head_dim : nullptr;
  for (int32_t d = 0; d < p.head_dim; ++d) {
    // The learned mode zeroes the decision element before accumulating.
    const float kx = (p.mode == DmcMode::kLearned && d == d_last) ? 0.0f : k[d];
    const float kw = omega * kx;
    const float vw = omega * v[d];
    if (!alpha) {
      k_sum[d] = kw;
      v_sum[d] = vw;
    } else if (overflow) {
      k_sum[d] = (k_sum[d] - ring_k[d]) + kw;
      v_sum[d] = (v_sum[d] - ring_v[d]) + vw;
    } else {
      k_sum[d] = k_sum[d] + kw;
      v_sum[d] = v_sum[d] + vw;
    }
    if (p.window > 0) {
      ring_k[d] = kw;
      ring_v[d] = vw;
    }
  }
  if (!alpha) {
    s.w_sum = omega;
  } else if (overflow) {
    s.w_sum = (s.w_sum - state.ring_w(head)[s.win_ptr]) + omega;
  } else {
    s.w_sum = s.w_sum + omega;
  }
  if (p.window > 0) {
    state.ring_w(head)[s.win_ptr] = omega;
    s.win_ptr = (s.win_ptr + 1) % p.window;
  }
  for (int32_t d = 0; d < p.head_dim; ++d) {
    k_mean[d] = k_sum[d] / s.w_sum;
    v_mean[d] = v_sum[d] / s.w_sum;
  }
  return alpha;
}

size_t State::SerializedHeaderBytes() { return kHeaderBytes; }
size_t State::SerializedHeadsAt() { return 4 + 2 + 1 + 1 + 4; }
size_t State::SerializedHeadBytes(int32_t head_dim, int32_t window) {
  return kScalarBytes + 4 * static_cast<size_t>((2 + 2 * window) * head_dim + window);
}

std::string State::Serialize(DmcMode mode, const KvGeometry& geometry,
                             const std::vector<int32_t>& slots) const {
  KVASIR_CHECK(slots.size() == scalars_.size());
  std::string out;
  out.reserve(kHeaderBytes + scalars_.size() * (kScalarBytes + 4 * stride_));
  Writer w(out);
  w.Put<uint32_t>(kStateMagic);
  w.Put<uint16_t>(kStateVersion);
  w.Put<uint8_t>(mode == DmcMode::kLearned ? 0 : 1);
  w.Put<uint8_t>(0);
  w.Put<int32_t>(geometry.n_layer);
  w.Put<int32_t>(geometry.n_head_kv);
  w.Put<int32_t>(head_dim_);
  w.Put<int32_t>(window_);
  for (size_t h = 0; h < scalars_.size(); ++h) {
    const HeadScalars& s = scalars_[h];
    w.Put<int32_t>(slots[h]);
    w.Put<int32_t>(s.run_len);
    w.Put<int32_t>(s.win_ptr);
    w.Put<int64_t>(s.tokens);
    w.Put<float>(s.w_sum);
    w.Put<double>(s.threshold);
    w.Put<int64_t>(s.decisions);
    w.Put<int64_t>(s.appends);
    const float* b = block(static_cast<int32_t>(h));
    for (int64_t i = 0; i < stride_; ++i) w.Put<float>(b[i]);
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> State::Deserialize(std::string_view in, DmcMode mode,
                                                        const KvGeometry& geometry) {
  if (in.size() < kHeaderBytes) {
    return Bad(
        absl::StrCat("truncated (", in.size(), " bytes, the header alone has ", kHeaderBytes, ")"));
  }
  Reader r(in);
  if (r.Get<uint32_t>() != kStateMagic) return Bad("not a DMC state (bad magic)");
  const uint16_t version = r.Get<uint16_t>();
  if (version != kStateVersion) {
    return Bad(
        absl::StrCat("unsupported version ", version, " (this build reads ", kStateVersion, ")"));
  }
  const uint8_t saved_mode = r.Get<uint8_t>();
  if (saved_mode != (mode == DmcMode::kLearned ? 0 : 1)) {
    return Bad("saved by the other mode (learned vs free)");
  }
  r.Get<uint8_t>();
  const int32_t n_layer = r.Get<int32_t>();
  const int32_t n_head_kv = r.Get<int32_t>();
  const int32_t head_dim = r.Get<int32_t>();
  const int32_t window = r.Get<int32_t>();
  if (n_layer != geometry.n_layer || n_head_kv != geometry.n_head_kv ||
      head_dim != geometry.head_dim || head_dim != head_dim_) {
    return Bad(absl::StrCat("geometry ", n_layer, "x", n_head_kv, "x", head_dim,
                            " does not match the cache's ", geometry.n_layer, "x",
                            geometry.n_head_kv, "x", geometry.head_dim));
  }
  if (window != window_) {
    return Bad(absl::StrCat("window ", window, " does not match the policy's ", window_));
  }
  const uint64_t want =
      kHeaderBytes + static_cast<uint64_t>(scalars_.size()) * (kScalarBytes + 4 * stride_);
  if (in.size() != want) {
    return Bad(absl::StrCat("size ", in.size(), " bytes, expected ", want));
  }
  std::vector<HeadScalars> scalars(scalars_.size());
  std::vector<float> data(data_.size());
  std::vector<int32_t> slots(scalars_.size());
  for (size_t h = 0; h < scalars.size(); ++h) {
    HeadScalars& s = scalars[h];
    slots[h] = r.Get<int32_t>();
    s.run_len = r.Get<int32_t>();
    s.win_ptr = r.Get<int32_t>();
    s.tokens = r.Get<int64_t>();
    s.w_sum = r.Get<float>();
    s.threshold = r.Get<double>();
    s.decisions = r.Get<int64_t>();
    s.appends = r.Get<int64_t>();
    for (int64_t i = 0; i < stride_; ++i) data[h * stride_ + i] = r.Get<float>();
    if (slots[h] < 0 || s.run_len < 0 || s.tokens < slots[h] || s.tokens < s.run_len ||
        (slots[h] == 0) != (s.tokens == 0) || s.win_ptr < 0 || s.win_ptr >= std::max(window_, 1) ||
        !std::isfinite(s.threshold) || s.appends < 0 || s.decisions < s.appends) {
      return Bad(absl::StrCat("head ", h, " holds inconsistent values (slots ", slots[h], ", run ",
                              s.run_len, ", window pointer ", s.win_ptr, ")"));
    }
  }
  scalars_ = std::move(scalars);
  data_ = std::move(data);
  return slots;
}

}  // namespace kvasir::kvcache::dmc
