#include "kernels/backend.h"

namespace kvasir::kernels {

const char* OpName(Op op) {
  switch (op) {
    case Op::kGetRows:
      return "get_rows";
    case Op::kRmsNorm:
      return "rms_norm";
    case Op::kRope:
      return "rope";
    case Op::kSiluMul:
      return "silu_mul";
    case Op::kAdd:
      return "add";
    case Op::kMatMul:
      return "mat_mul";
    case Op::kWriteSlots:
      return "write_slots";
    case Op::kAttention:
      return "attention";
    case Op::kMergeAttention:
      return "merge_attention";
    case Op::kMixSlots:
      return "mix_slots";
    case Op::kArgmax:
      return "argmax";
    case Op::kTopK:
      return "top_k";
  }
  return "unknown";
}

}  // namespace kvasir::kernels
