// pybind11 module pyae._native: the CPU kernels on numpy arrays, plus build_info().
// Thin by design: shapes are checked by the kernels' own geometry code.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "conv_geometry.h"
#include "fused_bf16.h"
#include "fused_conv_bn_lrelu.h"
#include "isa.h"
#include "output_conv.h"
#include "parallel.h"
#ifdef PYAE_WITH_CUDA
#include "gpu_bindings.h"
#endif

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
// bfloat16 values as their bits (numpy: ml_dtypes.bfloat16 arrays viewed as uint16).
using Bf16Array = py::array_t<uint16_t, py::array::c_style>;

namespace {

std::vector<int64_t> ShapeOf(const FloatArray& array, const char* name, int rank) {
  if (array.ndim() != rank) {
    throw py::value_error(std::string(name) + " must have rank " + std::to_string(rank) +
                          ", got rank " + std::to_string(array.ndim()));
  }
  return std::vector<int64_t>(array.shape(), array.shape() + rank);
}

void CheckVector(const FloatArray& array, const char* name, int64_t channels) {
  if (array.ndim() != 1 || array.shape(0) != channels) {
    throw py::value_error(std::string(name) + " must have shape (" + std::to_string(channels) +
                          ",) to match the kernel's filters");
  }
}

// The kernel contract (conv_geometry.h) checks everything; this only raises its message.
void RaiseIfFailed(const std::string& err) {
  if (!err.empty()) throw py::value_error(err);
}

pyae::Padding PaddingOf(const std::string& padding) {
  pyae::Padding parsed;
  RaiseIfFailed(pyae::ParsePadding(padding, &parsed));
  return parsed;
}

pyae::FusedParams MakeParams(const FloatArray& x, const FloatArray& kernel,
                             std::pair<int64_t, int64_t> strides, const std::string& padding,
                             float epsilon, float negative_slope, bool training,
                             bool transpose) {
  auto x_shape = ShapeOf(x, "x", 4);
  auto kernel_shape = ShapeOf(kernel, "kernel", 4);
  RaiseIfFailed(pyae::CheckOpParams(epsilon, negative_slope));
  pyae::FusedParams params;
  RaiseIfFailed(pyae::MakeGeometry(x_shape.data(), kernel_shape.data(), strides.first,
                                   strides.second, PaddingOf(padding), transpose,
                                   &params.geometry));
  params.epsilon = epsilon;
  params.negative_slope = negative_slope;
  params.training = training;
  return params;
}

// The contract's output length along one axis (Python's pyae.ops.geometry asks this).
int64_t OutputLength(int64_t length, int64_t kernel, int64_t stride, const std::string& padding,
                     bool transpose) {
  RaiseIfFailed(pyae::CheckStrides(stride, stride));
  if (kernel < 1) {
    RaiseIfFailed(pyae::Received("kernel size must be >= 1", "kernel", std::to_string(kernel)));
  }
  return pyae::OutputLength(length, kernel, stride, PaddingOf(padding), transpose);
}

// The contract's check of epsilon and negative_slope: "" or its message.
std::string CheckOpParams(float epsilon, float negative_slope) {
  return pyae::CheckOpParams(epsilon, negative_slope);
}

pyae::Runtime DefaultRuntime() {
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  return {pyae::StdThreadRunner(threads), threads};
}

// Outputs start as NaN so a kernel that misses an element is caught by any comparison.
FloatArray Poisoned(const std::vector<int64_t>& shape) {
  FloatArray array(shape);
  std::fill(array.mutable_data(), array.mutable_data() + array.size(),
            std::numeric_limits<float>::quiet_NaN());
  return array;
}

std::vector<int64_t> ZShape(const pyae::ConvGeometry& g) {
  const auto shape = g.z_shape();
  return {shape.begin(), shape.end()};
}

py::tuple Forward(const FloatArray& x, const FloatArray& kernel, const FloatArray& gamma,
                  const FloatArray& beta, const FloatArray& moving_mean,
                  const FloatArray& moving_variance, std::pair<int64_t, int64_t> strides,
                  const std::string& padding, float epsilon, float negative_slope,
                  bool training, bool transpose) {
  auto params = MakeParams(x, kernel, strides, padding, epsilon, negative_slope, training,
                           transpose);
  const int64_t channels = params.geometry.z_channels();
  for (auto [array, name] : {std::pair{&gamma, "gamma"}, {&beta, "beta"},
                             {&moving_mean, "moving_mean"}, {&moving_variance, "moving_variance"}}) {
    CheckVector(*array, name, channels);
  }
  FloatArray y = Poisoned(ZShape(params.geometry));
  FloatArray mean = Poisoned({channels}), variance = Poisoned({channels});
  std::string err;
  {
    py::gil_scoped_release release;
    err = pyae::FusedForward(params, DefaultRuntime(), x.data(), kernel.data(), gamma.data(),
                             beta.data(), moving_mean.data(), moving_variance.data(),
                             y.mutable_data(), mean.mutable_data(), variance.mutable_data());
  }
  if (!err.empty()) throw py::value_error(err);
  return py::make_tuple(y, mean, variance);
}

py::tuple Backward(const FloatArray& dy, const FloatArray& x, const FloatArray& kernel,
                   const FloatArray& gamma, const FloatArray& beta, const FloatArray& y,
                   const FloatArray& mean, const FloatArray& variance,
                   std::pair<int64_t, int64_t> strides, const std::string& padding,
                   float epsilon, float negative_slope, bool training, bool transpose) {
  auto params = MakeParams(x, kernel, strides, padding, epsilon, negative_slope, training,
                           transpose);
  const auto z_shape = ZShape(params.geometry);
  const int64_t channels = params.geometry.z_channels();
  for (auto [array, name] : {std::pair{&gamma, "gamma"}, {&beta, "beta"}, {&mean, "mean"},
                             {&variance, "variance"}}) {
    CheckVector(*array, name, channels);
  }
  for (auto [array, name] : {std::pair{&dy, "dy"}, {&y, "y"}}) {
    if (ShapeOf(*array, name, 4) != z_shape) {
      throw py::value_error(std::string(name) + " must have the output's shape");
    }
  }
  FloatArray dx = Poisoned(ShapeOf(x, "x", 4));
  FloatArray dkernel = Poisoned(ShapeOf(kernel, "kernel", 4));
  FloatArray dgamma = Poisoned({channels}), dbeta = Poisoned({channels});
  std::string err;
  {
    py::gil_scoped_release release;
    err = pyae::FusedBackward(params, DefaultRuntime(), dy.data(), x.data(), kernel.data(),
                              gamma.data(), beta.data(), y.data(), mean.data(), variance.data(),
                              dx.mutable_data(), dkernel.mutable_data(), dgamma.mutable_data(),
                              dbeta.mutable_data());
  }
  if (!err.empty()) throw py::value_error(err);
  return py::make_tuple(dx, dkernel, dgamma, dbeta);
}

// The bf16 convolutions alone (fused_bf16.h), for the kernel tests: x's conv (or, transposed,
// its conv^T) with the kernel rounded to bf16, in float32.
FloatArray ConvBf16(const Bf16Array& x, const FloatArray& kernel,
                    std::pair<int64_t, int64_t> strides, const std::string& padding,
                    bool transpose) {
  const std::vector<int64_t> x_shape(x.shape(), x.shape() + x.ndim());
  if (x.ndim() != 4) throw py::value_error("x must have rank 4");
  auto params = MakeParams(FloatArray(x_shape), kernel, strides, padding, 1e-3f, 0.3f, false,
                           transpose);
  const pyae::ConvGeometry& g = params.geometry;
  FloatArray z = Poisoned(ZShape(g));
  std::string err;
  {
    py::gil_scoped_release release;
    err = transpose ? pyae::ConvTransposeBf16(g, DefaultRuntime(), x.data(), kernel.data(),
                                              z.mutable_data())
                    : pyae::ConvBf16(g, DefaultRuntime(), x.data(), kernel.data(),
                                     z.mutable_data());
  }
  RaiseIfFailed(err);
  return z;
}

// The filter gradient patches(big)^T x small in float32, shaped like `kernel_shape`.
FloatArray FilterGradBf16(const Bf16Array& big, const Bf16Array& small,
                          std::vector<int64_t> kernel_shape, std::pair<int64_t, int64_t> strides,
                          const std::string& padding) {
  if (big.ndim() != 4 || small.ndim() != 4 || kernel_shape.size() != 4) {
    throw py::value_error("big, small and kernel_shape must have rank 4");
  }
  const std::vector<int64_t> big_shape(big.shape(), big.shape() + 4);
  auto params = MakeParams(FloatArray(big_shape), FloatArray(kernel_shape), strides, padding,
                           1e-3f, 0.3f, false, false);
  const pyae::ConvGeometry& g = params.geometry;
  if (std::vector<int64_t>(small.shape(), small.shape() + 4) != ZShape(g)) {
    throw py::value_error("small must have the conv's output shape");
  }
  FloatArray dfilter = Poisoned(kernel_shape);
  std::string err;
  {
    py::gil_scoped_release release;
    err = pyae::FilterGradBf16(g, DefaultRuntime(), big.data(), small.data(),
                               dfilter.mutable_data());
  }
  RaiseIfFailed(err);
  return dfilter;
}

// --- the output op (output_conv.h): float32 arrays, or bfloat16 as their bits --------------

template <typename Array>
std::vector<int64_t> Shape4(const Array& array, const char* name) {
  if (array.ndim() != 4) {
    throw py::value_error(std::string(name) + " must have rank 4, got rank " +
                          std::to_string(array.ndim()));
  }
  return std::vector<int64_t>(array.shape(), array.shape() + 4);
}

template <typename Array>
Array PoisonedLike(const std::vector<int64_t>& shape) {
  Array array(shape);
  using T = typename Array::value_type;
  // float32 NaN, or the bits of a bfloat16 NaN.
  const T nan = std::is_same_v<T, float> ? static_cast<T>(std::numeric_limits<float>::quiet_NaN())
                                         : static_cast<T>(0x7FC0);
  std::fill(array.mutable_data(), array.mutable_data() + array.size(), nan);
  return array;
}

template <typename Array>
pyae::OutputConvParams OutputParams(const Array& x, const FloatArray& kernel,
                                    std::pair<int64_t, int64_t> strides,
                                    const std::string& activation) {
  const auto x_shape = Shape4(x, "x");
  const auto kernel_shape = ShapeOf(kernel, "kernel", 4);
  pyae::OutputConvParams params;
  RaiseIfFailed(pyae::MakeOutputConvParams(x_shape.data(), kernel_shape.data(), strides.first,
                                           strides.second, activation, &params));
  return params;
}

template <typename Array>
Array OutputForward(const Array& x, const FloatArray& kernel, const FloatArray& bias,
                    std::pair<int64_t, int64_t> strides, const std::string& activation) {
  const auto params = OutputParams(x, kernel, strides, activation);
  const pyae::ConvGeometry& g = params.geometry;
  CheckVector(bias, "bias", g.big_c);
  Array y = PoisonedLike<Array>({g.batch, g.big_h, g.big_w, g.big_c});
  std::string err;
  {
    py::gil_scoped_release release;
    err = pyae::OutputConvForward(params, DefaultRuntime(), x.data(), kernel.data(), bias.data(),
                                  y.mutable_data());
  }
  RaiseIfFailed(err);
  return y;
}

template <typename Array>
py::tuple OutputBackward(const Array& dy, const Array& y, const Array& x,
                         const FloatArray& kernel, std::pair<int64_t, int64_t> strides,
                         const std::string& activation) {
  const auto params = OutputParams(x, kernel, strides, activation);
  const pyae::ConvGeometry& g = params.geometry;
  const std::vector<int64_t> y_shape = {g.batch, g.big_h, g.big_w, g.big_c};
  if (Shape4(dy, "dy") != y_shape || Shape4(y, "y") != y_shape) {
    throw py::value_error("dy and y must have the output's shape");
  }
  Array dx = PoisonedLike<Array>(Shape4(x, "x"));
  FloatArray dkernel = Poisoned(ShapeOf(kernel, "kernel", 4));
  FloatArray dbias = Poisoned({g.big_c});
  std::string err;
  {
    py::gil_scoped_release release;
    err = pyae::OutputConvBackward(params, DefaultRuntime(), dy.data(), y.data(), x.data(),
                                   kernel.data(), dx.mutable_data(), dkernel.mutable_data(),
                                   dbias.mutable_data());
  }
  RaiseIfFailed(err);
  return py::make_tuple(dx, dkernel, dbias);
}

py::dict BuildInfo() {
  py::dict info;
  info["cpu_kernels"] = true;
  info["blas"] = "OpenBLAS (scipy-openblas32)";
#ifdef PYAE_WITH_CUDA
  info["cuda_kernels"] = true;
#else
  info["cuda_kernels"] = false;
#endif
  info["compiler"] = PYAE_COMPILER;
  info["compile_flags"] = PYAE_COMPILE_FLAGS;
  info["isa"] = pyae::IsaName(pyae::ActiveIsa().isa);
  info["bf16"] = pyae::Bf16PathName(pyae::ActiveBf16Path().path);
  return info;
}

// This module's own kernel path (it links its own copy of the kernels, apart from the TF op's).
void SetIsa(const std::string& name) {
  const std::string err = pyae::SelectIsa(name);
  if (!err.empty()) throw py::value_error(err + ". Received: isa='" + name + "'");
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "pyae's fused Conv + BatchNorm + LeakyReLU kernels on numpy arrays.";
  m.def("conv_bn_lrelu_forward", &Forward, py::arg("x"), py::arg("kernel"), py::arg("gamma"),
        py::arg("beta"), py::arg("moving_mean"), py::arg("moving_variance"),
        py::arg("strides") = std::pair<int64_t, int64_t>{1, 1}, py::arg("padding") = "same",
        py::arg("epsilon") = 1e-3f, py::arg("negative_slope") = 0.3f,
        py::arg("training") = false, py::arg("transpose") = false,
        "Returns (y, mean, variance); the statistics are the batch's in training.");
  m.def("conv_bn_lrelu_backward", &Backward, py::arg("dy"), py::arg("x"), py::arg("kernel"),
        py::arg("gamma"), py::arg("beta"), py::arg("y"), py::arg("mean"), py::arg("variance"),
        py::arg("strides") = std::pair<int64_t, int64_t>{1, 1}, py::arg("padding") = "same",
        py::arg("epsilon") = 1e-3f, py::arg("negative_slope") = 0.3f,
        py::arg("training") = false, py::arg("transpose") = false,
        "Returns (dx, dkernel, dgamma, dbeta) given the forward's y, mean and variance.");
  m.def("output_length", &OutputLength, py::arg("length"), py::arg("kernel"), py::arg("stride"),
        py::arg("padding"), py::arg("transpose") = false,
        "Length of the op's output along one axis (the kernel contract's geometry).");
  m.def("check_op_params", &CheckOpParams, py::arg("epsilon"), py::arg("negative_slope"),
        "'' when the kernels accept epsilon and negative_slope, else the reason.");
  m.def("conv_bf16", &ConvBf16, py::arg("x"), py::arg("kernel"),
        py::arg("strides") = std::pair<int64_t, int64_t>{1, 1}, py::arg("padding") = "same",
        py::arg("transpose") = false,
        "z = conv(x, kernel) (conv^T when transposed) on bf16 bits, float32 result.");
  m.def("filter_grad_bf16", &FilterGradBf16, py::arg("big"), py::arg("small"),
        py::arg("kernel_shape"), py::arg("strides") = std::pair<int64_t, int64_t>{1, 1},
        py::arg("padding") = "same", "patches(big)^T x small on bf16 bits, float32 result.");
  m.def("output_conv_forward", &OutputForward<FloatArray>, py::arg("x"), py::arg("kernel"),
        py::arg("bias"), py::arg("strides") = std::pair<int64_t, int64_t>{1, 1},
        py::arg("activation") = "sigmoid",
        "y = activation(conv2d_transpose(x, kernel, SAME) + bias); kernel (kh, kw, out, in).");
  m.def("output_conv_backward", &OutputBackward<FloatArray>, py::arg("dy"), py::arg("y"),
        py::arg("x"), py::arg("kernel"), py::arg("strides") = std::pair<int64_t, int64_t>{1, 1},
        py::arg("activation") = "sigmoid", "Returns (dx, dkernel, dbias) given the forward's y.");
  m.def("output_conv_forward_bf16", &OutputForward<Bf16Array>, py::arg("x"), py::arg("kernel"),
        py::arg("bias"), py::arg("strides") = std::pair<int64_t, int64_t>{1, 1},
        py::arg("activation") = "sigmoid", "output_conv_forward on bf16 bits (uint16).");
  m.def("output_conv_backward_bf16", &OutputBackward<Bf16Array>, py::arg("dy"), py::arg("y"),
        py::arg("x"), py::arg("kernel"), py::arg("strides") = std::pair<int64_t, int64_t>{1, 1},
        py::arg("activation") = "sigmoid", "output_conv_backward on bf16 bits (uint16).");
  m.def("build_info", &BuildInfo);
  m.def("set_isa", &SetIsa, py::arg("isa"),
        "Runs the kernels on path 'avx512', 'avx2', 'generic' or 'auto' (the best here).");
#ifdef PYAE_WITH_CUDA
  register_gpu_bindings(m);
#endif
}
