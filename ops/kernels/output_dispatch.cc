// The output op's public functions (output_conv.h): checks, then the path isa.h has picked.
#include <string>

#include "fused_bf16.h"
#include "isa.h"
#include "output_conv.h"

namespace pyae {
namespace {

const OutputConvKernels* ActiveOutputKernels(std::string* error) {
  const IsaChoice choice = ActiveIsa();
  if (!choice.error.empty()) {
    *error = choice.error;
    return nullptr;
  }
  switch (choice.isa) {
#if defined(PYAE_BUILT_AVX512)
    case Isa::kAvx512: return &avx512::OutputKernels();
#endif
#if defined(PYAE_BUILT_AVX2)
    case Isa::kAvx2: return &avx2::OutputKernels();
#endif
    default: return &generic::OutputKernels();
  }
}

// Whether the bf16 calls run the AVX512-BF16 kernels (output_bf16.cc) rather than the path's.
bool UseBf16Kernels(const OutputConvParams& params) {
#if defined(PYAE_BUILT_AVX512BF16)
  return ActiveBf16Path().path == Bf16Path::kAvx512Bf16 &&
         avx512bf16::OutputApplies(params.geometry);
#else
  (void)params;
  return false;
#endif
}

}  // namespace

std::string ParseOutputActivation(const std::string& text, OutputActivation* activation) {
  if (text == "sigmoid") {
    *activation = OutputActivation::kSigmoid;
  } else if (text == "linear") {
    *activation = OutputActivation::kLinear;
  } else {
    return Received("activation must be 'sigmoid' or 'linear'", "activation", "'" + text + "'");
  }
  return "";
}

std::string MakeOutputConvParams(const int64_t x_shape[4], const int64_t kernel_shape[4],
                                 int64_t stride_h, int64_t stride_w,
                                 const std::string& activation, OutputConvParams* params) {
  const std::string err = ParseOutputActivation(activation, &params->activation);
  if (!err.empty()) return err;
  return MakeGeometry(x_shape, kernel_shape, stride_h, stride_w, Padding::kSame,
                      /*transpose=*/true, &params->geometry);
}

std::string OutputConvForward(const OutputConvParams& params, const Runtime& runtime,
                              const float* x, const float* kernel, const float* bias, float* y) {
  std::string error;
  const OutputConvKernels* kernels = ActiveOutputKernels(&error);
  if (kernels != nullptr) kernels->forward(params, runtime, x, kernel, bias, y);
  return error;
}

std::string OutputConvForward(const OutputConvParams& params, const Runtime& runtime,
                              const Bf16* x, const float* kernel, const float* bias,
                              Bf16* y) {
  std::string error;
  const OutputConvKernels* kernels = ActiveOutputKernels(&error);
  if (kernels == nullptr) return error;
#if defined(PYAE_BUILT_AVX512BF16)
  if (UseBf16Kernels(params)) {
    avx512bf16::OutputForward(params, runtime, x, kernel, bias, y);
    return "";
  }
#endif
  kernels->forward_bf16(params, runtime, x, kernel, bias, y);
  return "";
}

std::string OutputConvBackward(const OutputConvParams& params, const Runtime& runtime,
                               const float* dy, const float* y, const float* x,
                               const float* kernel, float* dx, float* dkernel, float* dbias) {
  std::string error;
  const OutputConvKernels* kernels = ActiveOutputKernels(&error);
  if (kernels != nullptr) kernels->backward(params, runtime, dy, y, x, kernel, dx, dkernel, dbias);
  return error;
}

std::string OutputConvBackward(const OutputConvParams& params, const Runtime& runtime,
                               const Bf16* dy, const Bf16* y, const Bf16* x,
                               const float* kernel, Bf16* dx, float* dkernel,
                               float* dbias) {
  std::string error;
  const OutputConvKernels* kernels = ActiveOutputKernels(&error);
  if (kernels == nullptr) return error;
#if defined(PYAE_BUILT_AVX512BF16)
  if (UseBf16Kernels(params)) {
    avx512bf16::OutputBackward(params, runtime, dy, y, x, kernel, dx, dkernel, dbias);
    return "";
  }
#endif
  kernels->backward_bf16(params, runtime, dy, y, x, kernel, dx, dkernel, dbias);
  return "";
}

}  // namespace pyae
