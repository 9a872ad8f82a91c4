// The `lococo` policy (kvcache/lococo_policy.h): chunked attention with heavy-hitter scores, and
// the compression step (heavy hitters kept, the rest fused by a convolution-weighted blend).
#include "kvcache/lococo_policy.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"
#include "common/status_macros.h"
#include "kvcache/eviction_common.h"
#include "kvcache/policies.h"

namespace kvasir::kvcache {
namespace {

constexpr uint32_t kLococoMagic = 0x5343434c;  // "LCCS" little-endian
constexpr uint32_t kLococoVersion = 1;

LococoState* StateOf(SequenceKv& seq) { return dynamic_cast<LococoState*>(seq.state()); }
const LococoState* StateOf(const SequenceKv& seq) {
  return dynamic_cast<const LococoState*>(seq.state());
}

internal::StateHeader HeaderOf(const LococoState& state, int32_t slots, int32_t chunk) {
  return {.policy = "lococo",
          .article = "a",
          .magic = kLococoMagic,
          .version = kLococoVersion,
          .n_layer = state.n_layer(),
          .n_head_kv = state.n_head_kv(),
          .param_names = {"slots", "chunk"},
          .params = {slots, chunk}};
}

// Indices of the `k` largest scores[idx[i]] over i < idx.size() (ties: smaller i first), as
// positions into idx, in increasing order.
void TopK(std::span<const int32_t> idx, const float* scores, int32_t k, std::vector<int32_t>& out) {
  out.resize(idx.size());
  std::iota(out.begin(), out.end(), 0);
  std::partial_sort(out.begin(), out.begin() + k, out.end(), [&](int32_t a, int32_t b) {
    const float sa = scores[idx[a]], sb = scores[idx[b]];
    return sa > sb || (sa == sb && a < b);
  });
  out.resize(k);
  std::sort(out.begin(), out.end());
}

}  // namespace

LococoPolicy::LococoPolicy(Options o)
    : slots_(o.slots),
      chunk_(o.chunk),
      m_c_(o.slots / 2),
      weights_path_(std::move(o.weights_path)),
      weights_(std::move(o.weights)),
      lambda_(o.lambda) {}

std::string LococoPolicy::spec() const {
  std::string s = absl::StrCat("lococo:slots=", slots_, ",chunk=", chunk_);
  if (!weights_path_.empty()) absl::StrAppend(&s, ",weights=", weights_path_);
  if (lambda_) absl::StrAppend(&s, ",lambda=", *lambda_);
  return s;
}

float LococoPolicy::lambda(int32_t layer) const {
  if (weights_ == nullptr) return 0.0f;
  if (lambda_) return *lambda_;
  return weights_->layers[layer].lambda;
}

int64_t LococoPolicy::SlotsAfter(int64_t tokens) const {
  return std::min<int64_t>(tokens / chunk_ * chunk_, slots_) + tokens % chunk_;
}

std::unique_ptr<PolicyState> LococoPolicy::NewState(const KvGeometry& geometry) const {
  return std::make_unique<LococoState>(geometry.n_layer, geometry.n_head_kv);
}

void LococoPolicy::Compress(int32_t layer, int32_t hd, int32_t n, const float* keys,
                            const float* values, const float* hh, float* out_keys,
                            float* out_values) const {
  KVASIR_CHECK(n >= slots_);
  const int32_t m_h = slots_ - m_c_;
  thread_local std::vector<int32_t> all, top, kept, rest, sel;
  // 1) Heavy hitters: the m_h largest scores, kept verbatim in slot order.
  all.resize(n);
  std::iota(all.begin(), all.end(), 0);
  TopK(all, hh, m_h, top);
  kept.assign(top.begin(), top.end());
  rest.clear();
  for (int32_t s = 0, h = 0; s < n; ++s) {
    if (h < m_h && kept[h] == s) {
      ++h;
    } else {
      rest.push_back(s);
    }
  }
  for (int32_t i = 0; i < m_h; ++i) {
    std::copy_n(keys + static_cast<int64_t>(kept[i]) * hd, hd, out_keys + int64_t{i} * hd);
    std::copy_n(values + static_cast<int64_t>(kept[i]) * hd, hd, out_values + int64_t{i} * hd);
  }
  // 2) The residual one-hot rows: the m_c largest scores among the rest, in slot order.
  const int32_t n_rest = static_cast<int32_t>(rest.size());
  TopK(rest, hh, m_c_, sel);
  float* fk = out_keys + static_cast<int64_t>(m_h) * hd;
  float* fv = out_values + static_cast<int64_t>(m_h) * hd;
  const float lam = lambda(layer);
  if (lam == 0.0f) {
    for (int32_t m = 0; m < m_c_; ++m) {
      const int64_t src = static_cast<int64_t>(rest[sel[m]]) * hd;
      std::copy_n(keys + src, hd, fk + int64_t{m} * hd);
      std::copy_n(values + src, hd, fv + int64_t{m} * hd);
    }
    return;
  }
  // 3) Convolution weights over the rest: x [2 hd, S'] (key dims, then value dims), zero padded.
  const LococoLayerWeights& w = weights_->layers[layer];
  const int32_t kernel = weights_->kernel;
  const int32_t pad = (kernel - 1) / 2;
  const int32_t in_ch = 2 * hd;
  thread_local std::vector<float> x, y, row;
  x.resize(static_cast<size_t>(in_ch) * n_rest);
  for (int32_t s = 0; s < n_rest; ++s) {
    const float* k = keys + static_cast<int64_t>(rest[s]) * hd;
    const float* v = values + static_cast<int64_t>(rest[s]) * hd;
    for (int32_t c = 0; c < hd; ++c) {
      x[static_cast<size_t>(c) * n_rest + s] = k[c];
      x[static_cast<size_t>(hd + c) * n_rest + s] = v[c];
    }
  }
  y.resize(static_cast<size_t>(m_c_) * n_rest);
  row.resize(n_rest);
  for (int32_t m = 0; m < m_c_; ++m) {
    float* ym = y.data() + static_cast<size_t>(m) * n_rest;
    std::fill(ym, ym + n_rest, w.conv_bias[m]);
    for (int32_t c = 0; c < in_ch; ++c) {
      const float* xc = x.data() + static_cast<size_t>(c) * n_rest;
      const float* wmc = w.conv_weight.data() + (static_cast<size_t>(m) * in_ch + c) * kernel;
      for (int32_t t = 0; t < kernel; ++t) {
        // y[s] += w[t] * x[s + t - pad] for the s where the input index is inside [0, S').
        const int32_t shift = t - pad;
        const int32_t s_begin = std::max(0, -shift);
        const int32_t s_end = std::min(n_rest, n_rest - shift);
        const float wt = wmc[t];
        for (int32_t s = s_begin; s < s_end; ++s) ym[s] += wt * xc[s + shift];
      }
    }
    // ReLU, then softmax over the sequence.
    float max = 0.0f;
    for (int32_t s = 0; s < n_rest; ++s) {
      ym[s] = std::max(ym[s], 0.0f);
      max = std::max(max, ym[s]);
    }
    float sum = 0.0f;
    for (int32_t s = 0; s < n_rest; ++s) {
      ym[s] = std::exp(ym[s] - max);
      sum += ym[s];
    }
    // 4) The blend W = (1 - λ) onehot(sel_m) + λ softmax, applied to the rest's keys and values.
    const float inv = 1.0f / sum;
    for (int32_t s = 0; s < n_rest; ++s) row[s] = lam * (ym[s] * inv);
    row[sel[m]] += 1.0f - lam;
    float* ok = fk + int64_t{m} * hd;
    float* ov = fv + int64_t{m} * hd;
    std::fill(ok, ok + hd, 0.0f);
    std::fill(ov, ov + hd, 0.0f);
    for (int32_t s = 0; s < n_rest; ++s) {
      const float ws = row[s];
      const float* k = keys + static_cast<int64_t>(rest[s]) * hd;
      const float* v = values + static_cast<int64_t>(rest[s]) * hd;
      for (int32_t d = 0; d < hd; ++d) {
        ok[d] += ws * k[d];
        ov[d] += ws * v[d];
      }
    }
  }
}

absl::Status LococoPolicy::Reserve(KvCache& cache, SequenceKv& seq, int32_t n_new) const {
  const int64_t pending = seq.n_tokens() % chunk_;
  const bool compresses = pending + n_new >= chunk_;
  return internal::ReserveEveryTable(cache, seq, [&](const HeadTable& t) {
    const int32_t slots = static_cast<int32_t>(
        std::min<int64_t>(int64_t{t.length} + n_new, int64_t{slots_} + chunk_));
    // A compression rewrites every slot.
    return std::pair<int32_t, int32_t>(slots, compresses ? 0 : t.length);
  });
}

absl::Status LococoPolicy::Attend(KvCache& cache, const LayerInputs& in,
                                  kernels::Backend& backend) const {
  // On a backend the host cannot address (a GPU), the new rows are written by the backend, the
  // scores go through backend memory, and a compression stages the tables through host memory.
  const bool host = backend.host_addressable();
  const KvGeometry& g = cache.geometry();
  const int32_t n_kv = g.n_head_kv;
  const int32_t hd = g.head_dim;
  const int64_t max_len = int64_t{slots_} + chunk_;
  for (const SeqSpan& span : in.seqs) {
    const LococoState* state = StateOf(*span.seq);
    if (state == nullptr || state->n_layer() != g.n_layer || state->n_head_kv() != n_kv) {
      return absl::FailedPreconditionError("lococo: the sequence has no lococo state");
    }
    const int32_t pending = static_cast<int32_t>(span.seq->n_tokens() % chunk_);
    for (int32_t h = 0; h < n_kv; ++h) {
      const HeadTable& kt = span.seq->k(in.layer, h);
      const HeadTable& vt = span.seq->v(in.layer, h);
      const size_t hh_size = state->hh(in.layer, h).size();
      if (kt.length != vt.length || kt.length - pending < 0 || kt.length - pending > slots_ ||
          hh_size != static_cast<size_t>(pending > 0 ? kt.length : 0)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "lococo: layer ", in.layer, " head ", h, " tables hold ", kt.length, "/", vt.length,
            " slots and ", hh_size, " scores with ", pending, " tokens of the chunk pending"));
      }
      const int64_t need = std::min<int64_t>(int64_t{kt.length} + span.count, max_len);
      KVASIR_RETURN_IF_ERROR(internal::CheckReserved(cache, kt, vt, need));
    }
  }

  // Off the host, each (span, KV head) task's scores ([max_len]) live in a region of backend
  // memory taken once per call.
  BackendScratch call_scratch;
  float* device_scores = nullptr;
  if (!host) {
    BackendScratch& scratch = in.scratch != nullptr ? *in.scratch : call_scratch;
    device_scores =
        static_cast<float*>(scratch.Get(backend, sizeof(float) * max_len * in.seqs.size() * n_kv));
    if (device_scores == nullptr) {
      return absl::ResourceExhaustedError("out of backend memory for lococo's scores");
    }
  }

  internal::ForEachHeadTask(in, n_kv, backend,
                            [&](const SeqSpan& span, int32_t h, HeadTable& kt, HeadTable& vt) {
                              std::vector<float>& hh = StateOf(*span.seq)->hh(in.layer, h);
                              const int64_t task = (&span - in.seqs.data()) * n_kv + h;
                              const internal::HeadRows rows = internal::RowsOf(in, span, h, g);
                              internal::RotateRows(rows, g, backend);
                              const internal::TableAttention attention(cache, kt, vt);
                              thread_local std::vector<float> old_k, old_v, new_k, new_v;
                              const int64_t t0 = span.seq->n_tokens();
                              int32_t len = kt.length;
                              for (int32_t i = 0; i < span.count;) {
                                // The part of the span that falls in the current chunk.
                                const int32_t in_chunk = static_cast<int32_t>((t0 + i) % chunk_);
                                const int32_t n = std::min(span.count - i, chunk_ - in_chunk);
                                if (host) {
                                  for (int32_t j = 0; j < n; ++j) {
                                    cache.WriteSlot(kt, len + j, rows.k + (i + j) * rows.k_stride);
                                    cache.WriteSlot(vt, len + j, rows.v + (i + j) * rows.v_stride);
                                  }
                                } else {
                                  thread_local internal::SlotWritePlan writes;
                                  for (int32_t j = 0; j < n; ++j)
                                    writes.Add(cache, in, span, h, i + j, kt, vt, len + j);
                                  writes.Run(cache, in, backend);
                                }
                                hh.resize(static_cast<size_t>(len) + n, 0.0f);
                                kt.length = vt.length = len + n;
                                if (host) {
                                  attention.Run(backend, rows, i, n, len + n, len, hh.data());
                                } else {
                                  float* scores = device_scores + task * max_len;
                                  backend.Upload(scores, hh.data(), sizeof(float) * hh.size());
                                  attention.Run(backend, rows, i, n, len + n, len, scores);
                                  backend.Download(hh.data(), scores, sizeof(float) * hh.size());
                                }
                                len += n;
                                i += n;
                                if ((t0 + i) % chunk_ != 0) continue;
                                // The chunk is complete: compress if more than M slots are held;
                                // its scores are spent.
                                if (len > slots_) {
                                  old_k.resize(static_cast<size_t>(len) * hd);
                                  old_v.resize(static_cast<size_t>(len) * hd);
                                  new_k.resize(static_cast<size_t>(slots_) * hd);
                                  new_v.resize(static_cast<size_t>(slots_) * hd);
                                  cache.ReadSlots(kt, 0, len, old_k.data());
                                  cache.ReadSlots(vt, 0, len, old_v.data());
                                  Compress(in.layer, hd, len, old_k.data(), old_v.data(), hh.data(),
                                           new_k.data(), new_v.data());
                                  cache.WriteSlots(kt, 0, slots_, new_k.data());
                                  cache.WriteSlots(vt, 0, slots_, new_v.data());
                                  len = slots_;
                                  kt.length = vt.length = len;
                                }
                                hh.clear();
                              }
                            });
  return absl::OkStatus();
}

