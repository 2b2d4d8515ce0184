// Mixed precision on the CPU: the fused op with bfloat16 activations (x, y, dy, dx) and
// float32 everything else, as Keras' "mixed_bfloat16" policy computes the three layers.
//
//   z = conv(x, round_bf16(kernel))          bf16 products, float32 accumulation, z kept float32
//   training:  mean, var = moments of z in float32/double (as Keras' BN casts to float32)
//   y = round_bf16(leaky_relu(gamma * (z - mean) / sqrt(var + epsilon) + beta))
//
// The kernel, gamma, beta, the statistics and every gradient but dx stay float32: the kernel is
// the float32 variable, rounded to bf16 once per call while it is packed for the kernels (no
// separate cast op, no bf16 copy kept), and its gradient is what the variable needs. The
// backward recovers xhat from y by inverting LeakyReLU and the affine step where that is as
// accurate as Keras' batch norm of a bf16 z (|beta| <= |gamma|: xhat off by at most
// u (|xhat| + 1), u = 2^-8) and recomputes z from x otherwise; it rounds dz to bf16 for the
// two conv gradients (as Keras' bf16 conv receives it) and reduces in float32/double.
//
// Kernels per path (Bf16Path): AVX512-BF16 (vdpbf16ps: each float32 lane accumulates a pair of
// bf16 products, so the reduction axis is consumed in pairs). An AMX path would be one more
// enum value and one more namespace behind the same dispatch (bf16_dispatch.cc); this build
// has none. Functions return "" on success or a message naming the offending value.
#pragma once

#include <cstdint>
#include <string>

#include "bf16.h"
#include "conv_geometry.h"
#include "fused_conv_bn_lrelu.h"
#include "parallel.h"

namespace pyae {

enum class Bf16Path { kNone = 0, kAvx512Bf16 = 1 };

// "none" or "avx512bf16".
const char* Bf16PathName(Bf16Path path);

// The bf16 kernels in use and why; kNone (with the reason) where this build, the CPU, or the
// float32 path in use (PYAE_ISA / set_isa forcing avx2 or generic) rules them out.
struct Bf16Choice {
  Bf16Path path = Bf16Path::kNone;
  std::string reason;
};
Bf16Choice ActiveBf16Path();

// Workspaces the caller lends the bf16 kernels, each g.batch * z_pixels * z_channels values
// that the kernels overwrite. The caller allocates them because it can reuse memory from step
// to step (the TF op takes them from TensorFlow's allocator): the kernels' own allocation of
// tens of megabytes was a fresh mapping on every call, whose page faults measured about half
// of a 40 ms forward at Cartoon's shapes.
struct Bf16Workspace {
  float* z = nullptr;  // z in float32: the forward's; the backward's where !Bf16BackwardInvertsY
  Bf16* dz = nullptr;  // the backward's dz, rounded to bf16 for the two conv gradients
};

// True when the backward recovers xhat from y (bf16) as accurately as Keras' batch norm of a
// bf16 z: slope > 0, and for every channel |gamma| >= 1e-6 and |beta| <= |gamma| (fused_bf16.cc
// derives it). Otherwise it recomputes z from x, into Bf16Workspace::z.
bool Bf16BackwardInvertsY(const float* gamma, const float* beta, int64_t channels,
                          float negative_slope);

// As FusedForward/FusedBackward (fused_conv_bn_lrelu.h) with x, y, dy and dx in bf16.
std::string FusedForwardBf16(const FusedParams& params, const Runtime& runtime, const Bf16* x,
                             const float* kernel, const float* gamma, const float* beta,
                             const float* moving_mean, const float* moving_variance, Bf16* y,
                             float* mean_out, float* variance_out,
                             const Bf16Workspace& workspace);

std::string FusedBackwardBf16(const FusedParams& params, const Runtime& runtime, const Bf16* dy,
                              const Bf16* x, const float* kernel, const float* gamma,
                              const float* beta, const Bf16* y, const float* mean,
                              const float* variance, Bf16* dx, float* dkernel, float* dgamma,
                              float* dbeta, const Bf16Workspace& workspace);

// The three convolutions alone, float32 results of bf16 operands (the filter is rounded to
// bf16), for the kernel tests. g as in conv_geometry.h (big -> small; filter [patch, small_c]).
// small = conv(big, filter); big = conv^T(small, filter); dfilter = patches(big)^T x small.
std::string ConvBf16(const ConvGeometry& g, const Runtime& runtime, const Bf16* big,
                     const float* filter, float* small);
std::string ConvTransposeBf16(const ConvGeometry& g, const Runtime& runtime, const Bf16* small,
                              const float* filter, float* big);
std::string FilterGradBf16(const ConvGeometry& g, const Runtime& runtime, const Bf16* big,
                           const Bf16* small, float* dfilter);

}  // namespace pyae
