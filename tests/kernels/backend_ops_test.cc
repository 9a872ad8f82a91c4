// Every operation of kernels/backend.h on every backend present, against the scalar references
// on the CPU, the way ggml's test-backend-ops checks its backends: a case builds its inputs on
// the host, runs the operation on the backend (inputs uploaded, outputs downloaded) and on the
// reference, and compares. A backend is tested by adding it to Backends(); an operation by adding
// its cases to Cases(). A backend that is built but has no device here is skipped with its reason;
// an operation a backend does not support for a type (Backend::Supports) is skipped by name.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "common/base/dtype.h"
#include "common/base/thread_pool.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/ops.h"
#include "tests/kernels/kernel_test_util.h"

#if KVASIR_HAVE_CUDA_BACKEND
#include "kernels/cuda/cuda_backend.h"
#endif

namespace kvasir::kernels {
namespace {

using cpu::testing::GaussianFloats;
using cpu::testing::RandomFloats;

// ---- Backends ----------------------------------------------------------------------------------

// The backend of `name`, or nullptr and the reason it is not here.
std::unique_ptr<Backend> MakeBackend(const std::string& name, std::string* why_not) {
  if (name == "cpu") {
    static ThreadPool pool(2);
    return cpu::NewCpuBackend(&pool);
  }
#if KVASIR_HAVE_CUDA_BACKEND
  if (name == "cuda") return cuda::NewCudaBackend(0, why_not);
#endif
  *why_not = "unknown backend " + name;
  return nullptr;
}

std::vector<std::string> Backends() {
  std::vector<std::string> names = {"cpu"};
#if KVASIR_HAVE_CUDA_BACKEND
  names.push_back("cuda");
#endif
  return names;
}

// Backend memory holding a copy of host data (or uninitialized when data is null).
class DeviceBuffer {
 public:
  DeviceBuffer(Backend& b, const void* data, size_t bytes) : b_(b), buf_(b) {
    EXPECT_TRUE(buf_.Reserve(bytes));
    if (data != nullptr) b.Upload(buf_.as(), data, bytes);
  }
  template <typename T>
  DeviceBuffer(Backend& b, const std::vector<T>& v)
      : DeviceBuffer(b, v.data(), sizeof(T) * v.size()) {}

  template <typename T>
  T* as() const {
    return buf_.as<T>();
  }
  template <typename T>
  std::vector<T> Read() const {
    std::vector<T> out(buf_.bytes() / sizeof(T));
    b_.Download(out.data(), buf_.as(), buf_.bytes());
    return out;
  }

