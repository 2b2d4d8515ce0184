// Error reporting for the CUDA kernels: a failure becomes a message, never an abort.
#ifndef PYAE_OPS_KERNELS_CUDA_CUDA_STATUS_CUH_
#define PYAE_OPS_KERNELS_CUDA_CUDA_STATUS_CUH_

#include <cstdarg>
#include <cstdio>
#include <string>

#include <cuda_runtime_api.h>

namespace pyae_cuda {

// The API returns `const char*`; the text lives here until the next error on this thread.
inline const char* set_error(const char* format, ...) {
  thread_local std::string message;
  char buffer[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof(buffer), format, args);
  va_end(args);
  message = buffer;
  return message.c_str();
}

inline const char* cuda_error(const char* what, cudaError_t err, const char* file, int line) {
  return set_error("CUDA error in %s (%s:%d): %s (%s)", what, file, line,
                   cudaGetErrorName(err), cudaGetErrorString(err));
}

}  // namespace pyae_cuda

// Evaluates a cudaError_t expression; returns its message from the enclosing function.
#define PYAE_CUDA_RETURN_IF_ERROR(expr)                                         \
  do {                                                                          \
    cudaError_t pyae_err_ = (expr);                                             \
    if (pyae_err_ != cudaSuccess) {                                             \
      return ::pyae_cuda::cuda_error(#expr, pyae_err_, __FILE__, __LINE__);     \
    }                                                                           \
  } while (0)

// After every <<<>>> launch (kernel_name: a string literal): a bad configuration or an
// earlier asynchronous fault is reported by cudaGetLastError.
#define PYAE_CUDA_CHECK_LAUNCH(kernel_name)                                              \
  do {                                                                                   \
    cudaError_t pyae_err_ = cudaGetLastError();                                          \
    if (pyae_err_ != cudaSuccess) {                                                      \
      return ::pyae_cuda::cuda_error("launch of " kernel_name, pyae_err_, __FILE__, __LINE__); \
    }                                                                                    \
  } while (0)

// Propagates a `const char*` status from a helper.
#define PYAE_RETURN_IF_FAILED(expr)         \
  do {                                      \
    const char* pyae_status_ = (expr);      \
    if (pyae_status_ != nullptr) {          \
      return pyae_status_;                  \
    }                                       \
  } while (0)

#endif  // PYAE_OPS_KERNELS_CUDA_CUDA_STATUS_CUH_