absl::Status LococoPolicy::EndStep(KvCache& cache, SequenceKv& seq, int32_t n_new) const {
  internal::TruncateEveryTable(cache, seq);
  return absl::OkStatus();
}

absl::Status LococoPolicy::SaveState(const SequenceKv& seq, std::string& out) const {
  const LococoState* state = StateOf(seq);
  if (state == nullptr) {
    return absl::FailedPreconditionError("lococo: the sequence has no lococo state");
  }
  internal::StateWriter w(out);
  internal::WriteStateHeader(w, HeaderOf(*state, slots_, chunk_));
  for (int32_t l = 0; l < state->n_layer(); ++l) {
    for (int32_t h = 0; h < state->n_head_kv(); ++h) {
      const std::vector<float>& hh = state->hh(l, h);
      w.I32(static_cast<int32_t>(hh.size()));
      w.F32s(hh);
    }
  }
  return absl::OkStatus();
}

std::optional<KvPolicy::StateLayout> LococoPolicy::state_layout() const {
  // The header, then per (layer, head) a count, then its scores.
  return StateLayout{
      .header_bytes = internal::kStateHeaderBytes,
      .n_head_kv_at = internal::kStateHeaderHeadsAt,
      .record_bytes = [](std::string_view rest) { return internal::CountedRecordBytes(rest, 4); }};
}