 private:
  Backend& b_;
  BackendBuffer buf_;
};

// ---- Cases -------------------------------------------------------------------------------------

// How close a backend's output must be to the reference: every element within
// atol + rtol * |ref| (infinities must match exactly), and the normalized mean squared error
// sum (a - r)^2 / sum r^2 at most nmse (0: not checked).
struct Tolerance {
  double atol = 0;
  double rtol = 0;
  double nmse = 0;
};

struct Case {
  std::string name;
  Op op;
  DType type = DType::kF32;  // what Supports is asked for
  Tolerance tol;
  std::function<std::vector<float>(Backend&)> run;  // the backend's outputs, flattened
  std::function<std::vector<float>()> ref;          // the reference outputs, same layout
};

std::vector<uint8_t> QuantizedRows(DType type, const std::vector<float>& x, int64_t rows,
                                   int64_t cols) {
  const int64_t row_bytes = DTypeRowBytes(type, cols);
  std::vector<uint8_t> out(row_bytes * rows);
  for (int64_t r = 0; r < rows; ++r) {
    cpu::QuantizeRow(type, x.data() + r * cols, cols, out.data() + r * row_bytes);
  }
  return out;
}

WeightView View(DType type, const void* data, int64_t rows, int64_t cols) {
  return WeightView{type, data, rows, cols, DTypeRowBytes(type, cols)};
}

const DType kWeightTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ4_0,
                              DType::kQ4_1, DType::kQ8_0, DType::kQ4_K, DType::kQ6_K};

void AddGetRowsCases(std::vector<Case>& cases) {
  for (DType type : kWeightTypes) {
    const int64_t rows = 37, cols = 512;
    auto w = std::make_shared<std::vector<uint8_t>>(
        QuantizedRows(type, GaussianFloats(rows * cols, 11), rows, cols));
    auto ids = std::make_shared<std::vector<int32_t>>(std::vector<int32_t>{3, 0, 36, 3, 17});
    const int64_t n = static_cast<int64_t>(ids->size());
    cases.push_back({"get_rows/" + std::string(DTypeName(type)),
                     Op::kGetRows,
                     type,
                     {0, 0, 0},
                     [=](Backend& b) {
                       DeviceBuffer dw(b, *w), out(b, nullptr, sizeof(float) * n * cols);
                       b.GetRows(View(type, dw.as<void>(), rows, cols), ids->data(), n,
                                 out.as<float>());
                       return out.Read<float>();
                     },
                     [=] {
                       std::vector<float> out(n * cols);
                       cpu::GetRows(View(type, w->data(), rows, cols), ids->data(), n, out.data());
                       return out;
                     }});
  }
}

void AddRowOpCases(std::vector<Case>& cases) {
  const int64_t n = 7, dim = 576;
  auto x = std::make_shared<std::vector<float>>(GaussianFloats(n * dim, 21, 2.0f));
  auto y = std::make_shared<std::vector<float>>(GaussianFloats(n * dim, 22, 2.0f));
  auto wt = std::make_shared<std::vector<float>>(RandomFloats(dim, 23, 0.5f, 1.5f));
  cases.push_back({"rms_norm",
                   Op::kRmsNorm,
                   DType::kF32,
                   {1e-5, 1e-5, 0},
                   [=](Backend& b) {
                     DeviceBuffer dx(b, *x), dw(b, *wt), out(b, nullptr, sizeof(float) * n * dim);
                     b.RmsNorm(dx.as<float>(), dw.as<float>(), n, dim, 1e-5f, out.as<float>());
                     return out.Read<float>();
                   },
                   [=] {
                     std::vector<float> out(n * dim);
                     cpu::RmsNormRef(x->data(), wt->data(), n, dim, 1e-5f, out.data());
                     return out;
                   }});
  cases.push_back({"silu_mul",
                   Op::kSiluMul,
                   DType::kF32,
                   {1e-5, 1e-5, 0},
                   [=](Backend& b) {
                     DeviceBuffer dg(b, *x), du(b, *y), out(b, nullptr, sizeof(float) * n * dim);
                     b.SiluMul(dg.as<float>(), du.as<float>(), n * dim, out.as<float>());
                     return out.Read<float>();
                   },
                   [=] {
                     std::vector<float> out(n * dim);
                     cpu::SiluMulRef(x->data(), y->data(), n * dim, out.data());
                     return out;
                   }});
  cases.push_back({"add",
                   Op::kAdd,
                   DType::kF32,
                   {0, 0, 0},
                   [=](Backend& b) {
                     DeviceBuffer dy(b, *y), dx(b, *x);
                     b.Add(dy.as<float>(), dx.as<float>(), n * dim);
                     return dy.Read<float>();
                   },
                   [=] {
                     std::vector<float> out = *y;
                     for (size_t i = 0; i < out.size(); ++i) out[i] += (*x)[i];
                     return out;
                   }});
}

void AddRopeCases(std::vector<Case>& cases) {
  struct Shape {
    const char* name;
    int n_heads, head_dim, n_rot;
    RopeLayout layout;
  };
  const Shape shapes[] = {{"adjacent", 4, 64, 64, RopeLayout::kAdjacentPairs},
                          {"half_split", 3, 128, 128, RopeLayout::kHalfSplit},
                          {"partial", 2, 64, 32, RopeLayout::kHalfSplit}};
  for (const Shape& s : shapes) {
    const int64_t n_tokens = 5, stride = s.n_heads * s.head_dim + 8;
    auto x = std::make_shared<std::vector<float>>(GaussianFloats(n_tokens * stride, 31));
    auto pos = std::make_shared<std::vector<int32_t>>(std::vector<int32_t>{0, 1, 77, 4095, 30000});
    cases.push_back({std::string("rope/") + s.name,
                     Op::kRope,
                     DType::kF32,
                     {2e-4, 1e-4, 0},
                     [=](Backend& b) {
                       DeviceBuffer dx(b, *x);
                       b.Rope(dx.as<float>(), n_tokens, stride, s.n_heads, s.head_dim, s.n_rot,
                              pos->data(), 10000.0f, s.layout);
                       return dx.Read<float>();
                     },
                     [=] {
                       std::vector<float> out = *x;
                       cpu::RopeRef(out.data(), n_tokens, stride, s.n_heads, s.head_dim, s.n_rot,
                                    pos->data(), 10000.0f, s.layout);
                       return out;
                     }});
  }
}

void AddMatMulCases(std::vector<Case>& cases) {
  for (DType type : kWeightTypes) {
    for (int64_t n : {1, 5, 33}) {
      const int64_t rows = 96, cols = 512;
      auto w = std::make_shared<std::vector<uint8_t>>(
          QuantizedRows(type, GaussianFloats(rows * cols, 41), rows, cols));
      auto x = std::make_shared<std::vector<float>>(GaussianFloats(n * cols, 42));
      const bool quantized = DTypeBlockSize(type) > 1;
      // Quantized weights may round x to 8 bits (the CPU) and float weights to bf16 (CUDA).
      const Tolerance tol{0, 0, quantized ? 2e-4 : 2e-5};
      cases.push_back({"mat_mul/" + std::string(DTypeName(type)) + "/n" + std::to_string(n),
                       Op::kMatMul, type, tol,
                       [=](Backend& b) {
                         DeviceBuffer dw(b, *w), dx(b, *x), y(b, nullptr, sizeof(float) * n * rows);
                         b.MatMul(View(type, dw.as<void>(), rows, cols), dx.as<float>(), n, cols,
                                  y.as<float>(), rows);
                         return y.Read<float>();
                       },
                       [=] {
                         std::vector<float> y(n * rows);
                         cpu::MatMulRef(View(type, w->data(), rows, cols), x->data(), n, cols,
                                        y.data(), rows);
                         return y;
                       }});
    }
  }
}

// A page pool of random slots and page tables over it, for the slot and attention cases.
struct PoolFixture {
  int32_t page_size = 16, head_dim = 64;
  DType dtype = DType::kF32;
  int32_t pages = 0;
  std::vector<uint8_t> bytes;  // the pool on the host
  // Row r's pages, in slot order, and its length.
  std::vector<std::vector<int32_t>> rows;
  std::vector<int32_t> lengths;
  std::vector<int32_t> indptr, indices, last_page_len;

