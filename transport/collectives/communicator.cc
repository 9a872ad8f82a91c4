// Shared argument checks and the reference reduction (see communicator.h).
#include "transport/collectives/communicator.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/half.h"

namespace kvasir::transport::collectives {

absl::Status CheckAllReduceArgs(std::span<const std::byte> data, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("all-reduce supports f32 and bf16, not ", DTypeName(dtype).data()));
  }
  const size_t element = dtype == DType::kF32 ? 4 : 2;
  if (data.size() % element != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("all-reduce buffer of ", data.size(), " bytes is not whole elements"));
  }
  return absl::OkStatus();
}

absl::Status CheckAllGatherArgs(std::span<const std::byte> input, std::span<const std::byte> output,
                                int size) {
  if (output.size() != input.size() * static_cast<size_t>(size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "all-gather output of ", output.size(), " bytes for ", size, " inputs of ", input.size()));
  }
  return absl::OkStatus();
}

absl::Status CheckRoot(int root, int size) {
  if (root < 0 || root >= size) {
    return absl::InvalidArgumentError(absl::StrCat("root ", root, " outside [0, ", size, ")"));
  }
  return absl::OkStatus();
}

void Bf16ToF32(std::span<const std::byte> bf16, std::span<float> f32) {
  for (size_t i = 0; i < f32.size(); ++i) {
    uint16_t h;
    std::memcpy(&h, bf16.data() + 2 * i, 2);
    f32[i] = Bf16ToFp32(h);
  }
}

void F32ToBf16(std::span<const float> f32, std::span<std::byte> bf16) {
  for (size_t i = 0; i < f32.size(); ++i) {
    const uint16_t h = Fp32ToBf16(f32[i]);
    std::memcpy(bf16.data() + 2 * i, &h, 2);
  }
}

}  // namespace kvasir::transport::collectives
