// Instruction-set levels of the CPU kernels and the process-wide choice among them (private to
// kernels/cpu). The level is detected once from cpuid, lowered by KVASIR_CPU_ISA, and may be
// lowered further by SetIsa() in tests; a level the CPU lacks is never selected.
#pragma once

#include <atomic>

namespace kvasir::kernels::cpu {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2 };

// The highest level this CPU and build support (ignores KVASIR_CPU_ISA and SetIsa).
Isa MaxSupportedIsa();

namespace internal {
// The active level; read on every kernel call, so it is a relaxed atomic.
extern std::atomic<int> g_isa;
}  // namespace internal

inline Isa CurrentIsa() {
  return static_cast<Isa>(internal::g_isa.load(std::memory_order_relaxed));
}
inline bool UseAvx2() { return CurrentIsa() >= Isa::kAvx2; }

const char* IsaName(Isa isa);

}  // namespace kvasir::kernels::cpu
