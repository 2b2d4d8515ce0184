// The fused op's kernels on each path: fused_conv_bn_lrelu.cc is compiled once per path, into
// namespace pyae::<path>, and fused_dispatch.cc calls the one in use.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "fused_conv_bn_lrelu.h"
#include "parallel.h"

namespace pyae {

// Writes the float32 values of images [first, end) to `piece` (their values only, from the
// first image's): one operand of a conv, a few images at a time.
using ImagePieces = std::function<void(int64_t first, int64_t end, float* piece)>;

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
  // The float32 convs of a Conv2D (not transposed) whose operands the caller hands over a few
  // images at a time: the bf16 op's route at few input channels (fused_bf16.cc), where it
  // converts its bf16 x and dz into these pieces. Multi-threaded over the batch like the rest.
  //   z_of_pieces: z = conv(x, kernel) into `z` (whole batch); with mean_out and
  //     variance_out (non-null) also z's batch statistics.
  //   filter_grad_of_pieces: dkernel = patches(x)^T dz.
  void (*z_of_pieces)(const ConvGeometry&, const Runtime&, const float* kernel,
                      const ImagePieces& x_pieces, float* z, float* mean_out,
                      float* variance_out);
  void (*filter_grad_of_pieces)(const ConvGeometry&, const Runtime&, const ImagePieces& x_pieces,
                                const ImagePieces& dz_pieces, float* dkernel);
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
