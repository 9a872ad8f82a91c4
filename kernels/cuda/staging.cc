// Staging (context.h): the pinned ring that carries plan arrays to the device, the device plan
// and scratch buffers, and the pinned buffer for results read back.
#include <algorithm>
#include <cstring>
#include <string>

#include "common/base/check.h"
#include "kernels/cuda/context.h"

namespace kvasir::kernels::cuda {
namespace {

constexpr size_t kRingMinBytes = size_t{1} << 20;
constexpr size_t kDeviceMinBytes = size_t{64} << 10;

size_t RoundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

}  // namespace

void CheckCuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  const std::string msg =
      std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  ::kvasir::internal::CheckFailed(__FILE__, __LINE__, "CUDA call failed", msg.c_str());
}

void CheckCublas(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  const std::string msg = std::string(what) + ": cuBLAS status " + std::to_string(status);
  ::kvasir::internal::CheckFailed(__FILE__, __LINE__, "cuBLAS call failed", msg.c_str());
}

Staging::~Staging() {
  // Errors are ignored here: the process may be shutting down after a failure.
  cudaStreamSynchronize(stream_);
  for (const Pending& p : pending_) cudaEventDestroy(p.done);
  for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
  if (ring_ != nullptr) cudaFreeHost(ring_);
  if (result_host_ != nullptr) cudaFreeHost(result_host_);
  if (plan_dev_ != nullptr) cudaFree(plan_dev_);
  if (scratch_dev_ != nullptr) cudaFree(scratch_dev_);
}

size_t Staging::Add(const void* src, size_t bytes) {
  const size_t offset = RoundUp(image_.size(), 16);
  image_.resize(offset + bytes);
  if (bytes > 0) {
    KVASIR_CHECK_MSG(src != nullptr, "CUDA backend: a plan array is null");
    std::memcpy(image_.data() + offset, src, bytes);
  }
  return offset;
}

void Staging::Commit() {
  if (image_.empty()) return;
  GrowDevice(&plan_dev_, &plan_capacity_, image_.size());
  CopyToDevice(plan_dev_, image_.data(), image_.size());
}

void Staging::CopyToDevice(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  size_t held = 0;
  uint8_t* region = RingAcquire(bytes, &held);
  std::memcpy(region, src, bytes);
  CheckCuda(cudaMemcpyAsync(dst, region, bytes, cudaMemcpyHostToDevice, stream_), "plan copy");
  RingRelease(held);
}

uint8_t* Staging::RingAcquire(size_t bytes, size_t* held) {
  bytes = RoundUp(bytes, 256);
  if (bytes > ring_capacity_) {
    // A larger ring: wait for every copy out of the old one, then replace it.
    CheckCuda(cudaStreamSynchronize(stream_), "staging");
    for (const Pending& p : pending_) free_events_.push_back(p.done);
    pending_.clear();
    if (ring_ != nullptr) CheckCuda(cudaFreeHost(ring_), "staging");
    ring_ = nullptr;
    ring_capacity_ = std::max({bytes, 2 * ring_capacity_, kRingMinBytes});
    CheckCuda(cudaHostAlloc(reinterpret_cast<void**>(&ring_), ring_capacity_, cudaHostAllocDefault),
              "staging: pinned ring");
    ring_head_ = 0;
    ring_used_ = 0;
  }
  // The held bytes form one span of the ring ending at ring_head_; the free bytes follow it. Wait
  // for the oldest copies until `bytes` fit after the head (or at 0, skipping the ring's end).
  size_t start = 0, skip = 0;
  for (;;) {
    if (pending_.empty()) {
      ring_head_ = 0;
      ring_used_ = 0;
    }
    start = ring_head_;
    skip = 0;
    if (start + bytes > ring_capacity_) {
      skip = ring_capacity_ - start;
      start = 0;
    }
    if (ring_capacity_ - ring_used_ >= skip + bytes) break;
    const Pending oldest = pending_.front();
    pending_.pop_front();
    CheckCuda(cudaEventSynchronize(oldest.done), "staging");
    ring_used_ -= oldest.bytes;
    free_events_.push_back(oldest.done);
  }
  *held = skip + bytes;
  ring_next_head_ = start + bytes;
  return ring_ + start;
}

void Staging::RingRelease(size_t held) {
  cudaEvent_t done = nullptr;
  if (free_events_.empty()) {
    CheckCuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "staging: event");
  } else {
    done = free_events_.back();
    free_events_.pop_back();
  }
  CheckCuda(cudaEventRecord(done, stream_), "staging: event");
  pending_.push_back({held, done});
  ring_used_ += held;
  ring_head_ = ring_next_head_;
}

void Staging::GrowDevice(uint8_t** buf, size_t* capacity, size_t bytes) {
  if (bytes <= *capacity && *buf != nullptr) return;
  // Work still queued may read the old buffer.
  CheckCuda(cudaStreamSynchronize(stream_), "staging");
  if (*buf != nullptr) CheckCuda(cudaFree(*buf), "staging");
  *buf = nullptr;
  const size_t size = RoundUp(std::max({bytes, 2 * *capacity, kDeviceMinBytes}), 256);
  CheckCuda(cudaMalloc(reinterpret_cast<void**>(buf), size), "staging: device buffer");
  *capacity = size;
}

void* Staging::Scratch(size_t bytes) {
  GrowDevice(&scratch_dev_, &scratch_capacity_, bytes);
  return scratch_dev_;
}

void* Staging::HostResult(size_t bytes) {
  if (bytes > result_capacity_ || result_host_ == nullptr) {
    // Results are read after a stream synchronization, so nothing queued uses the old buffer.
    if (result_host_ != nullptr) CheckCuda(cudaFreeHost(result_host_), "staging");
    result_host_ = nullptr;
    const size_t size = RoundUp(std::max({bytes, 2 * result_capacity_, size_t{4096}}), 256);
    CheckCuda(cudaHostAlloc(reinterpret_cast<void**>(&result_host_), size, cudaHostAllocDefault),
              "staging: pinned results");
    result_capacity_ = size;
  }
  return result_host_;
}

}  // namespace kvasir::kernels::cuda
