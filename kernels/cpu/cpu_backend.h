// The CPU implementation of kernels::Backend: the kernels of ops.h over the caller's thread pool.
// Data arrays are host memory, so the KV policies may also read and write them directly
// (host_addressable()).
//
//   ThreadPool pool(2);
//   std::unique_ptr<kernels::Backend> cpu = kernels::cpu::NewCpuBackend(&pool);
#pragma once

#include <memory>

#include "common/base/thread_pool.h"
#include "kernels/backend.h"
#include "kernels/cpu/ops.h"

namespace kvasir::kernels::cpu {

class CpuBackend : public Backend {
 public:
  // pool: the threads the operations split their work over (null: single-threaded); borrowed.
  explicit CpuBackend(ThreadPool* pool) { ctx_.pool = pool; }

  // The context the CPU-only code of the engine (tensor parallelism, calibration) shares.
  CpuContext& context() { return ctx_; }

  const char* name() const override { return "cpu"; }
  std::string Describe() const override;
  bool Supports(Op op, DType type) const override;
  bool host_addressable() const override { return true; }

  void* Allocate(size_t bytes) override;
  void Free(void* p) override;
  void Upload(void* dst, const void* host_src, size_t bytes) override;
  void Download(void* host_dst, const void* src, size_t bytes) override;
  void Fill(void* dst, uint8_t byte, size_t bytes) override;
  void Copy(void* dst, const void* src, size_t bytes) override;
  void Synchronize() override {}

  void HostParallelFor(int64_t n, const std::function<void(int64_t task, int thread)>& fn) override;
  int host_threads() const override { return ctx_.pool == nullptr ? 1 : ctx_.pool->num_threads(); }

  void GetRows(const WeightView& w, const int32_t* ids, int64_t n, float* out) override;
  void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps,
               float* out) override;
  void Rope(float* x, int64_t n_tokens, int64_t token_stride, int n_heads, int head_dim, int n_rot,
            const int32_t* pos, float freq_base, RopeLayout layout) override;
  void SiluMul(const float* gate, const float* up, int64_t n, float* out) override;
  void Add(float* y, const float* x, int64_t n) override;
  void MatMul(const WeightView& w, const float* x, int64_t n, int64_t x_stride, float* y,
              int64_t y_stride) override;

  void WriteSlots(const SlotWrites& writes) override;
  void Attention(const AttentionBatch& batch) override;
  void MergeAttention(float* out_a, float* lse_a, const float* out_b, const float* lse_b,
                      int64_t rows, int32_t head_dim) override;
  void MixSlots(const SlotMix& mix) override;

  void Argmax(const float* logits, int64_t rows, int64_t n_vocab, int32_t* ids) override;
  void TopK(const float* logits, int64_t rows, int64_t n_vocab, int32_t k, float* values,
            int32_t* ids) override;

 private:
  // Runs fn(task) for every task, on the pool unless the call comes from inside a parallel loop
  // of the pool already (then inline).
  template <typename F>
  void ForEach(int64_t n, F&& fn);
  // How many parallel chunks `items` independent pieces of `elements` elements in all are worth.
  int64_t Chunks(int64_t items, int64_t elements) const;

  CpuContext ctx_;
};

std::unique_ptr<CpuBackend> NewCpuBackend(ThreadPool* pool);

// The scalar references of the slot, sampling and attention-item operations, single-threaded,
// the oracle of tests/kernels/backend_ops_test.cc (the other operations' references are in ops.h).
void WriteSlotsRef(const SlotWrites& writes);
void MixSlotsRef(const SlotMix& mix);
void AttentionBatchRef(const AttentionBatch& batch);
void ArgmaxRef(const float* logits, int64_t rows, int64_t n_vocab, int32_t* ids);
void TopKRef(const float* logits, int64_t rows, int64_t n_vocab, int32_t k, float* values,
             int32_t* ids);

}  // namespace kvasir::kernels::cpu