  int64_t elem_bytes() const { return dtype == DType::kF16 ? 2 : 4; }
  SlotPool slots(void* data) const { return SlotPool{data, page_size, head_dim, dtype}; }
  PagedKvView view(const void* pool) const {
    PagedKvView v;
    v.num_rows = static_cast<int32_t>(rows.size());
    v.indptr = indptr.data();
    v.indices = indices.data();
    v.last_page_len = last_page_len.data();
    v.page_size = page_size;
    v.head_dim = head_dim;
    v.dtype = dtype;
    v.pool = pool;
    return v;
  }
};

// Rows of the given lengths over shuffled pages of a random pool.
std::shared_ptr<PoolFixture> MakePool(DType dtype, int32_t head_dim,
                                      const std::vector<int32_t>& lengths, uint32_t seed) {
  auto f = std::make_shared<PoolFixture>();
  f->dtype = dtype;
  f->head_dim = head_dim;
  f->lengths = lengths;
  int32_t total = 0;
  for (int32_t len : lengths) total += (len + f->page_size - 1) / f->page_size;
  f->pages = total + 3;  // a few pages no row uses
  std::vector<int32_t> order(f->pages);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(seed));
  const int64_t elems = int64_t{f->pages} * f->page_size * head_dim;
  const std::vector<float> values = GaussianFloats(elems, seed + 1);
  f->bytes.resize(elems * f->elem_bytes());
  if (dtype == DType::kF16) {
    cpu::ConvertF32ToF16(values.data(), elems, reinterpret_cast<uint16_t*>(f->bytes.data()));
  } else {
    std::memcpy(f->bytes.data(), values.data(), f->bytes.size());
  }
  f->indptr.push_back(0);
  size_t next = 0;
  for (int32_t len : lengths) {
    const int32_t n_pages = (len + f->page_size - 1) / f->page_size;
    std::vector<int32_t> row(order.begin() + next, order.begin() + next + n_pages);
    next += n_pages;
    f->indices.insert(f->indices.end(), row.begin(), row.end());
    f->indptr.push_back(static_cast<int32_t>(f->indices.size()));
    f->last_page_len.push_back(n_pages == 0 ? 0 : len - (n_pages - 1) * f->page_size);
    f->rows.push_back(std::move(row));
  }
  return f;
}

