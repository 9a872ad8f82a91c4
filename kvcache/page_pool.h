// The page pool behind every KV block table: fixed-size pages of `page_size` slots of one KV
// head each (head_dim elements per slot), handed out by id with reference counts so that
// sequences sharing a prefix can share pages (copy-on-write is the table's job, see
// kv_cache.h). The memory is one anonymous mapping reserved up front and touched lazily, so a
// large --kv-cache-memory costs nothing until it is used; or, given a backend, one allocation of
// that backend's memory (GPU memory for CUDA), which the host then reaches only through the
// backend (host_addressable() false).
//
// Thread contract: not thread-safe; the engine's executor thread owns it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/base/dtype.h"
#include "kernels/backend.h"

namespace kvasir::kvcache {

class PagePool {
 public:
  // dtype: kF32 or kF16. capacity_bytes is rounded down to whole pages (at least one).
  // backend: where the memory lives (null: a host mapping); borrowed, must outlive the pool.
  static absl::StatusOr<PagePool> Create(int32_t page_size, int32_t head_dim, DType dtype,
                                         int64_t capacity_bytes,
                                         kernels::Backend* backend = nullptr);
  PagePool(PagePool&& other) noexcept;
  PagePool& operator=(PagePool&& other) noexcept;
  ~PagePool();

  // A free page with reference count 1, or nullopt when the pool is full.
  std::optional<int32_t> Allocate();
  void Ref(int32_t page);
  // Drops one reference; the page is free again at zero.
  void Unref(int32_t page);
  int32_t refcount(int32_t page) const { return refcounts_[page]; }

  void* page_data(int32_t page) { return base_ + static_cast<size_t>(page) * page_bytes_; }
  const void* page_data(int32_t page) const {
    return base_ + static_cast<size_t>(page) * page_bytes_;
  }
  void* slot_data(int32_t page, int32_t slot) {
    return base_ + static_cast<size_t>(page) * page_bytes_ +
           static_cast<size_t>(slot) * slot_bytes_;
  }
  const void* base() const { return base_; }
  void* base() { return base_; }
  // The backend whose memory holds the pages (null: host memory).
  kernels::Backend* backend() const { return backend_; }
  // Whether the host may read and write the pages through the pointers above.
  bool host_addressable() const;

  int32_t page_size() const { return page_size_; }
  int32_t head_dim() const { return head_dim_; }
  DType dtype() const { return dtype_; }
  size_t slot_bytes() const { return slot_bytes_; }
  size_t page_bytes() const { return page_bytes_; }
  int32_t capacity_pages() const { return capacity_pages_; }
  int32_t pages_used() const { return capacity_pages_ - static_cast<int32_t>(free_.size()); }
  int32_t pages_free() const { return static_cast<int32_t>(free_.size()); }

 private:
  PagePool() = default;
  void Release();

  uint8_t* base_ = nullptr;
  size_t mapped_bytes_ = 0;
  kernels::Backend* backend_ = nullptr;
  int32_t page_size_ = 0;
  int32_t head_dim_ = 0;
  DType dtype_ = DType::kF32;
  size_t slot_bytes_ = 0;
  size_t page_bytes_ = 0;
  int32_t capacity_pages_ = 0;
  std::vector<int32_t> free_;  // a stack: the most recently freed page is reused first
  std::vector<int32_t> refcounts_;
};

}  // namespace kvasir::kvcache
