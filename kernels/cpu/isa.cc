// Detects the instruction sets of the CPU once at start-up, holds the active level's kernel table
// and the test hook that adds the emulated AVX-512 level.
//
// AVX-512 is switched off by default: a CPU with AVX-512 F, BW, VL, DQ and VNNI still starts at
// the avx2 level, because the native AVX-512 kernels (*_avx512.cc) have so far been tested only
// through SIMDe's emulation on AVX2 machines (the kernel tests' avx512_emulated level), never on
// AVX-512 hardware. KVASIR_ISA=avx512 opts in on such a CPU, and the kernel tests run the native
// level there (SupportedIsas() lists it). Once those tests pass on an AVX-512 machine, make it the
// default by dropping the kAvx2 cap in InitialIsa() (docs/kernels.md, "ISA dispatch").
#include "kernels/cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/cpu/internal.h"
#include "kernels/cpu/ops.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace kvasir::kernels::cpu {
namespace {

constexpr IsaKernels kScalarKernels = KVASIR_CPU_ISA_KERNELS(scalar, Isa::kScalar, "scalar");
constexpr IsaKernels kAvx2Kernels =
    WithRows8(KVASIR_CPU_ISA_KERNELS(avx2, Isa::kAvx2, "avx2"), &avx2::QuantTileRows8);
constexpr IsaKernels kAvx512Kernels =
    WithRows8(KVASIR_CPU_ISA_KERNELS(avx512, Isa::kAvx512, "avx512"), &avx512::QuantTileRows8);

// The kernel tests' emulated AVX-512 table, once registered (constant-initialized, so it may be
// set from another file's static initializer).
std::atomic<const IsaKernels*> g_emulated_avx512{nullptr};

#if defined(__x86_64__) || defined(__i386__)
// F16C (CPUID leaf 1, ECX bit 29) read directly: clang 14 does not know
// __builtin_cpu_supports("f16c"). The AVX2 check before it covers OS support of the YMM state.
bool CpuHasF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  return (ecx & bit_F16C) != 0;
}
#endif

Isa DetectIsa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !CpuHasF16c()) {
    return Isa::kScalar;
  }
  // The extensions the *_avx512.cc files are compiled for (kernels/CMakeLists.txt). libgcc and
  // compiler-rt report avx512* only when the OS saves the ZMM state (XGETBV).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni")) {
    return Isa::kAvx512;
  }
  return Isa::kAvx2;
#else
  return Isa::kScalar;
#endif
}

const IsaKernels* NativeKernels(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return &kScalarKernels;
    case Isa::kAvx2:
      return &kAvx2Kernels;
    case Isa::kAvx512:
      return &kAvx512Kernels;
  }
  return &kScalarKernels;
}

bool ParseIsa(std::string_view name, Isa* out) {
  if (name == "scalar") {
    *out = Isa::kScalar;
  } else if (name == "avx2") {
    *out = Isa::kAvx2;
  } else if (name == "avx512" || name == "avx512vnni") {
    *out = Isa::kAvx512;
  } else {
    return false;
  }
  return true;
}

// The level at start-up: the best this CPU has, but at most avx2 (AVX-512 is off by default, see
// the top of this file); KVASIR_ISA (or, when unset, the older KVASIR_CPU_ISA) names a level the
// CPU has: a lower one, or avx512 to opt in. Unknown names and levels the CPU lacks are ignored.
Isa InitialIsa() {
  const Isa max = MaxSupportedIsa();
  Isa isa = max < Isa::kAvx2 ? max : Isa::kAvx2;
  const char* env = std::getenv("KVASIR_ISA");
  if (env == nullptr) env = std::getenv("KVASIR_CPU_ISA");
  Isa wanted;
  if (env != nullptr && ParseIsa(env, &wanted) && wanted <= max) isa = wanted;
  return isa;
}

}  // namespace

namespace internal {
// Constant-initialized to the scalar table, so that a kernel called from another file's static
// initializer runs (the reference way) before the start-up level is set just below.
std::atomic<const IsaKernels*> g_kernels{&kScalarKernels};

bool RegisterEmulatedAvx512(const IsaKernels* kernels) {
  if (MaxSupportedIsa() != Isa::kAvx2) return false;
  g_emulated_avx512.store(kernels, std::memory_order_relaxed);
  return true;
}
}  // namespace internal

namespace {
[[maybe_unused]] const bool kStartupLevelSet = [] {
  internal::g_kernels.store(NativeKernels(InitialIsa()), std::memory_order_relaxed);
  return true;
}();
}  // namespace

Isa MaxSupportedIsa() {
  static const Isa isa = DetectIsa();
  return isa;
}

Isa CurrentIsa() { return Kernels().isa; }

const char* IsaName(Isa isa) { return NativeKernels(isa)->name; }

const char* ActiveIsa() { return Kernels().name; }

bool SetIsa(std::string_view name) {
  const IsaKernels* emulated = g_emulated_avx512.load(std::memory_order_relaxed);
  if (emulated != nullptr && name == emulated->name) {
    internal::g_kernels.store(emulated, std::memory_order_relaxed);
    return true;
  }
  Isa isa;
  if (!ParseIsa(name, &isa) || isa > MaxSupportedIsa()) return false;
  internal::g_kernels.store(NativeKernels(isa), std::memory_order_relaxed);
  return true;
}

std::vector<std::string> SupportedIsas() {
  std::vector<std::string> out;
  for (int i = 0; i <= static_cast<int>(MaxSupportedIsa()); ++i) {
    out.emplace_back(IsaName(static_cast<Isa>(i)));
  }
  if (const IsaKernels* emulated = g_emulated_avx512.load(std::memory_order_relaxed)) {
    out.emplace_back(emulated->name);
  }
  return out;
}

}  // namespace kvasir::kernels::cpu
