// The public fused kernels: each call runs the path isa.h has picked.
#include <cmath>
#include <string>

#include "fused_conv_bn_lrelu.h"
#include "fused_isa.h"
#include "isa.h"

namespace pyae {
namespace {

// The kernels of the path in use, or the message saying why no path can run.
const FusedKernels* ActiveKernels(std::string* error) {
  const IsaChoice choice = ActiveIsa();
  if (!choice.error.empty()) {
    *error = choice.error;
    return nullptr;
  }
  switch (choice.isa) {
#if defined(PYAE_BUILT_AVX512)
    case Isa::kAvx512: return &avx512::Kernels();
#endif
#if defined(PYAE_BUILT_AVX2)
    case Isa::kAvx2: return &avx2::Kernels();
#endif
    default: return &generic::Kernels();
  }
}

}  // namespace

std::string FusedForward(const FusedParams& params, const Runtime& runtime, const float* x,
                         const float* kernel, const float* gamma, const float* beta,
                         const float* moving_mean, const float* moving_variance, float* y,
                         float* mean_out, float* variance_out) {
  std::string error;
  const FusedKernels* kernels = ActiveKernels(&error);
  if (kernels == nullptr) return error;
  return kernels->forward(params, runtime, x, kernel, gamma, beta, moving_mean, moving_variance,
                          y, mean_out, variance_out);
}

std::string FusedBackward(const FusedParams& params, const Runtime& runtime, const float* dy,
                          const float* x, const float* kernel, const float* gamma,
                          const float* beta, const float* y, const float* mean,
                          const float* variance, float* dx, float* dkernel, float* dgamma,
                          float* dbeta) {
  std::string error;
  const FusedKernels* kernels = ActiveKernels(&error);
  if (kernels == nullptr) return error;
  return kernels->backward(params, runtime, dy, x, kernel, gamma, beta, y, mean, variance, dx,
                           dkernel, dgamma, dbeta);
}

bool CanInvertOutput(const float* gamma, const float* beta, int64_t channels,
                     float negative_slope) {
  if (!(negative_slope > 0.0f)) return false;
  for (int64_t c = 0; c < channels; ++c) {
    const float g = std::fabs(gamma[c]);
    if (!(g >= 1e-6f) || !(std::fabs(beta[c]) <= 64.0f * g)) return false;
  }
  return true;
}

}  // namespace pyae
