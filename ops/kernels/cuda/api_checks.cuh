// Argument checks shared by the forward and backward entry points.
#ifndef PYAE_OPS_KERNELS_CUDA_API_CHECKS_CUH_
#define PYAE_OPS_KERNELS_CUDA_API_CHECKS_CUH_

#include <cstddef>

#include "conv_geometry.h"
#include "cuda_status.cuh"
#include "fused_conv_bn_lrelu_cuda.h"

namespace pyae_cuda {

inline const char* check_params(const PyaeFusedParams* params) {
  if (params == nullptr) return set_error("params is null");
  // The kernel contract's rule (conv_geometry.h), as the CPU kernels check it.
  const std::string err = pyae::CheckOpParams(params->epsilon, params->negative_slope);
  return err.empty() ? nullptr : set_error("%s", err.c_str());
}

inline const char* check_workspace(size_t needed, const void* workspace, size_t given) {
  if (given < needed || (needed > 0 && workspace == nullptr)) {
    return set_error("workspace too small: %zu bytes needed, %zu given", needed, given);
  }
  return nullptr;
}

}  // namespace pyae_cuda

#endif  // PYAE_OPS_KERNELS_CUDA_API_CHECKS_CUH_
