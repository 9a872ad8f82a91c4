// CudaBackend: kernels::Backend over the operations of ops.h, on one device and one stream, with
// the plan staging and scratch memory of Staging (context.h). Every CUDA error aborts with the
// operation's name (the interface returns nothing; an error here is a bug or a lost device).
#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <utility>

#include "common/base/check.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/ops.h"

namespace kvasir::kernels::cuda {
namespace {

// Uploads up to this size go through the pinned ring (asynchronous); larger ones (weights) are
// copied from the caller's memory and waited for.
constexpr size_t kStagedUploadBytes = size_t{4} << 20;

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, cudaStream_t stream, cublasHandle_t cublas, int num_sms,
              std::string describe)
      : staging_(std::make_unique<Staging>(stream)), describe_(std::move(describe)) {
    ctx_.device = device;
    ctx_.stream = stream;
    ctx_.cublas = cublas;
    ctx_.num_sms = num_sms;
    ctx_.staging = staging_.get();
  }
  ~CudaBackend() override {
    cudaSetDevice(ctx_.device);
    cudaStreamSynchronize(ctx_.stream);
    staging_.reset();
    cublasDestroy(ctx_.cublas);
    cudaStreamDestroy(ctx_.stream);
  }

  const char* name() const override { return "cuda"; }
  std::string Describe() const override { return describe_; }
  bool Supports(Op op, DType type) const override {
    switch (op) {
      case Op::kGetRows:
        return GetRowsSupports(type);
      case Op::kMatMul:
        return MatMulSupports(type);
      case Op::kWriteSlots:
      case Op::kAttention:
      case Op::kMixSlots:
        return type == DType::kF32 || type == DType::kF16;
      default:
        return true;
    }
  }
  bool host_addressable() const override { return false; }
  int32_t max_head_dim() const override { return attention::kMaxHeadDim; }

  void* Allocate(size_t bytes) override {
    Use();
    void* p = nullptr;
    const size_t size = bytes == 0 ? 256 : (bytes + 255) / 256 * 256;
    if (cudaMalloc(&p, size) != cudaSuccess) {
      cudaGetLastError();  // out of memory is reported by the null result
      return nullptr;
    }
    return p;
  }
  void Free(void* p) override {
    if (p == nullptr) return;
    Use();
    CheckCuda(cudaFree(p), "free");
  }
  void Upload(void* dst, const void* host_src, size_t bytes) override {
    if (bytes == 0) return;
    Use();
    if (bytes <= kStagedUploadBytes) {
      staging_->CopyToDevice(dst, host_src, bytes);
      return;
    }
    CheckCuda(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, ctx_.stream), "upload");
    CheckCuda(cudaStreamSynchronize(ctx_.stream), "upload");
  }
  void Download(void* host_dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    Use();
    CheckCuda(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream),
              "download");
    CheckCuda(cudaStreamSynchronize(ctx_.stream), "download");
  }
  void Fill(void* dst, uint8_t byte, size_t bytes) override {
    if (bytes == 0) return;
    Use();
    CheckCuda(cudaMemsetAsync(dst, byte, bytes, ctx_.stream), "fill");
  }
  void Copy(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    Use();
    CheckCuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx_.stream), "copy");
  }
  void Synchronize() override {
    Use();
    CheckCuda(cudaStreamSynchronize(ctx_.stream), "synchronize");
  }

  void GetRows(const WeightView& w, const int32_t* ids, int64_t n, float* out) override {
    Use();
    CheckCuda(cuda::GetRows(ctx_, w, ids, n, out), "get_rows");
  }
  void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps,
               float* out) override {
    Use();
    CheckCuda(cuda::RmsNorm(ctx_, x, weight, n, dim, eps, out), "rms_norm");
  }
  void Rope(float* x, int64_t n_tokens, int64_t token_stride, int n_heads, int head_dim, int n_rot,
            const int32_t* pos, float freq_base, RopeLayout layout) override {
    Use();
    CheckCuda(cuda::Rope(ctx_, x, n_tokens, token_stride, n_heads, head_dim, n_rot, pos, freq_base,
                         layout),
              "rope");
  }
  void SiluMul(const float* gate, const float* up, int64_t n, float* out) override {
    Use();
    CheckCuda(cuda::SiluMul(ctx_, gate, up, n, out), "silu_mul");
  }
  void Add(float* y, const float* x, int64_t n) override {
    Use();
    CheckCuda(cuda::Add(ctx_, y, x, n), "add");
  }
  void MatMul(const WeightView& w, const float* x, int64_t n, int64_t x_stride, float* y,
              int64_t y_stride) override {
    Use();
    CheckCuda(cuda::MatMul(ctx_, w, x, n, x_stride, y, y_stride), "mat_mul");
  }
  void WriteSlots(const SlotWrites& writes) override {
    Use();
    CheckCuda(cuda::WriteSlots(ctx_, writes), "write_slots");
  }
  void Attention(const AttentionBatch& batch) override {
    Use();
    CheckCuda(cuda::Attention(ctx_, batch), "attention");
  }
  void MergeAttention(float* out_a, float* lse_a, const float* out_b, const float* lse_b,
                      int64_t rows, int32_t head_dim) override {
    Use();
    CheckCuda(cuda::MergeAttention(ctx_, out_a, lse_a, out_b, lse_b, rows, head_dim),
              "merge_attention");
  }
  void MixSlots(const SlotMix& mix) override {
    Use();
    CheckCuda(cuda::MixSlots(ctx_, mix), "mix_slots");
  }
  void Argmax(const float* logits, int64_t rows, int64_t n_vocab, int32_t* ids) override {
    Use();
    CheckCuda(cuda::TopK(ctx_, logits, rows, n_vocab, 1, nullptr, ids), "argmax");
  }
  void TopK(const float* logits, int64_t rows, int64_t n_vocab, int32_t k, float* values,
            int32_t* ids) override {
    Use();
    CheckCuda(cuda::TopK(ctx_, logits, rows, n_vocab, k, values, ids), "top_k");
  }

 private:
  // The calling thread's current device may be another one (cudaSetDevice is per thread).
  void Use() { CheckCuda(cudaSetDevice(ctx_.device), "set device"); }

  CudaContext ctx_;
  std::unique_ptr<Staging> staging_;
  std::string describe_;
};

