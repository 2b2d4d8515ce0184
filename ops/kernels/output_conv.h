// The models' output layer as one op, on the CPU:
//
//   y = activation(conv2d_transpose(x, kernel, strides, SAME) + bias)     activation: sigmoid
//                                                                          or linear
// x, y NHWC in float32, or bfloat16 (mixed precision: converted on load and store, computed
// in float32); kernel (kh, kw, out, in) as Keras' Conv2DTranspose stores it, bias, and their
// gradients always float32.
//
// Built for the tutorial's output layers (32 channels in, 1 or 3 out), where a GEMM-based conv
// has almost no work per matrix row and runs at a few GFLOP/s: every output value is a dot
// product over the input channels of its 1-4 (stride 2) or 9 (stride 1) taps, computed with
// the channels in vectors, one float32 accumulator per output channel and one horizontal sum
// per output value; a strided layer gathers only the taps of each output phase (no zero
// stuffing). The backward reads x once: each input pixel's dx and its share of dkernel are
// computed in one pass. Geometry as in conv_geometry.h (transposed: x is the small image, y
// the big one). Functions return "" on success or a message naming the offending value.
#pragma once

#include <cstdint>
#include <string>

#include "bf16.h"
#include "conv_geometry.h"
#include "parallel.h"

namespace pyae {

enum class OutputActivation { kLinear = 0, kSigmoid = 1 };

struct OutputConvParams {
  ConvGeometry geometry;  // transpose = true, SAME padding
  OutputActivation activation = OutputActivation::kSigmoid;
};

// "sigmoid" or "linear".
std::string ParseOutputActivation(const std::string& text, OutputActivation* activation);

// Fills params from x's NHWC shape and the kernel's (kh, kw, out, in), or says what is wrong.
std::string MakeOutputConvParams(const int64_t x_shape[4], const int64_t kernel_shape[4],
                                 int64_t stride_h, int64_t stride_w,
                                 const std::string& activation, OutputConvParams* params);

// y: [batch, x_h * stride_h, x_w * stride_w, out].
std::string OutputConvForward(const OutputConvParams& params, const Runtime& runtime,
                              const float* x, const float* kernel, const float* bias, float* y);
std::string OutputConvForward(const OutputConvParams& params, const Runtime& runtime,
                              const Bf16* x, const float* kernel, const float* bias,
                              Bf16* y);

// From dy and the forward's y (the activation's derivative is taken from y): dx like x,
// dkernel like kernel, dbias [out].
std::string OutputConvBackward(const OutputConvParams& params, const Runtime& runtime,
                               const float* dy, const float* y, const float* x,
                               const float* kernel, float* dx, float* dkernel, float* dbias);
std::string OutputConvBackward(const OutputConvParams& params, const Runtime& runtime,
                               const Bf16* dy, const Bf16* y, const Bf16* x,
                               const float* kernel, Bf16* dx, float* dkernel,
                               float* dbias);

// The kernels of one path (output_conv.cc is compiled once per path, into pyae::<path>).
struct OutputConvKernels {
  void (*forward)(const OutputConvParams&, const Runtime&, const float* x, const float* kernel,
                  const float* bias, float* y);
  void (*forward_bf16)(const OutputConvParams&, const Runtime&, const Bf16* x,
                       const float* kernel, const float* bias, Bf16* y);
  void (*backward)(const OutputConvParams&, const Runtime&, const float* dy, const float* y,
                   const float* x, const float* kernel, float* dx, float* dkernel, float* dbias);
  void (*backward_bf16)(const OutputConvParams&, const Runtime&, const Bf16* dy,
                        const Bf16* y, const Bf16* x, const float* kernel,
                        Bf16* dx, float* dkernel, float* dbias);
};

namespace avx512 {
const OutputConvKernels& OutputKernels();
}

// The bf16 kernels on AVX512-BF16 (output_bf16.cc; built where PYAE_BUILT_AVX512BF16), which
// output_dispatch.cc runs instead of the path's forward_bf16 / backward_bf16 where the bf16
// path (fused_bf16.h's ActiveBf16Path) is in use and OutputApplies: an even number of at most
// 32 input channels, kw * (out rounded up to even) <= 16 and kh * kw * out <= 64 (the tutorial's
// layers: 32 -> 1 and 32 -> 3 through 3 x 3). They round the kernel and dpre = dy * f'(y) to
// bf16 and multiply on vdpbf16ps, as Keras' layer does its conv and its gradients in bf16
// under mixed_bfloat16 (the path's own bf16 kernels compute from the float32 kernel and dpre).
namespace avx512bf16 {
bool OutputApplies(const ConvGeometry& g);
void OutputForward(const OutputConvParams& params, const Runtime& runtime, const Bf16* x,
                   const float* kernel, const float* bias, Bf16* y);
void OutputBackward(const OutputConvParams& params, const Runtime& runtime, const Bf16* dy,
                    const Bf16* y, const Bf16* x, const float* kernel, Bf16* dx, float* dkernel,
                    float* dbias);
}  // namespace avx512bf16
namespace avx2 {
const OutputConvKernels& OutputKernels();
}
namespace generic {
const OutputConvKernels& OutputKernels();
}

}  // namespace pyae
