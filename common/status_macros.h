// Early-return helpers for absl::Status, which Abseil 20220623 does not ship.
//
//   KVASIR_RETURN_IF_ERROR(file.Validate());
//   KVASIR_ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::Open(path));
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KVASIR_RETURN_IF_ERROR(expr)                                  \
  do {                                                                \
    if (absl::Status kvasir_status_ = (expr); !kvasir_status_.ok()) { \
      return kvasir_status_;                                          \
    }                                                                 \
  } while (0)

#define KVASIR_ASSIGN_OR_RETURN(lhs, expr) \
  KVASIR_ASSIGN_OR_RETURN_IMPL_(KVASIR_CONCAT_(kvasir_statusor_, __LINE__), lhs, expr)
#define KVASIR_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) {                                    \
    return std::move(tmp).status();                   \
  }                                                   \
  lhs = std::move(tmp).value()
#define KVASIR_CONCAT_(a, b) KVASIR_CONCAT_IMPL_(a, b)
#define KVASIR_CONCAT_IMPL_(a, b) a##b

namespace kvasir {

// Returns `status` with "context: " put before its message (NCCL-style breadcrumbs).
inline absl::Status Annotate(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), std::string(context) + ": " + std::string(status.message()));
}

}  // namespace kvasir
