// Argument checks shared by the forward and backward entry points.
#ifndef PYAE_OPS_KERNELS_CUDA_API_CHECKS_CUH_
#define PYAE_OPS_KERNELS_CUDA_API_CHECKS_CUH_

#include <cstddef>

#include "cuda_status.cuh"
#include "fused_conv_bn_lrelu_cuda.h"

namespace pyae_cuda {

inline const char* check_params(const PyaeFusedParams* params) {
  if (params == nullptr) return set_error("params is null");
  if (!(params->epsilon > 0.0f)) return set_error("epsilon must be > 0, got %g", params->epsilon);
  if (!(params->negative_slope >= 0.0f)) {
    return set_error("negative_slope must be >= 0, got %g", params->negative_slope);
  }
  return nullptr;
}

inline const char* check_workspace(size_t needed, const void* workspace, size_t given) {
  if (given < needed || (needed > 0 && workspace == nullptr)) {
    return set_error("workspace too small: %zu bytes needed, %zu given", needed, given);
  }
  return nullptr;
}

}  // namespace pyae_cuda

#endif  // PYAE_OPS_KERNELS_CUDA_API_CHECKS_CUH_