// Global index of slot s of row r.
int64_t GlobalSlot(const PoolFixture& f, int32_t r, int32_t s) {
  return int64_t{f.rows[r][s / f.page_size]} * f.page_size + s % f.page_size;
}

// The pool's bytes read back as f32 values (for comparing pools).
std::vector<float> PoolAsFloats(const PoolFixture& f, const std::vector<uint8_t>& bytes) {
  const int64_t elems = static_cast<int64_t>(bytes.size()) / f.elem_bytes();
  std::vector<float> out(elems);
  if (f.dtype == DType::kF16) {
    cpu::ConvertF16ToF32(reinterpret_cast<const uint16_t*>(bytes.data()), elems, out.data());
  } else {
    std::memcpy(out.data(), bytes.data(), bytes.size());
  }
  return out;
}

void AddSlotCases(std::vector<Case>& cases) {
  for (DType dtype : {DType::kF32, DType::kF16}) {
    const std::string suffix = dtype == DType::kF16 ? "/f16" : "/f32";
    auto f = MakePool(dtype, 64, {40, 17, 64}, 51);
    // Write 9 rows of a token-major buffer (2 heads of 64) into scattered slots.
    auto src = std::make_shared<std::vector<float>>(GaussianFloats(9 * 128, 52));
    auto offsets = std::make_shared<std::vector<int64_t>>();
    auto dst = std::make_shared<std::vector<int64_t>>();
    for (int32_t i = 0; i < 9; ++i) {
      offsets->push_back(int64_t{i} * 128 + (i % 2) * 64);
      dst->push_back(GlobalSlot(*f, i % 3, (i * 7) % f->lengths[i % 3]));
    }
    std::sort(dst->begin(), dst->end());
    dst->erase(std::unique(dst->begin(), dst->end()), dst->end());
    offsets->resize(dst->size());
    auto writes = [=](void* pool, const float* s) {
      return SlotWrites{f->slots(pool), s, offsets->data(), dst->data(),
                        static_cast<int64_t>(dst->size())};
    };
    cases.push_back({"write_slots" + suffix,
                     Op::kWriteSlots,
                     dtype,
                     {0, 0, 0},
                     [=](Backend& b) {
                       DeviceBuffer pool(b, f->bytes), s(b, *src);
                       b.WriteSlots(writes(pool.as<void>(), s.as<float>()));
                       return PoolAsFloats(*f, pool.Read<uint8_t>());
                     },
                     [=] {
                       std::vector<uint8_t> pool = f->bytes;
                       cpu::WriteSlotsRef(writes(pool.data(), src->data()));
                       return PoolAsFloats(*f, pool);
                     }});

    // Mixes: DMC's merge into the last slot (old slot and a new row), LoCoCo's fusion of a row's
    // slots into its first slots (outputs overwrite sources), and a plain copy.
    auto rows = std::make_shared<std::vector<float>>(GaussianFloats(2 * 64, 53));
    auto dst_slots = std::make_shared<std::vector<int64_t>>();
    auto term_begin = std::make_shared<std::vector<int64_t>>(std::vector<int64_t>{0});
    auto src_slots = std::make_shared<std::vector<int64_t>>();
    auto row_offsets = std::make_shared<std::vector<int64_t>>();
    auto weights = std::make_shared<std::vector<float>>();
    auto term = [&](int64_t slot, int64_t row_offset, float w) {
      src_slots->push_back(slot);
      row_offsets->push_back(row_offset);
      weights->push_back(w);
    };
    dst_slots->push_back(GlobalSlot(*f, 1, 16));  // merge: 0.75 old + 0.25 new row
    term(GlobalSlot(*f, 1, 16), 0, 0.75f);
    term(-1, 64, 0.25f);
    term_begin->push_back(static_cast<int64_t>(src_slots->size()));
    for (int32_t m = 0; m < 4; ++m) {  // fusion: slot m of row 0 = a blend of slots 0..39
      dst_slots->push_back(GlobalSlot(*f, 0, m));
      for (int32_t s = 0; s < 40; ++s) term(GlobalSlot(*f, 0, s), 0, (s == m * 9 ? 0.8f : 0.005f));
      term_begin->push_back(static_cast<int64_t>(src_slots->size()));
    }
    dst_slots->push_back(GlobalSlot(*f, 2, 63));  // copy
    term(GlobalSlot(*f, 2, 5), 0, 1.0f);
    term_begin->push_back(static_cast<int64_t>(src_slots->size()));
    auto mix = [=](void* pool, const float* r) {
      return SlotMix{f->slots(pool),    static_cast<int64_t>(dst_slots->size()),
                     dst_slots->data(), term_begin->data(),
                     src_slots->data(), row_offsets->data(),
                     weights->data(),   r};
    };
    const double atol = dtype == DType::kF16 ? 2e-3 : 1e-5;
    cases.push_back({"mix_slots" + suffix,
                     Op::kMixSlots,
                     dtype,
                     {atol, 1e-3, 0},
                     [=](Backend& b) {
                       DeviceBuffer pool(b, f->bytes), r(b, *rows);
                       b.MixSlots(mix(pool.as<void>(), r.as<float>()));
                       return PoolAsFloats(*f, pool.Read<uint8_t>());
                     },
                     [=] {
                       std::vector<uint8_t> pool = f->bytes;
                       cpu::MixSlotsRef(mix(pool.data(), rows->data()));
                       return PoolAsFloats(*f, pool);
                     }});
  }
}

