// Row and element-wise operations of the forward pass: RmsNorm, Rope, Softmax, SiluMul, Add and
// MergeAttention, with their references. The fast versions call the active level's function
// (Kernels()); the scalar level's functions are here.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/base/check.h"
#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"

namespace kvasir::kernels::cpu {
namespace {

constexpr int kMaxRot = 1024;

// cos and sin of the n_rot / 2 angles of position `pos`: cos at [j], sin at [n_rot / 2 + j].
// Angles are computed in double: pos * base^(-2j / n_rot) reaches thousands of radians.
void RopeAngles(int32_t pos, int n_rot, float freq_base, float* cos_sin) {
  const int half = n_rot / 2;
  for (int j = 0; j < half; ++j) {
    const double theta =
        static_cast<double>(pos) * std::pow(static_cast<double>(freq_base), -2.0 * j / n_rot);
    cos_sin[j] = static_cast<float>(std::cos(theta));
    cos_sin[half + j] = static_cast<float>(std::sin(theta));
  }
}

}  // namespace

namespace scalar {

void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * dim;
    float* oi = out + i * dim;
    float ss = 0.0f;
    for (int64_t c = 0; c < dim; ++c) ss += xi[c] * xi[c];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    for (int64_t c = 0; c < dim; ++c) oi[c] = xi[c] * inv * weight[c];
  }
}

void RopeToken(float* x, int n_heads, int head_dim, int n_rot, const float* cos_sin,
               RopeLayout layout) {
  const int half = n_rot / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + static_cast<int64_t>(h) * head_dim;
    for (int j = 0; j < half; ++j) {
      const int i0 = layout == RopeLayout::kAdjacentPairs ? 2 * j : j;
      const int i1 = layout == RopeLayout::kAdjacentPairs ? 2 * j + 1 : j + half;
      const float c = cos_sin[j], s = cos_sin[half + j];
      const float x0 = v[i0], x1 = v[i1];
      v[i0] = x0 * c - x1 * s;
      v[i1] = x0 * s + x1 * c;
    }
  }
}

void Softmax(float* x, int64_t n) {
  float max = x[0];
  for (int64_t i = 1; i < n; ++i) max = std::max(max, x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void Add(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace scalar

void RmsNormRef(const float* x, const float* weight, int64_t n, int64_t dim, float eps,
                float* out) {
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0.0;
    for (int64_t c = 0; c < dim; ++c) ss += static_cast<double>(x[i * dim + c]) * x[i * dim + c];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(dim) + eps);
    for (int64_t c = 0; c < dim; ++c) {
      out[i * dim + c] = static_cast<float>(x[i * dim + c] * inv * weight[c]);
    }
  }
}

void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
  Kernels().rms_norm(x, weight, n, dim, eps, out);
}

void RopeRef(float* x, int64_t n_tokens, int64_t token_stride, int n_heads, int head_dim, int n_rot,
             const int32_t* pos, float freq_base, RopeLayout layout) {
  KVASIR_CHECK(n_rot >= 0 && n_rot <= head_dim && n_rot % 2 == 0);
  const int half = n_rot / 2;
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + t * token_stride + static_cast<int64_t>(h) * head_dim;
      for (int j = 0; j < half; ++j) {
        const double theta = pos[t] * std::pow(static_cast<double>(freq_base), -2.0 * j / n_rot);
        const int i0 = layout == RopeLayout::kAdjacentPairs ? 2 * j : j;
        const int i1 = layout == RopeLayout::kAdjacentPairs ? 2 * j + 1 : j + half;
        const double x0 = v[i0], x1 = v[i1];
        v[i0] = static_cast<float>(x0 * std::cos(theta) - x1 * std::sin(theta));
        v[i1] = static_cast<float>(x0 * std::sin(theta) + x1 * std::cos(theta));
      }
    }
  }
}

// The angles of a position, computed once per thread and kept: every layer and head of a forward
// step rotates by the same positions, and pow/sincos in double precision cost more than the
// rotation itself. Positions past kMaxCachedPos are computed each time.
class RopeAngleCache {
 public:
  const float* Get(int32_t pos, int n_rot, float freq_base, float* scratch) {
    if (pos < 0 || pos >= kMaxCachedPos) {
      RopeAngles(pos, n_rot, freq_base, scratch);
      return scratch;
    }
    if (n_rot != n_rot_ || freq_base != freq_base_) {
      n_rot_ = n_rot;
      freq_base_ = freq_base;
      table_.clear();
      have_.clear();
    }
    if (static_cast<size_t>(pos) >= have_.size()) {
      const size_t size = std::max<size_t>(static_cast<size_t>(pos) + 1, have_.size() * 2);
      have_.resize(size, 0);
      table_.resize(size * static_cast<size_t>(n_rot));
    }
    float* entry = table_.data() + static_cast<size_t>(pos) * static_cast<size_t>(n_rot);
    if (!have_[static_cast<size_t>(pos)]) {
      RopeAngles(pos, n_rot, freq_base, entry);
      have_[static_cast<size_t>(pos)] = 1;
    }
    return entry;
  }

 private:
  static constexpr int32_t kMaxCachedPos = 1 << 17;
  int n_rot_ = -1;
  float freq_base_ = 0.0f;
  std::vector<float> table_;
  std::vector<uint8_t> have_;
};

void Rope(float* x, int64_t n_tokens, int64_t token_stride, int n_heads, int head_dim, int n_rot,
          const int32_t* pos, float freq_base, RopeLayout layout) {
  KVASIR_CHECK(n_rot >= 0 && n_rot <= head_dim && n_rot % 2 == 0 && n_rot <= kMaxRot);
  if (n_rot == 0) return;
  thread_local RopeAngleCache cache;
  float scratch[kMaxRot];
  const auto rope_token = Kernels().rope_token;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* cos_sin = cache.Get(pos[t], n_rot, freq_base, scratch);
    rope_token(x + t * token_stride, n_heads, head_dim, n_rot, cos_sin, layout);
  }
}

void SoftmaxRef(float* x, int64_t n) {
  if (n <= 0) return;
  double max = x[0];
  for (int64_t i = 1; i < n; ++i) max = std::max<double>(max, x[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(std::exp(x[i] - max) / sum);
}

void Softmax(float* x, int64_t n) {
  if (n <= 0) return;
  Kernels().softmax(x, n);
}

void SiluMulRef(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  Kernels().silu_mul(gate, up, n, out);
}

void Add(float* y, const float* x, int64_t n) { Kernels().add(y, x, n); }

void MergeAttention(float* out_a, float* lse_a, const float* out_b, const float* lse_b,
                    int64_t rows, int32_t head_dim) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    const float la = lse_a[r], lb = lse_b[r];
    float* oa = out_a + r * head_dim;
    const float* ob = out_b + r * head_dim;
    if (lb == kNegInf) continue;  // b saw no key: a unchanged
    if (la == kNegInf) {          // a saw no key: take b
      for (int32_t d = 0; d < head_dim; ++d) oa[d] = ob[d];
      lse_a[r] = lb;
      continue;
    }
    const float m = std::max(la, lb);
    const float wa = std::exp(la - m), wb = std::exp(lb - m);
    const float inv = 1.0f / (wa + wb);
    for (int32_t d = 0; d < head_dim; ++d) oa[d] = (wa * oa[d] + wb * ob[d]) * inv;
    lse_a[r] = m + std::log(wa + wb);
  }
}

}  // namespace kvasir::kernels::cpu
