#include "worker/llama_weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/half.h"
#include "common/status_macros.h"

namespace kvasir::worker {
namespace {

absl::StatusOr<kernels::WeightView> Matrix(const model::ModelFiles& files, const std::string& name,
                                           int64_t rows, int64_t cols) {
  KVASIR_ASSIGN_OR_RETURN(model::TensorRef t, files.Tensor(name));
  if (t.rows != rows || t.cols != cols) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": shape [", t.rows, ", ", t.cols,
                                                   "], the config needs [", rows, ", ", cols, "]"));
  }
  kernels::WeightView w;
  w.type = t.type;
  w.data = t.data;
  w.rows = t.rows;
  w.cols = t.cols;
  w.row_bytes = t.row_bytes;
  return w;
}

// The bytes of a whole tensor and the part of them a rank uses ([used_begin, used_end); empty
// for a tensor it copied), to give the rest back once its part is paged in.
struct MappedPart {
  const uint8_t* begin;
  const uint8_t* end;
  const uint8_t* used_begin;
  const uint8_t* used_end;
};

// Rows [begin, end) of `w`: a view.
kernels::WeightView RowSlice(const kernels::WeightView& w, int64_t begin, int64_t end,
                             std::vector<MappedPart>& parts) {
  kernels::WeightView s = w;
  s.data = w.row(begin);
  s.rows = end - begin;
  parts.push_back({w.row(0), w.row(w.rows), w.row(begin), w.row(end)});
  return s;
}

// Columns [begin, end) of every row of `w`, copied into `owned` (then the mapping's pages of `w`
// are given back: only the slice stays resident).
absl::StatusOr<kernels::WeightView> ColumnSlice(const std::string& name,
                                                const kernels::WeightView& w, int64_t begin,
                                                int64_t end,
                                                std::vector<std::vector<uint8_t>>& owned,
                                                std::vector<MappedPart>& parts) {
  const int64_t block = DTypeBlockSize(w.type);
  if (begin % block != 0 || end % block != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": tensor-parallel ranks split its ", w.cols, " columns at ", begin, " and ", end,
        ", which do not fall on its ", std::string(DTypeName(w.type)), " blocks of ", block,
        " (a smaller tensor-parallel size, or another quantization, would)"));
  }
  const int64_t offset = DTypeRowBytes(w.type, begin);
  const int64_t bytes = DTypeRowBytes(w.type, end - begin);
  std::vector<uint8_t>& out = owned.emplace_back(static_cast<size_t>(bytes * w.rows));
  for (int64_t r = 0; r < w.rows; ++r) {
    std::memcpy(out.data() + r * bytes, w.row(r) + offset, static_cast<size_t>(bytes));
  }
  GiveBackMappedPages(w.row(0), w.row(w.rows));
  parts.push_back({w.row(0), w.row(w.rows), w.row(0), w.row(0)});
  kernels::WeightView s = w;
  s.data = out.data();
  s.cols = end - begin;
  s.row_bytes = bytes;
  return s;
}

absl::StatusOr<const float*> Vector(const model::ModelFiles& files, const std::string& name,
                                    int64_t n, std::vector<std::vector<float>>& owned) {
  KVASIR_ASSIGN_OR_RETURN(model::TensorRef t, files.Tensor(name));
  if (t.rows * t.cols != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": ", t.rows * t.cols, " elements, the config needs ", n));
  }
  std::vector<float>& out = owned.emplace_back(n);
  switch (t.type) {
    case DType::kF32:
      std::memcpy(out.data(), t.data, sizeof(float) * n);
      break;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = Fp16ToFp32(h);
      }
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = Bf16ToFp32(h);
      }
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": norm weights must be f32, f16 or bf16"));
  }
  return out.data();
}

void Prefault(const LlamaWeights& w, const LoadProgress& progress) {
  std::vector<const kernels::WeightView*> views = {&w.tok_embd};
  if (w.output.data != w.tok_embd.data) views.push_back(&w.output);
  for (const LayerWeights& l : w.layers) {
    for (const auto* v : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down}) views.push_back(v);
  }
  const int64_t page = sysconf(_SC_PAGESIZE);
  int64_t done = 0;
  volatile uint8_t sink = 0;
  for (const kernels::WeightView* v : views) {
    const int64_t bytes = v->rows * v->row_bytes;
    const auto* p = static_cast<const uint8_t*>(v->data);
    ::madvise(const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(
                  reinterpret_cast<uintptr_t>(p) & ~static_cast<uintptr_t>(page - 1))),
              bytes + page, MADV_WILLNEED);
    for (int64_t off = 0; off < bytes; off += page) sink = sink + p[off];
    done += bytes;
    if (progress) progress(done, w.bytes);
  }
  (void)sink;
}

}  // namespace

void GiveBackMappedPages(const void* begin, const void* end) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(begin) + page - 1) & ~(page - 1);
  const uintptr_t hi = reinterpret_cast<uintptr_t>(end) & ~(page - 1);
  if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