// Attention items over one pool: decode tokens of rows of different lengths, a prefill chunk
// (causal), a span that starts inside the table (k_begin), an empty row, with lse and col_sums.
// The `few` shapes have fewer items than twice the CPU pool's threads, no col_sums and lse only
// for single queries: the CPU backend then runs one task per query head.
void AddAttentionCases(std::vector<Case>& cases) {
  struct Shape {
    const char* name;
    DType dtype;
    int32_t head_dim, group;
    std::vector<int32_t> lengths;
    bool few = false;
  };
  const Shape shapes[] = {
      {"f32_d64_g1", DType::kF32, 64, 1, {1, 16, 17, 100, 0}},
      {"f16_d64_g3", DType::kF16, 64, 3, {5, 33, 250, 64, 0}},
      {"f32_d128_g4", DType::kF32, 128, 4, {700, 48, 2, 129, 0}},
      {"f16_d128_g8_long", DType::kF16, 128, 8, {4100, 31, 520, 8, 0}},
      // Heads that are not a multiple of 32, and the largest the CUDA kernel takes.
      {"f32_d80_g5", DType::kF32, 80, 5, {300, 40, 3, 96, 0}},
      {"f16_d256_g2", DType::kF16, 256, 2, {1500, 20, 33, 1, 0}},
      {"f16_d64_g3_few", DType::kF16, 64, 3, {300, 40, 17}, true},
      {"f32_d80_g5_few", DType::kF32, 80, 5, {500}, true},
  };
  for (const Shape& s : shapes) {
    auto f = MakePool(s.dtype, s.head_dim, s.lengths, 61);
    const int32_t hd = s.head_dim, g = s.group;
    const int32_t n_rows = static_cast<int32_t>(s.lengths.size());
    // Item r: row r's keys and values; item 1 is a prefill chunk of 6 tokens at the table's end,
    // item 2 reads its keys from slot 1 on.
    struct Layout {
      std::vector<AttentionItem> items;
      int64_t q_floats = 0, out_floats = 0, lse_floats = 0, col_floats = 0;
    };
    auto layout = std::make_shared<Layout>();
    for (int32_t r = 0; r < n_rows; ++r) {
      AttentionItem it;
      const int32_t len = s.lengths[r];
      it.n_q = (r == 1) ? std::min(6, len) : 1;
      it.k_row = r;
      it.v_row = r;
      it.k_begin = (r == 2 && len > 1) ? 1 : 0;
      it.v_begin = it.k_begin;
      it.n_keys = len - it.k_begin;
      it.causal_base = (r == 1) ? it.n_keys - it.n_q : -1;
      it.q_token_stride = int64_t{g} * hd + 4;
      it.out_token_stride = int64_t{g} * hd;
      // Offsets for now (-1: none); pointers are filled in per run.
      const bool lse = !s.few || it.n_q == 1, col = !s.few;
      it.q = reinterpret_cast<float*>(layout->q_floats);
      it.out = reinterpret_cast<float*>(layout->out_floats);
      it.lse = reinterpret_cast<float*>(lse ? layout->lse_floats : -1);
      it.col_sums = reinterpret_cast<float*>(col ? layout->col_floats : -1);
      layout->q_floats += it.n_q * it.q_token_stride;
      layout->out_floats += it.n_q * it.out_token_stride;
      if (lse) layout->lse_floats += int64_t{it.n_q} * g;
      if (col) layout->col_floats += it.n_keys;
      layout->items.push_back(it);
    }
    auto q = std::make_shared<std::vector<float>>(GaussianFloats(layout->q_floats, 62));
    auto col0 = std::make_shared<std::vector<float>>(RandomFloats(layout->col_floats, 63, 0, 1));
    // Items with their offsets turned into pointers into the given buffers.
    auto bind = [=](float* qp, float* outp, float* lsep, float* colp) {
      std::vector<AttentionItem> items = layout->items;
      for (AttentionItem& it : items) {
        it.q = qp + reinterpret_cast<intptr_t>(it.q);
        it.out = outp + reinterpret_cast<intptr_t>(it.out);
        const intptr_t lse = reinterpret_cast<intptr_t>(it.lse);
        const intptr_t col = reinterpret_cast<intptr_t>(it.col_sums);
        it.lse = lse < 0 ? nullptr : lsep + lse;
        it.col_sums = col < 0 ? nullptr : colp + col;
      }
      return items;
    };
    auto batch = [=](const void* pool, std::span<const AttentionItem> items) {
      AttentionBatch b;
      b.k = f->view(pool);
      b.v = f->view(pool);
      b.group = g;
      b.head_dim = hd;
      b.scale = 1.0f / std::sqrt(static_cast<float>(hd));
      b.items = items;
      return b;
    };
    // out, then lse, then col_sums, flattened.
    auto join = [](std::vector<float> a, const std::vector<float>& b, const std::vector<float>& c) {
      a.insert(a.end(), b.begin(), b.end());
      a.insert(a.end(), c.begin(), c.end());
      return a;
    };
    const double atol = s.dtype == DType::kF16 ? 2e-4 : 5e-5;
    cases.push_back({std::string("attention/") + s.name,
                     Op::kAttention,
                     s.dtype,
                     {atol, 1e-4, 0},
                     [=](Backend& b) {
                       DeviceBuffer pool(b, f->bytes), dq(b, *q), col(b, *col0);
                       DeviceBuffer out(b, nullptr, sizeof(float) * layout->out_floats);
                       DeviceBuffer lse(b, nullptr, sizeof(float) * layout->lse_floats);
                       const std::vector<AttentionItem> items =
                           bind(dq.as<float>(), out.as<float>(), lse.as<float>(), col.as<float>());
                       b.Attention(batch(pool.as<void>(), items));
                       return join(out.Read<float>(), lse.Read<float>(), col.Read<float>());
                     },
                     [=] {
                       std::vector<float> qh = *q, out(layout->out_floats), lse(layout->lse_floats),
                                          col = *col0;
                       const std::vector<AttentionItem> items =
                           bind(qh.data(), out.data(), lse.data(), col.data());
                       cpu::AttentionBatchRef(batch(f->bytes.data(), items));
                       return join(out, lse, col);
                     }});
  }
}

