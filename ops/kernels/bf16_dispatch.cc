// The public bf16 kernels (fused_bf16.h): each call runs the path ActiveBf16Path() names.
#include <cmath>
#include <string>

#include "bf16_isa.h"
#include "fused_bf16.h"
#include "isa.h"

namespace pyae {
namespace {

bool CpuHasAvx512Bf16() {
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

// The kernels of the path in use, or null with the reason there are none.
const Bf16Kernels* ActiveKernels(std::string* error) {
  const Bf16Choice choice = ActiveBf16Path();
  switch (choice.path) {
#if defined(PYAE_BUILT_AVX512BF16)
    case Bf16Path::kAvx512Bf16: return &avx512bf16::Kernels();
#endif
    default:
      *error = "pyae's bf16 kernels cannot run: " + choice.reason;
      return nullptr;
  }
}

}  // namespace

const char* Bf16PathName(Bf16Path path) {
  return path == Bf16Path::kAvx512Bf16 ? "avx512bf16" : "none";
}

Bf16Choice ActiveBf16Path() {
#if defined(PYAE_BUILT_AVX512BF16)
  // The float32 path's choice rules here too: forcing avx2 or generic (PYAE_ISA, set_isa)
  // turns the bf16 kernels off, so one switch runs a whole process on a narrower CPU's paths.
  const IsaChoice isa = ActiveIsa();
  if (!isa.error.empty()) return {Bf16Path::kNone, isa.error};
  if (isa.isa != Isa::kAvx512) {
    return {Bf16Path::kNone, std::string("the CPU kernel path in use is ") + IsaName(isa.isa) +
                                 ", and the bf16 kernels need avx512"};
  }
  if (!CpuHasAvx512Bf16()) return {Bf16Path::kNone, "this CPU lacks AVX512-BF16"};
  return {Bf16Path::kAvx512Bf16,
          "AVX512-BF16 (vdpbf16ps, float32 accumulation); this build has no AMX path"};
#else
  return {Bf16Path::kNone, "this build has no bf16 kernels (they need x86-64 and GCC or Clang)"};
#endif
}

std::string FusedForwardBf16(const FusedParams& params, const Runtime& runtime, const Bf16* x,
                             const float* kernel, const float* gamma, const float* beta,
                             const float* moving_mean, const float* moving_variance, Bf16* y,
                             float* mean_out, float* variance_out,
                             const Bf16Workspace& workspace) {
  std::string error;
  const Bf16Kernels* kernels = ActiveKernels(&error);
  if (kernels == nullptr) return error;
  return kernels->forward(params, runtime, x, kernel, gamma, beta, moving_mean, moving_variance,
                          y, mean_out, variance_out, workspace);
}

std::string FusedBackwardBf16(const FusedParams& params, const Runtime& runtime, const Bf16* dy,
                              const Bf16* x, const float* kernel, const float* gamma,
                              const float* beta, const Bf16* y, const float* mean,
                              const float* variance, Bf16* dx, float* dkernel, float* dgamma,
                              float* dbeta, const Bf16Workspace& workspace) {
  std::string error;
  const Bf16Kernels* kernels = ActiveKernels(&error);
  if (kernels == nullptr) return error;
  return kernels->backward(params, runtime, dy, x, kernel, gamma, beta, y, mean, variance, dx,
                           dkernel, dgamma, dbeta, workspace);
}

// Here, compiled for the baseline, not in fused_bf16.cc: the TF op asks it on any CPU.
// y = v (1 + d), |d| <= u = 2^-8, gives (v - beta) / gamma off by at most u (|xhat| +
// |beta / gamma|), which is within Keras' u |z| / std = u |xhat + mean / std| when
// |beta| <= |gamma| (and |mean| >= std).
bool Bf16BackwardInvertsY(const float* gamma, const float* beta, int64_t channels,
                          float negative_slope) {
  if (!(negative_slope > 0.0f)) return false;
  for (int64_t c = 0; c < channels; ++c) {
    const float g = std::fabs(gamma[c]);
    if (!(g >= 1e-6f) || !(std::fabs(beta[c]) <= g)) return false;
  }
  return true;
}

std::string ConvBf16(const ConvGeometry& g, const Runtime& runtime, const Bf16* big,
                     const float* filter, float* small) {
  std::string error;
  const Bf16Kernels* kernels = ActiveKernels(&error);
  if (kernels != nullptr) kernels->conv(g, runtime, big, filter, small);
  return error;
}

std::string ConvTransposeBf16(const ConvGeometry& g, const Runtime& runtime, const Bf16* small,
                              const float* filter, float* big) {
  std::string error;
  const Bf16Kernels* kernels = ActiveKernels(&error);
  if (kernels != nullptr) kernels->conv_transpose(g, runtime, small, filter, big);
  return error;
}

std::string FilterGradBf16(const ConvGeometry& g, const Runtime& runtime, const Bf16* big,
                           const Bf16* small, float* dfilter) {
  std::string error;
  const Bf16Kernels* kernels = ActiveKernels(&error);
  if (kernels != nullptr) kernels->filter_grad(g, runtime, big, small, dfilter);
  return error;
}

}  // namespace pyae