std::string NoDevice(cudaError_t err) {
  return std::string("no CUDA device: ") + cudaGetErrorString(err);
}

}  // namespace

std::unique_ptr<kernels::Backend> NewCudaBackend(int device, std::string* why_not) {
  std::string ignored;
  std::string& why = why_not != nullptr ? *why_not : ignored;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    why = NoDevice(err);
    return nullptr;
  }
  if (count == 0) {
    why = NoDevice(cudaErrorNoDevice);
    return nullptr;
  }
  if (device < 0 || device >= count) {
    why = "no CUDA device " + std::to_string(device) + " (" + std::to_string(count) + " present)";
    return nullptr;
  }
  cudaDeviceProp prop{};
  if ((err = cudaSetDevice(device)) != cudaSuccess ||
      (err = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) {
    cudaGetLastError();
    why = NoDevice(err);
    return nullptr;
  }
  cudaStream_t stream = nullptr;
  if ((err = cudaStreamCreate(&stream)) != cudaSuccess) {
    cudaGetLastError();
    why = std::string("CUDA stream: ") + cudaGetErrorString(err);
    return nullptr;
  }
  cublasHandle_t cublas = nullptr;
  cublasStatus_t status = cublasCreate(&cublas);
  if (status == CUBLAS_STATUS_SUCCESS) status = cublasSetStream(cublas, stream);
  if (status != CUBLAS_STATUS_SUCCESS) {
    if (cublas != nullptr) cublasDestroy(cublas);
    cudaStreamDestroy(stream);
    why = "cuBLAS set-up failed: status " + std::to_string(status);
    return nullptr;
  }
  const std::string describe = std::string(prop.name) + ", sm_" +
                               std::to_string(prop.major * 10 + prop.minor) + ", " +
                               std::to_string(prop.multiProcessorCount) + " SMs";
  return std::make_unique<CudaBackend>(device, stream, cublas, prop.multiProcessorCount, describe);
}

}  // namespace kvasir::kernels::cuda
