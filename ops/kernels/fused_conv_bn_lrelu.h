// Fused Conv2D / Conv2DTranspose + BatchNorm + LeakyReLU on the CPU, NHWC float32.
//
//   z = conv(x, kernel)                     (no bias; a bias before BN is redundant)
//   training:  mean, var = moments of z over N, H, W (biased variance)
//   inference: mean, var = the moving statistics passed in
//   y = leaky_relu(gamma * (z - mean) / sqrt(var + epsilon) + beta, negative_slope)
//
// The backward keeps no activation but y (and x, the previous block's output): it recovers
// the normalised pre-activation from y by inverting LeakyReLU and the affine step where that
// is exact (see CanInvertOutput) and recomputes z from x otherwise.
// Functions return "" on success or a message naming the offending value.
#pragma once

#include <cstdint>
#include <string>

#include "conv_geometry.h"
#include "parallel.h"

namespace pyae {

struct FusedParams {
  ConvGeometry geometry;
  float epsilon = 1e-3f;
  float negative_slope = 0.3f;
  bool training = false;
};

// y: [batch, z_h, z_w, z_c]; mean_out/variance_out: [z_c], the statistics y was normalised
// with (the batch's in training, copies of the moving ones in inference).
std::string FusedForward(const FusedParams& params, const Runtime& runtime, const float* x,
                         const float* kernel, const float* gamma, const float* beta,
                         const float* moving_mean, const float* moving_variance, float* y,
                         float* mean_out, float* variance_out);

// mean/variance: the statistics the forward used (its mean_out/variance_out). dx may be null
// when the caller does not need it (it is then not computed).
std::string FusedBackward(const FusedParams& params, const Runtime& runtime, const float* dy,
                          const float* x, const float* kernel, const float* gamma,
                          const float* beta, const float* y, const float* mean,
                          const float* variance, float* dx, float* dkernel, float* dgamma,
                          float* dbeta);

// True when (u - beta) / gamma recovered from y loses at most a few ulps for every channel:
// LeakyReLU must be invertible (slope > 0), gamma away from zero and |beta| <= 64 |gamma|
// (the rounding error of u, relative to |u| <= |gamma xhat| + |beta|, is amplified by
// |beta / gamma|).
bool CanInvertOutput(const float* gamma, const float* beta, int64_t channels,
                     float negative_slope);

}  // namespace pyae