void AddMergeAttentionCases(std::vector<Case>& cases) {
  const int64_t rows = 6;
  const int32_t hd = 64;
  auto a = std::make_shared<std::vector<float>>(GaussianFloats(rows * hd, 71));
  auto b_out = std::make_shared<std::vector<float>>(GaussianFloats(rows * hd, 72));
  const float inf = std::numeric_limits<float>::infinity();
  // Row 4 has only the second part, row 5 neither.
  auto lse_a = std::make_shared<std::vector<float>>(
      std::vector<float>{0.5f, 3.0f, -2.0f, 10.0f, -inf, -inf});
  auto lse_b = std::make_shared<std::vector<float>>(
      std::vector<float>{0.5f, -1.0f, 4.0f, 11.5f, 2.0f, -inf});
  for (int64_t i = 0; i < hd; ++i) (*a)[5 * hd + i] = 0.0f;
  for (int64_t i = 0; i < hd; ++i) (*b_out)[5 * hd + i] = 0.0f;
  cases.push_back({"merge_attention",
                   Op::kMergeAttention,
                   DType::kF32,
                   {1e-5, 1e-5, 0},
                   [=](Backend& b) {
                     DeviceBuffer da(b, *a), dla(b, *lse_a), db(b, *b_out), dlb(b, *lse_b);
                     b.MergeAttention(da.as<float>(), dla.as<float>(), db.as<float>(),
                                      dlb.as<float>(), rows, hd);
                     std::vector<float> out = da.Read<float>();
                     const std::vector<float> lse = dla.Read<float>();
                     out.insert(out.end(), lse.begin(), lse.end());
                     return out;
                   },
                   [=] {
                     std::vector<float> out = *a, lse = *lse_a;
                     cpu::MergeAttention(out.data(), lse.data(), b_out->data(), lse_b->data(), rows,
                                         hd);
                     out.insert(out.end(), lse.begin(), lse.end());
                     return out;
                   }});
}