absl::Status LococoPolicy::LoadState(std::string_view in, SequenceKv& seq) const {
  LococoState* state = StateOf(seq);
  if (state == nullptr) {
    return absl::FailedPreconditionError("lococo: the sequence has no lococo state");
  }
  internal::StateReader r(in);
  KVASIR_RETURN_IF_ERROR(internal::ReadStateHeader(r, HeaderOf(*state, slots_, chunk_), spec()));
  const int32_t n_layer = state->n_layer(), n_kv = state->n_head_kv();
  std::vector<std::vector<float>> hhs(static_cast<size_t>(n_layer) * n_kv);
  for (std::vector<float>& hh : hhs) {
    int32_t n = 0;
    if (!r.I32(n) || n < 0 || n > slots_ + chunk_) {
      return absl::InvalidArgumentError("lococo state: bad score count");
    }
    hh.resize(n);
    if (!r.F32s(hh)) return absl::InvalidArgumentError("lococo state: truncated");
    for (float s : hh) {
      if (!std::isfinite(s)) return absl::InvalidArgumentError("lococo state: non-finite score");
    }
  }
  if (r.remaining() != 0) return absl::InvalidArgumentError("lococo state: trailing bytes");
  for (int32_t l = 0; l < n_layer; ++l) {
    for (int32_t h = 0; h < n_kv; ++h) state->hh(l, h) = std::move(hhs[l * n_kv + h]);
  }
  return absl::OkStatus();
}