absl::StatusOr<LlamaWeights> BindLlamaWeights(const model::ModelFiles& files, bool prefault,
                                              const LoadProgress& progress,
                                              const model::ShardPlan* plan) {
  const model::ModelConfig& c = files.config();
  KVASIR_RETURN_IF_ERROR(c.Validate());
  model::ShardPlan whole;
  if (plan == nullptr) {
    KVASIR_ASSIGN_OR_RETURN(whole, model::PlanShard(c, 1, 0));
    plan = &whole;
  }
  const model::ShardPlan& p = *plan;
  LlamaWeights w;
  const int64_t hd = c.head_dim;
  const int64_t q_dim = static_cast<int64_t>(c.n_head) * hd;
  const int64_t kv_dim = static_cast<int64_t>(c.n_head_kv) * hd;
  KVASIR_ASSIGN_OR_RETURN(w.tok_embd, Matrix(files, "token_embd.weight", c.n_vocab, c.n_embd));
  KVASIR_ASSIGN_OR_RETURN(w.output_norm, Vector(files, "output_norm.weight", c.n_embd, w.owned));
  if (files.HasTensor("output.weight")) {
    KVASIR_ASSIGN_OR_RETURN(w.output, Matrix(files, "output.weight", c.n_vocab, c.n_embd));
  } else {
    w.output = w.tok_embd;
  }
  const bool tied = w.output.data == w.tok_embd.data;
  std::vector<MappedPart> parts;  // of a sharded rank's tensors
  w.tok_embd = RowSlice(w.tok_embd, p.vocab_begin, p.vocab_end, parts);
  w.output = tied ? w.tok_embd : RowSlice(w.output, p.vocab_begin, p.vocab_end, parts);
  w.bytes = w.tok_embd.rows * w.tok_embd.row_bytes;
  if (!tied) w.bytes += w.output.rows * w.output.row_bytes;
  for (int32_t i = 0; i < c.n_layer; ++i) {
    const std::string n = absl::StrCat("blk.", i, ".");
    LayerWeights l;
    KVASIR_ASSIGN_OR_RETURN(l.attn_norm, Vector(files, n + "attn_norm.weight", c.n_embd, w.owned));
    KVASIR_ASSIGN_OR_RETURN(l.wq, Matrix(files, n + "attn_q.weight", q_dim, c.n_embd));
    KVASIR_ASSIGN_OR_RETURN(l.wk, Matrix(files, n + "attn_k.weight", kv_dim, c.n_embd));
    KVASIR_ASSIGN_OR_RETURN(l.wv, Matrix(files, n + "attn_v.weight", kv_dim, c.n_embd));
    KVASIR_ASSIGN_OR_RETURN(l.wo, Matrix(files, n + "attn_output.weight", c.n_embd, q_dim));
    KVASIR_ASSIGN_OR_RETURN(l.ffn_norm, Vector(files, n + "ffn_norm.weight", c.n_embd, w.owned));
    KVASIR_ASSIGN_OR_RETURN(l.gate, Matrix(files, n + "ffn_gate.weight", c.n_ff, c.n_embd));
    KVASIR_ASSIGN_OR_RETURN(l.up, Matrix(files, n + "ffn_up.weight", c.n_ff, c.n_embd));
    KVASIR_ASSIGN_OR_RETURN(l.down, Matrix(files, n + "ffn_down.weight", c.n_embd, c.n_ff));
    if (p.sharded()) {
      l.wq = RowSlice(l.wq, p.head_begin * hd, p.head_end * hd, parts);
      l.wk = RowSlice(l.wk, p.kv_head_begin * hd, p.kv_head_end * hd, parts);
      l.wv = RowSlice(l.wv, p.kv_head_begin * hd, p.kv_head_end * hd, parts);
      l.gate = RowSlice(l.gate, p.ff_begin, p.ff_end, parts);
      l.up = RowSlice(l.up, p.ff_begin, p.ff_end, parts);
      KVASIR_ASSIGN_OR_RETURN(l.wo, ColumnSlice(n + "attn_output.weight", l.wo, p.head_begin * hd,
                                                p.head_end * hd, w.owned_slices, parts));
      KVASIR_ASSIGN_OR_RETURN(l.down, ColumnSlice(n + "ffn_down.weight", l.down, p.ff_begin,
                                                  p.ff_end, w.owned_slices, parts));
    }
    for (const auto* v : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down}) {
      w.bytes += v->rows * v->row_bytes;
    }
    w.layers.push_back(l);
  }
  if (prefault) Prefault(w, progress);
  if (p.sharded() && prefault) {
    // Paging in a slice maps its neighbours' pages too (the kernel's fault-around, from the page
    // cache other ranks filled): unmap what this rank does not use, so that it keeps only its
    // part resident. Its own pages are mapped now and are not faulted again.
    for (const MappedPart& m : parts) {
      if (m.used_begin == m.used_end) {
        GiveBackMappedPages(m.begin, m.end);
      } else {
        GiveBackMappedPages(m.begin, m.used_begin);
        GiveBackMappedPages(m.used_end, m.end);
      }
    }
  }
  return w;
}

}  // namespace kvasir::worker
