// Which instruction set the kernels run on. Each ISA-sensitive source (direct_conv.cc,
// fused_conv_bn_lrelu.cc) is compiled once per path into its own namespace (see
// isa_target.h); one path is picked at run time, from the CPU or from PYAE_ISA.
#pragma once

#include <string>

namespace pyae {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// "generic", "avx2" or "avx512".
const char* IsaName(Isa isa);

// True when this build has the path's kernels / the running CPU (and OS) can run them.
bool IsaBuilt(Isa isa);
bool IsaSupported(Isa isa);

// The path in use, why, and what stops the kernels from running (empty when nothing does:
// PYAE_ISA naming a path this build or CPU lacks is an error at the first call, never a
// silent switch to another path).
struct IsaChoice {
  Isa isa = Isa::kGeneric;
  std::string reason;
  std::string error;
};
IsaChoice ActiveIsa();

// Picks the path by name ("avx512", "avx2", "generic", or "auto" / "" for the best this CPU
// runs). Returns "" on success, else a message naming the value, and leaves the choice as it was.
std::string SelectIsa(const std::string& name);

// The paths this build has, best first, separated by commas.
std::string BuiltIsas();

}  // namespace pyae
