// Invariant checks that stay on in release builds (as GGML_ASSERT does). A failed check is a bug
// in Kvasir, never a reaction to bad input: bad input gets an absl::Status.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace kvasir::internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* expr, const char* msg);
}  // namespace kvasir::internal

#define KVASIR_CHECK(cond)                                                 \
  do {                                                                     \
    if (__builtin_expect(!(cond), 0)) {                                    \
      ::kvasir::internal::CheckFailed(__FILE__, __LINE__, #cond, nullptr); \
    }                                                                      \
  } while (0)

#define KVASIR_CHECK_MSG(cond, msg)                                    \
  do {                                                                 \
    if (__builtin_expect(!(cond), 0)) {                                \
      ::kvasir::internal::CheckFailed(__FILE__, __LINE__, #cond, msg); \
    }                                                                  \
  } while (0)

#ifdef NDEBUG
#define KVASIR_DCHECK(cond) \
  do {                      \
  } while (false && (cond))
#else
#define KVASIR_DCHECK(cond) KVASIR_CHECK(cond)
#endif
