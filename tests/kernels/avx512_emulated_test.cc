// The emulated AVX-512 level of the kernel tests. kernels/CMakeLists.txt links into this binary a
// second build of kernels/cpu/*_avx512.cc, made against SIMDe with only AVX2 flags (namespace
// avx512_emulated; KVASIR_HAVE_SIMDE is then defined). This file registers its table before main(),
// so on a CPU with AVX2 but without AVX-512 SupportedIsas() ends with "avx512_emulated" and every
// ISA-parameterized kernel test (KVASIR_INSTANTIATE_ISA_TEST) also runs as
// Isa/<Suite>.<Test>/avx512_emulated, the AVX-512 code against the scalar references. On an
// AVX-512 CPU the native level "avx512" runs instead. Also checks the level tables, the
// start-up level (AVX-512 off by default) and KVASIR_ISA / KVASIR_CPU_ISA.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cpu/internal.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/ops.h"

namespace kvasir::kernels::cpu {
namespace {

#if KVASIR_HAVE_SIMDE
constexpr IsaKernels kEmulatedAvx512 =
    WithRows8(KVASIR_CPU_ISA_KERNELS(avx512_emulated, Isa::kAvx512, "avx512_emulated"),
              &avx512_emulated::QuantTileRows8);
// Before main(): gtest expands ValuesIn(SupportedIsas()) when it starts.
const bool kEmulatedRegistered = internal::RegisterEmulatedAvx512(&kEmulatedAvx512);
#else
const bool kEmulatedRegistered = false;
#endif

bool Has(const std::vector<std::string>& levels, const std::string& name) {
  return std::find(levels.begin(), levels.end(), name) != levels.end();
}

TEST(Avx512EmulationTest, EmulatedLevelListedWhenTheCpuLacksAvx512) {
  const std::vector<std::string> levels = SupportedIsas();
  std::string list;
  for (const std::string& l : levels) list += " " + l;
  std::printf("ISA levels tested here:%s\n", list.c_str());
#if KVASIR_HAVE_SIMDE
  EXPECT_EQ(kEmulatedRegistered, MaxSupportedIsa() == Isa::kAvx2);
#else
  GTEST_SKIP() << "built without SIMDe (libsimde-dev): the AVX-512 kernels are tested only on "
                  "CPUs that have AVX-512";
#endif
  EXPECT_EQ(Has(levels, "avx512_emulated"), kEmulatedRegistered);
  EXPECT_EQ(Has(levels, "avx512"), MaxSupportedIsa() == Isa::kAvx512);
  if (kEmulatedRegistered) {
    std::printf("avx512_emulated: the AVX-512 kernels compiled against SIMDe, run on AVX2\n");
  }
}

// Every entry of every level's table is set (a missing one would be a null call).
TEST(Avx512EmulationTest, EveryLevelFillsItsTable) {
  const std::string previous = ActiveIsa();
  for (const std::string& name : SupportedIsas()) {
    ASSERT_TRUE(SetIsa(name)) << name;
    const IsaKernels& k = Kernels();
    EXPECT_EQ(std::string(k.name), name);
    EXPECT_EQ(std::string(ActiveIsa()), name);
    const void* entries[] = {reinterpret_cast<const void*>(k.quant_tile),
                             reinterpret_cast<const void*>(k.float_tile),
                             reinterpret_cast<const void*>(k.quantize_act_row),
                             reinterpret_cast<const void*>(k.convert_f32_to_f16),
                             reinterpret_cast<const void*>(k.convert_f16_to_f32),
                             reinterpret_cast<const void*>(k.rms_norm),
                             reinterpret_cast<const void*>(k.silu_mul),
                             reinterpret_cast<const void*>(k.softmax),
                             reinterpret_cast<const void*>(k.add),
                             reinterpret_cast<const void*>(k.rope_token),
                             reinterpret_cast<const void*>(k.qk_slots),
                             reinterpret_cast<const void*>(k.pv_slots),
                             reinterpret_cast<const void*>(k.max_of),
                             reinterpret_cast<const void*>(k.exp_sub_sum)};
    for (const void* e : entries) EXPECT_NE(e, nullptr) << name;
    EXPECT_EQ(CurrentIsa(), name == "scalar" ? Isa::kScalar
                            : name == "avx2" ? Isa::kAvx2
                                             : Isa::kAvx512);
  }
  EXPECT_TRUE(SetIsa(previous));
}

// AVX-512 is off by default (kernels/cpu/isa.cc): unless KVASIR_ISA or KVASIR_CPU_ISA names a
// level, the start-up level is the best one up to avx2, even on an AVX-512 CPU. Also printed for
// EnvironmentChoosesTheStartupLevel, which runs this test in child processes.
TEST(IsaStartupTest, StartupLevel) {
  std::printf("startup level: %s\n", ActiveIsa());
  if (std::getenv("KVASIR_ISA") != nullptr || std::getenv("KVASIR_CPU_ISA") != nullptr) {
    GTEST_SKIP() << "the level comes from the environment";
  }
  const Isa max = MaxSupportedIsa();
  EXPECT_EQ(CurrentIsa(), max < Isa::kAvx2 ? max : Isa::kAvx2);
}

// The start-up level of this binary run again with `env` (assignments for env(1)).
std::string StartupLevelWith(const std::string& env) {
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (len <= 0) return "?";
  exe[len] = '\0';
  const std::string cmd = "env -u KVASIR_ISA -u KVASIR_CPU_ISA " + env + " '" + exe +
                          "' --gtest_filter=IsaStartupTest.StartupLevel 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return "?";
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof(buf), pipe) != nullptr) out += buf;
  pclose(pipe);
  const std::string key = "startup level: ";
  const size_t at = out.find(key);
  if (at == std::string::npos) return "? " + out;
  return out.substr(at + key.size(), out.find('\n', at) - at - key.size());
}

// KVASIR_ISA lowers the level or opts into avx512 where the CPU has it; it never raises the level
// past the CPU; KVASIR_CPU_ISA is the older name, used when KVASIR_ISA is unset; "avx512vnni" is
// an alias of avx512; unknown names are ignored.
TEST(IsaStartupTest, EnvironmentChoosesTheStartupLevel) {
  const Isa max = MaxSupportedIsa();
  const std::string best = IsaName(max < Isa::kAvx2 ? max : Isa::kAvx2);
  EXPECT_EQ(StartupLevelWith(""), best);
  EXPECT_EQ(StartupLevelWith("KVASIR_ISA=scalar"), "scalar");
  EXPECT_EQ(StartupLevelWith("KVASIR_CPU_ISA=scalar"), "scalar");
  EXPECT_EQ(StartupLevelWith("KVASIR_ISA=sse9"), best);
  EXPECT_EQ(StartupLevelWith("KVASIR_ISA=avx512"), IsaName(max));
  EXPECT_EQ(StartupLevelWith("KVASIR_CPU_ISA=avx512vnni"), IsaName(max));
  if (max >= Isa::kAvx2) {
    EXPECT_EQ(StartupLevelWith("KVASIR_ISA=avx2 KVASIR_CPU_ISA=scalar"), "avx2");
  }
}

}  // namespace
}  // namespace kvasir::kernels::cpu