void AddSamplingCases(std::vector<Case>& cases) {
  const int64_t rows = 5, vocab = 49152;
  auto logits = std::make_shared<std::vector<float>>(GaussianFloats(rows * vocab, 81, 3.0f));
  // Ties: row 1's maximum twice, row 2's top values repeated.
  (*logits)[1 * vocab + 100] = 50.0f;
  (*logits)[1 * vocab + 40000] = 50.0f;
  for (int64_t i = 0; i < 8; ++i) (*logits)[2 * vocab + 5000 * i + 7] = 20.0f;
  auto ints_as_floats = [](const std::vector<int32_t>& v) {
    return std::vector<float>(v.begin(), v.end());
  };
  cases.push_back({"argmax",
                   Op::kArgmax,
                   DType::kF32,
                   {0, 0, 0},
                   [=](Backend& b) {
                     DeviceBuffer dl(b, *logits);
                     std::vector<int32_t> ids(rows);
                     b.Argmax(dl.as<float>(), rows, vocab, ids.data());
                     return ints_as_floats(ids);
                   },
                   [=] {
                     std::vector<int32_t> ids(rows);
                     cpu::ArgmaxRef(logits->data(), rows, vocab, ids.data());
                     return ints_as_floats(ids);
                   }});
  const int32_t k = 40;
  cases.push_back({"top_k",
                   Op::kTopK,
                   DType::kF32,
                   {0, 0, 0},
                   [=](Backend& b) {
                     DeviceBuffer dl(b, *logits);
                     std::vector<int32_t> ids(rows * k);
                     std::vector<float> values(rows * k);
                     b.TopK(dl.as<float>(), rows, vocab, k, values.data(), ids.data());
                     std::vector<float> out = ints_as_floats(ids);
                     out.insert(out.end(), values.begin(), values.end());
                     return out;
                   },
                   [=] {
                     std::vector<int32_t> ids(rows * k);
                     std::vector<float> values(rows * k);
                     cpu::TopKRef(logits->data(), rows, vocab, k, values.data(), ids.data());
                     std::vector<float> out = ints_as_floats(ids);
                     out.insert(out.end(), values.begin(), values.end());
                     return out;
                   }});
}

const std::vector<Case>& Cases() {
  static const std::vector<Case>* cases = [] {
    auto* c = new std::vector<Case>;
    AddGetRowsCases(*c);
    AddRowOpCases(*c);
    AddRopeCases(*c);
    AddMatMulCases(*c);
    AddSlotCases(*c);
    AddAttentionCases(*c);
    AddMergeAttentionCases(*c);
    AddSamplingCases(*c);
    return c;
  }();
  return *cases;
}

// ---- The test ----------------------------------------------------------------------------------

struct Param {
  std::string backend;
  size_t index = 0;  // into Cases()
};

// How gtest prints a parameter (in ctest's list too): "cuda attention/f16_d64_g3".
void PrintTo(const Param& p, std::ostream* os) { *os << p.backend << " " << Cases()[p.index].name; }

class BackendOpsTest : public ::testing::TestWithParam<Param> {};

