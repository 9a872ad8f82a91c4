// Instruction-set levels of the CPU kernels and the process-wide choice among them (private to
// kernels/cpu). The level is detected once from cpuid; the start-up level is the best one except
// AVX-512, which runs only when asked for (KVASIR_ISA=avx512; see isa.cc). KVASIR_ISA (or the older
// KVASIR_CPU_ISA) lowers it, and SetIsa() may change it in tests; a level the CPU lacks is never
// selected. The kernels reach the active level through its table (internal.h, Kernels()).
#pragma once

namespace kvasir::kernels::cpu {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The highest level this CPU and build support (ignores KVASIR_ISA and SetIsa; kAvx512 when the
// CPU has it although it is not the default).
Isa MaxSupportedIsa();

// The active level (kAvx512 also for the emulated AVX-512 level of the kernel tests).
Isa CurrentIsa();

const char* IsaName(Isa isa);

}  // namespace kvasir::kernels::cpu
