// The bf16 kernels of one path (fused_bf16.h has their contracts): bf16_dispatch.cc calls the
// one ActiveBf16Path() names. Today only pyae::avx512bf16 (conv_bf16.cc, fused_bf16.cc); an
// AMX path would add a namespace with the same Kernels().
#pragma once

#include <string>

#include "fused_bf16.h"

namespace pyae {

struct Bf16Kernels {
  std::string (*forward)(const FusedParams&, const Runtime&, const Bf16* x, const float* kernel,
                         const float* gamma, const float* beta, const float* moving_mean,
                         const float* moving_variance, Bf16* y, float* mean_out,
                         float* variance_out, const Bf16Workspace& workspace);
  std::string (*backward)(const FusedParams&, const Runtime&, const Bf16* dy, const Bf16* x,
                          const float* kernel, const float* gamma, const float* beta,
                          const Bf16* y, const float* mean, const float* variance, Bf16* dx,
                          float* dkernel, float* dgamma, float* dbeta,
                          const Bf16Workspace& workspace);
  void (*conv)(const ConvGeometry&, const Runtime&, const Bf16* big, const float* filter,
               float* small);
  void (*conv_transpose)(const ConvGeometry&, const Runtime&, const Bf16* small,
                         const float* filter, float* big);
  void (*filter_grad)(const ConvGeometry&, const Runtime&, const Bf16* big, const Bf16* small,
                      float* dfilter);
};

namespace avx512bf16 {
const Bf16Kernels& Kernels();
}

}  // namespace pyae