TEST_P(BackendOpsTest, MatchesTheReference) {
  std::string why_not;
  std::unique_ptr<Backend> backend = MakeBackend(GetParam().backend, &why_not);
  if (backend == nullptr) GTEST_SKIP() << why_not;
  const Case& c = Cases()[GetParam().index];
  if (!backend->Supports(c.op, c.type)) {
    GTEST_SKIP() << backend->name() << " does not support " << OpName(c.op) << " for "
                 << DTypeName(c.type);
  }
  const std::vector<float> got = c.run(*backend);
  const std::vector<float> want = c.ref();
  ASSERT_EQ(got.size(), want.size());
  double err2 = 0, ref2 = 0;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i]) || std::isinf(got[i])) {
      if (got[i] != want[i] && ++bad <= 5) {
        ADD_FAILURE() << "[" << i << "] " << got[i] << " vs " << want[i];
      }
      continue;
    }
    const double d = static_cast<double>(got[i]) - want[i];
    err2 += d * d;
    ref2 += static_cast<double>(want[i]) * want[i];
    if (c.tol.nmse == 0 && !(std::abs(d) <= c.tol.atol + c.tol.rtol * std::abs(want[i])) &&
        ++bad <= 5) {
      ADD_FAILURE() << "[" << i << "] " << got[i] << " vs " << want[i];
    }
  }
  EXPECT_EQ(bad, 0) << "elements out of tolerance, of " << got.size();
  if (c.tol.nmse > 0) {
    EXPECT_LE(err2 / std::max(ref2, 1e-30), c.tol.nmse);
  }
}

std::vector<Param> AllParams() {
  std::vector<Param> params;
  for (const std::string& b : Backends()) {
    for (size_t i = 0; i < Cases().size(); ++i) params.push_back({b, i});
  }
  return params;
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  std::string name = info.param.backend + "_" + Cases()[info.param.index].name;
  for (char& ch : name) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(Ops, BackendOpsTest, ::testing::ValuesIn(AllParams()), ParamName);

// The memory operations every case relies on: upload, copy within the backend, fill, download.
class BackendMemoryTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BackendMemoryTest, UploadCopyFillDownload) {
  std::string why_not;
  std::unique_ptr<Backend> backend = MakeBackend(GetParam(), &why_not);
  if (backend == nullptr) GTEST_SKIP() << why_not;
  std::vector<uint8_t> host(1 << 20);
  std::mt19937 rng(5);
  for (uint8_t& b : host) b = static_cast<uint8_t>(rng());
  BackendBuffer a(*backend), b(*backend);
  ASSERT_TRUE(a.Reserve(host.size()));
  ASSERT_TRUE(b.Reserve(host.size()));
  backend->Upload(a.as(), host.data(), host.size());
  backend->Copy(b.as(), a.as(), host.size());
  backend->Fill(b.as<uint8_t>() + 1000, 0xab, 4096);
  std::vector<uint8_t> want = host;
  std::fill(want.begin() + 1000, want.begin() + 5096, uint8_t{0xab});
  std::vector<uint8_t> got(host.size());
  backend->Synchronize();
  backend->Download(got.data(), b.as(), got.size());
  EXPECT_EQ(got, want);
  backend->Download(got.data(), a.as(), got.size());
  EXPECT_EQ(got, host);
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendMemoryTest, ::testing::ValuesIn(Backends()));

// The harness can fail: a backend whose attention drops the last key is caught.
class DropLastKeyBackend : public cpu::CpuBackend {
 public:
  using cpu::CpuBackend::CpuBackend;
  void Attention(const AttentionBatch& batch) override {
    std::vector<AttentionItem> items(batch.items.begin(), batch.items.end());
    for (AttentionItem& it : items) it.n_keys = std::max(0, it.n_keys - 1);
    AttentionBatch b = batch;
    b.items = items;
    cpu::CpuBackend::Attention(b);
  }
};

TEST(BackendOpsHarnessTest, CatchesAWrongAttention) {
  DropLastKeyBackend backend(nullptr);
  for (const Case& c : Cases()) {
    if (c.op != Op::kAttention) continue;
    const std::vector<float> got = c.run(backend);
    const std::vector<float> want = c.ref();
    double max_err = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (std::isfinite(got[i]) && std::isfinite(want[i])) {
        max_err = std::max(max_err, static_cast<double>(std::abs(got[i] - want[i])));
      }
    }
    EXPECT_GT(max_err, c.tol.atol * 10) << c.name;
  }
}

}  // namespace
}  // namespace kvasir::kernels
