// The fused op's kernels on each path: fused_conv_bn_lrelu.cc is compiled once per path, into
// namespace pyae::<path>, and fused_dispatch.cc calls the one in use.
#pragma once

#include <string>

#include "fused_conv_bn_lrelu.h"
#include "parallel.h"

namespace pyae {

// FusedForward and FusedBackward of one path (fused_conv_bn_lrelu.h has their contracts).
struct FusedKernels {
  std::string (*forward)(const FusedParams&, const Runtime&, const float* x, const float* kernel,
                         const float* gamma, const float* beta, const float* moving_mean,
                         const float* moving_variance, float* y, float* mean_out,
                         float* variance_out);
  std::string (*backward)(const FusedParams&, const Runtime&, const float* dy, const float* x,
                          const float* kernel, const float* gamma, const float* beta,
                          const float* y, const float* mean, const float* variance, float* dx,
                          float* dkernel, float* dgamma, float* dbeta);
};

namespace avx512 {
const FusedKernels& Kernels();
}
namespace avx2 {
const FusedKernels& Kernels();
}
namespace generic {
const FusedKernels& Kernels();
}

}  // namespace pyae
