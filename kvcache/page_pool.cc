#include "kvcache/page_pool.h"

#include <sys/mman.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/base/check.h"

namespace kvasir::kvcache {

absl::StatusOr<PagePool> PagePool::Create(int32_t page_size, int32_t head_dim, DType dtype,
                                          int64_t capacity_bytes, kernels::Backend* backend) {
  if (page_size <= 0 || head_dim <= 0) {
    return absl::InvalidArgumentError("page size and head dim must be positive");
  }
  if (dtype != DType::kF32 && dtype != DType::kF16) {
    return absl::InvalidArgumentError("KV pages hold f32 or f16");
  }
  PagePool pool;
  pool.page_size_ = page_size;
  pool.head_dim_ = head_dim;
  pool.dtype_ = dtype;
  pool.slot_bytes_ = static_cast<size_t>(head_dim) * (dtype == DType::kF16 ? 2 : 4);
  pool.page_bytes_ = pool.slot_bytes_ * page_size;
  const int64_t pages = capacity_bytes / static_cast<int64_t>(pool.page_bytes_);
  if (pages < 1 || pages > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache memory of ", capacity_bytes,
                                                   " bytes gives ", pages, " pages of ",
                                                   pool.page_bytes_, " bytes"));
  }
  pool.capacity_pages_ = static_cast<int32_t>(pages);
  pool.mapped_bytes_ = static_cast<size_t>(pages) * pool.page_bytes_;
  if (backend != nullptr) {
    void* p = backend->Allocate(pool.mapped_bytes_);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", pool.mapped_bytes_,
                                                       " bytes of ", backend->name(),
                                                       " memory for the KV cache"));
    }
    pool.base_ = static_cast<uint8_t*>(p);
    pool.backend_ = backend;
  } else {
    void* p = ::mmap(nullptr, pool.mapped_bytes_, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot reserve ", pool.mapped_bytes_, " bytes for the KV cache"));
    }
    pool.base_ = static_cast<uint8_t*>(p);
  }
  pool.refcounts_.assign(pages, 0);
  pool.free_.reserve(pages);
  for (int64_t i = pages - 1; i >= 0; --i) pool.free_.push_back(static_cast<int32_t>(i));
  return pool;
}

PagePool::PagePool(PagePool&& other) noexcept { *this = std::move(other); }

PagePool& PagePool::operator=(PagePool&& other) noexcept {
  if (this != &other) {
    Release();
    base_ = std::exchange(other.base_, nullptr);
    mapped_bytes_ = std::exchange(other.mapped_bytes_, 0);
    backend_ = std::exchange(other.backend_, nullptr);
    page_size_ = other.page_size_;
    head_dim_ = other.head_dim_;
    dtype_ = other.dtype_;
    slot_bytes_ = other.slot_bytes_;
    page_bytes_ = other.page_bytes_;
    capacity_pages_ = std::exchange(other.capacity_pages_, 0);
    free_ = std::move(other.free_);
    refcounts_ = std::move(other.refcounts_);
  }
  return *this;
}

PagePool::~PagePool() { Release(); }

void PagePool::Release() {
  if (base_ != nullptr) {
    if (backend_ != nullptr) {
      backend_->Free(base_);
    } else {
      ::munmap(base_, mapped_bytes_);
    }
  }
  base_ = nullptr;
  backend_ = nullptr;
  mapped_bytes_ = 0;
}

bool PagePool::host_addressable() const {
  return backend_ == nullptr || backend_->host_addressable();
}

std::optional<int32_t> PagePool::Allocate() {
  if (free_.empty()) return std::nullopt;
  const int32_t page = free_.back();
  free_.pop_back();
  refcounts_[page] = 1;
  return page;
}

void PagePool::Ref(int32_t page) {
  KVASIR_CHECK(page >= 0 && page < capacity_pages_ && refcounts_[page] > 0);
  ++refcounts_[page];
}

void PagePool::Unref(int32_t page) {
  KVASIR_CHECK(page >= 0 && page < capacity_pages_ && refcounts_[page] > 0);
  if (--refcounts_[page] == 0) free_.push_back(page);
}

}  // namespace kvasir::kvcache
