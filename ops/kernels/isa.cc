#include "isa.h"

#include <cstdlib>
#include <mutex>

namespace pyae {
namespace {

constexpr const char* kIsaEnv = "PYAE_ISA";
constexpr Isa kBestFirst[] = {Isa::kAvx512, Isa::kAvx2, Isa::kGeneric};

bool ParseIsa(const std::string& name, Isa* isa) {
  for (Isa candidate : kBestFirst) {
    if (name == IsaName(candidate)) {
      *isa = candidate;
      return true;
    }
  }
  return false;
}

Isa BestIsa() {
  for (Isa candidate : kBestFirst) {
    if (IsaBuilt(candidate) && IsaSupported(candidate)) return candidate;
  }
  return Isa::kGeneric;
}

// The choice for `name` ("" or "auto": the best path); `source` says where the name came from.
IsaChoice Choose(const std::string& name, const std::string& source) {
  IsaChoice choice;
  if (name.empty() || name == "auto") {
    choice.isa = BestIsa();
    choice.reason = std::string("the best path this CPU runs (") + source + " is " +
                    (name.empty() ? "unset" : "'auto'") + ")";
    return choice;
  }
  const std::string quoted = source + "='" + name + "'";
  if (!ParseIsa(name, &choice.isa)) {
    choice.error = quoted + " is not a path: expected one of avx512, avx2, generic, auto";
  } else if (!IsaBuilt(choice.isa)) {
    choice.error = quoted + " but this build has only " + BuiltIsas();
  } else if (!IsaSupported(choice.isa)) {
    choice.error = quoted + " but this CPU lacks " +
                   (choice.isa == Isa::kAvx512 ? "AVX-512 (F, BW, VL, DQ)" : "AVX2 and FMA");
  } else {
    choice.reason = "forced by " + quoted;
  }
  return choice;
}

std::mutex& ChoiceMutex() {
  static std::mutex mutex;
  return mutex;
}

IsaChoice& Current() {
  static IsaChoice choice = [] {
    const char* env = std::getenv(kIsaEnv);
    return Choose(env != nullptr ? env : "", std::string("environment variable ") + kIsaEnv);
  }();
  return choice;
}

}  // namespace

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

bool IsaBuilt(Isa isa) {
  switch (isa) {
#if defined(PYAE_BUILT_AVX512)
    case Isa::kAvx512: return true;
#endif
#if defined(PYAE_BUILT_AVX2)
    case Isa::kAvx2: return true;
#endif
    case Isa::kGeneric: return true;
    default: return false;
  }
}

bool IsaSupported(Isa isa) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  // __builtin_cpu_supports also checks that the OS saves the wider registers (XGETBV).
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
#else
  return isa == Isa::kGeneric;
#endif
}

IsaChoice ActiveIsa() {
  std::lock_guard<std::mutex> lock(ChoiceMutex());
  return Current();
}

std::string SelectIsa(const std::string& name) {
  IsaChoice choice = Choose(name, "isa");
  if (!choice.error.empty()) return choice.error;
  std::lock_guard<std::mutex> lock(ChoiceMutex());
  Current() = choice;
  return "";
}

std::string BuiltIsas() {
  std::string names;
  for (Isa candidate : kBestFirst) {
    if (!IsaBuilt(candidate)) continue;
    if (!names.empty()) names += ",";
    names += IsaName(candidate);
  }
  return names;
}

}  // namespace pyae
