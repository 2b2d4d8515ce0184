// pybind11 entry points of the CUDA kernels on pyae._native (built when PYAE_WITH_CUDA=1).
#ifndef PYAE_OPS_BINDINGS_GPU_BINDINGS_H_
#define PYAE_OPS_BINDINGS_GPU_BINDINGS_H_

#include <pybind11/pybind11.h>

// Adds conv_bn_lrelu_forward_cuda, conv_bn_lrelu_backward_cuda,
// conv_bn_lrelu_output_shape and cuda_device_info to the module.
void register_gpu_bindings(pybind11::module_& m);

#endif  // PYAE_OPS_BINDINGS_GPU_BINDINGS_H_
