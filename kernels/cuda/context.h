// What the CUDA operations share: the backend's stream and cuBLAS handle, and Staging, which
// copies each call's plan arrays (host memory) to the device and lends device scratch memory.
// Private to kernels/cuda; host code (compiled by the host compiler or nvcc).
//
// Staging keeps the plan copies asynchronous: a call packs its plan arrays into one image
// (Begin / Add), and Commit copies the image into a pinned ring buffer and enqueues one
// cudaMemcpyAsync from there into a device plan buffer. The caller may reuse its arrays as soon as
// the call returns. A region of the ring is reused only after the event recorded behind its copy
// has completed; the device plan buffer and the scratch buffer are reused by the next call, which
// is safe because every call runs on the same stream.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

namespace kvasir::kernels::cuda {

// Aborts with the error's name and `what` (an operation name) unless err is cudaSuccess.
void CheckCuda(cudaError_t err, const char* what);
void CheckCublas(cublasStatus_t status, const char* what);

class Staging {
 public:
  explicit Staging(cudaStream_t stream) : stream_(stream) {}
  ~Staging();
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  // ---- Plans: Begin, Add every host array, Commit; then Device(offset) is its device copy.
  void Begin() { image_.clear(); }
  // Copies `bytes` bytes of src into the image (16-byte aligned) and returns their offset.
  size_t Add(const void* src, size_t bytes);
  template <typename T>
  size_t Add(const std::vector<T>& v) {
    return Add(v.data(), sizeof(T) * v.size());
  }
  // Enqueues the copy of the image to the device plan buffer.
  void Commit();
  // The device address of the array added at `offset` (valid for work enqueued in this call).
  template <typename T>
  const T* Device(size_t offset) const {
    return reinterpret_cast<const T*>(plan_dev_ + offset);
  }

  // Enqueues a copy of host memory to the device through the pinned ring, so that src may be
  // reused when this returns.
  void CopyToDevice(void* dst, const void* src, size_t bytes);

  // Device scratch memory of at least `bytes` bytes for the work this call enqueues (the next
  // call reuses it; growing it waits for the stream).
  void* Scratch(size_t bytes);
  // Pinned host memory of at least `bytes` bytes for results read back after a stream
  // synchronization (valid until the next call).
  void* HostResult(size_t bytes);

 private:
  struct Pending {
    size_t bytes;  // ring bytes held, including any skipped at the end of the ring
    cudaEvent_t done;
  };
  // Space in the ring for `bytes` contiguous bytes, waiting for old copies as needed.
  uint8_t* RingAcquire(size_t bytes, size_t* held);
  void RingRelease(size_t held);
  void GrowDevice(uint8_t** buf, size_t* capacity, size_t bytes);

  cudaStream_t stream_;
  std::vector<uint8_t> image_;

  uint8_t* ring_ = nullptr;  // pinned
  size_t ring_capacity_ = 0;
  size_t ring_head_ = 0;  // where the next region starts (or 0 after a wrap)
  size_t ring_used_ = 0;  // bytes held by pending copies, a contiguous span ending at head
  size_t ring_next_head_ = 0;
  std::deque<Pending> pending_;
  std::vector<cudaEvent_t> free_events_;

  uint8_t* plan_dev_ = nullptr;
  size_t plan_capacity_ = 0;
  uint8_t* scratch_dev_ = nullptr;
  size_t scratch_capacity_ = 0;
  uint8_t* result_host_ = nullptr;  // pinned
  size_t result_capacity_ = 0;
};

struct CudaContext {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  int num_sms = 1;
  Staging* staging = nullptr;
};

}  // namespace kvasir::kernels::cuda