PolicyResult MakeLococoPolicy(PolicyArgs& args, const KvGeometry& geometry) {
  LococoPolicy::Options o;
  KVASIR_ASSIGN_OR_RETURN(o.slots, args.Int("slots", 128, 2, 1 << 20));
  KVASIR_ASSIGN_OR_RETURN(o.chunk, args.Int("chunk", 16, 1, 1 << 20));
  KVASIR_ASSIGN_OR_RETURN(o.weights_path, args.File("weights"));
  const bool has_lambda = args.Has("lambda");
  KVASIR_ASSIGN_OR_RETURN(double lambda, args.Float("lambda", 0.0, -1e6, 1e6));
  KVASIR_RETURN_IF_ERROR(args.Finish());
  if (has_lambda) o.lambda = static_cast<float>(lambda);
  if (o.weights_path.empty()) {
    if (has_lambda && lambda != 0.0) {
      return absl::InvalidArgumentError(
          "KV policy 'lococo': lambda other than 0 needs weights=FILE (the convolution)");
    }
  } else {
    KVASIR_ASSIGN_OR_RETURN(LococoWeights w, ReadLococoWeights(o.weights_path, geometry.n_layer,
                                                               geometry.head_dim, o.slots / 2));
    o.weights = std::make_shared<const LococoWeights>(std::move(w));
  }
  return std::make_shared<LococoPolicy>(std::move(o));
}

int64_t LococoPolicy::PlannedPages(const KvGeometry& geometry, int32_t page_size,
                                   int64_t n_tokens) const {
  return UniformTablePages(geometry, page_size,
                           std::min<int64_t>(n_tokens, int64_t{slots_} + chunk_));
}

}  // namespace kvasir::kvcache
