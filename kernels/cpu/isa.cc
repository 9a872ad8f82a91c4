// Detects the instruction sets of the CPU once at start-up and holds the active ISA level.
#include "kernels/cpu/isa.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/cpu/ops.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace kvasir::kernels::cpu {
namespace {

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
  Isa isa = Isa::kScalar;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && CpuHasF16c()) {
    isa = Isa::kAvx2;
  }
  // TODO(kernels): an AVX-512 VNNI path (vpdpbusd) is not written yet because no development
  // machine has AVX-512 to test it on; until then such CPUs run the AVX2 path. [KERNELS_AVX512]
  return isa;
#else
  return Isa::kScalar;
#endif
}

bool ParseIsa(std::string_view name, Isa* out) {
  if (name == "scalar") {
    *out = Isa::kScalar;
  } else if (name == "avx2") {
    *out = Isa::kAvx2;
  } else if (name == "avx512vnni") {
    *out = Isa::kAvx512Vnni;
  } else {
    return false;
  }
  return true;
}

int InitialIsa() {
  Isa isa = MaxSupportedIsa();
  if (const char* env = std::getenv("KVASIR_CPU_ISA")) {
    Isa wanted;
    if (ParseIsa(env, &wanted) && wanted < isa) isa = wanted;
  }
  return static_cast<int>(isa);
}

}  // namespace

namespace internal {
std::atomic<int> g_isa{InitialIsa()};
}  // namespace internal

Isa MaxSupportedIsa() {
  static const Isa isa = DetectIsa();
  return isa;
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512Vnni:
      return "avx512vnni";
  }
  return "scalar";
}

const char* ActiveIsa() { return IsaName(CurrentIsa()); }

bool SetIsa(std::string_view name) {
  Isa isa;
  if (!ParseIsa(name, &isa) || isa > MaxSupportedIsa()) return false;
  internal::g_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

std::vector<std::string> SupportedIsas() {
  std::vector<std::string> out;
  for (int i = 0; i <= static_cast<int>(MaxSupportedIsa()); ++i) {
    out.emplace_back(IsaName(static_cast<Isa>(i)));
  }
  return out;
}

}  // namespace kvasir::kernels::cpu
