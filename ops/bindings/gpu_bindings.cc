// The CUDA fused op on any object exposing __cuda_array_interface__ (PyTorch, CuPy, Numba).
// Thin: read the interface, check shapes and dtypes (ValueError naming the bad value), call
// the C API on the caller's stream. Outputs are preallocated by the caller and written in
// place; the temporary workspace is stream-ordered (cudaMallocAsync / cudaFreeAsync).
#include "gpu_bindings.h"

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include "conv_geometry.h"
#include "fused_conv_bn_lrelu_cuda.h"

namespace py = pybind11;

namespace {

using Shape = std::vector<long long>;

struct DeviceArray {
  float* data = nullptr;
  Shape shape;
  bool readonly = false;
};

std::string shape_text(const Shape& shape) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << (shape.size() == 1 ? ",)" : ")");
  return out.str();
}

[[noreturn]] void fail(const std::string& message) { throw py::value_error(message); }

// Strides are accepted when absent or equal to those of a C-contiguous array (size-1 axes
// may carry any stride: PyTorch reports arbitrary ones there).
void check_contiguous(const py::object& strides, const Shape& shape, const char* name) {
  if (strides.is_none()) return;
  const auto given = strides.cast<std::vector<long long>>();
  if (given.size() != shape.size()) {
    fail(std::string(name) + " has " + std::to_string(given.size()) + " strides for shape " +
         shape_text(shape));
  }
  long long expected = sizeof(float);
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && given[i] != expected) {
      std::ostringstream out;
      out << name << " must be C-contiguous; got strides (in bytes) " << shape_text(given)
          << " for shape " << shape_text(shape);
      fail(out.str());
    }
    expected *= shape[i];
  }
}

DeviceArray read_cuda_array(const py::object& obj, const char* name) {
  if (obj.is_none() || !py::hasattr(obj, "__cuda_array_interface__")) {
    fail(std::string(name) + " must be a CUDA array exposing __cuda_array_interface__, got " +
         std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  const py::dict iface = obj.attr("__cuda_array_interface__");
  const std::string typestr = iface["typestr"].cast<std::string>();
  if (typestr != "<f4") {
    fail(std::string(name) + " must be float32 (typestr '<f4'), got '" + typestr + "'");
  }
  if (iface.contains("mask") && !iface["mask"].is_none()) {
    fail(std::string(name) + " must not be a masked array");
  }
  DeviceArray array;
  array.shape = iface["shape"].cast<Shape>();
  const py::tuple data = iface["data"];
  array.data = reinterpret_cast<float*>(data[0].cast<std::uintptr_t>());
  array.readonly = data[1].cast<bool>();
  long long size = 1;
  for (long long extent : array.shape) size *= extent;
  if (array.data == nullptr && size > 0) fail(std::string(name) + " has a null data pointer");
  check_contiguous(iface.contains("strides") ? py::object(iface["strides"]) : py::none(),
                   array.shape, name);
  return array;
}

DeviceArray read_output(const py::object& obj, const char* name) {
  DeviceArray array = read_cuda_array(obj, name);
  if (array.readonly) fail(std::string(name) + " is read-only but is an output");
  return array;
}

void expect_shape(const DeviceArray& array, const Shape& expected, const char* name) {
  if (array.shape != expected) {
    fail(std::string(name) + " must have shape " + shape_text(expected) + ", got " +
         shape_text(array.shape));
  }
}

void expect_rank4(const DeviceArray& array, const char* name) {
  if (array.shape.size() != 4) {
    fail(std::string(name) + " must be rank 4, got shape " + shape_text(array.shape));
  }
}

std::pair<int, int> parse_strides(const py::object& strides) {
  if (py::isinstance<py::int_>(strides)) {
    const int s = strides.cast<int>();
    return {s, s};
  }
  const auto pair = strides.cast<std::vector<int>>();
  if (pair.size() != 2) {
    fail("strides must be an int or a pair of ints. Received: strides=" +
         std::string(py::repr(strides)));
  }
  return {pair[0], pair[1]};
}

bool parse_padding_same(const std::string& padding) {
  pyae::Padding parsed;
  const std::string err = pyae::ParsePadding(padding, &parsed);
  if (!err.empty()) fail(err);
  return parsed == pyae::Padding::kSame;
}

PyaeConvShape make_shape(const Shape& x, const Shape& w, const py::object& strides,
                         const std::string& padding, bool transpose) {
  const auto [stride_h, stride_w] = parse_strides(strides);
  const bool same = parse_padding_same(padding);
  PyaeConvShape shape{};
  const char* error = pyae_cuda_make_conv_shape(
      static_cast<int>(x[0]), static_cast<int>(x[1]), static_cast<int>(x[2]),
      static_cast<int>(x[3]), static_cast<int>(w[0]), static_cast<int>(w[1]),
      static_cast<int>(w[2]), static_cast<int>(w[3]), stride_h, stride_w, same ? 1 : 0,
      transpose ? 1 : 0, &shape);
  if (error != nullptr) fail(error);
  return shape;
}

Shape output_shape_of(const PyaeConvShape& s) { return {s.batch, s.out_h, s.out_w, s.out_c}; }

// Stream-ordered scratch memory: freed on the same stream once the kernels are done with it.
class StreamWorkspace {
 public:
  StreamWorkspace(size_t bytes, cudaStream_t stream) : bytes_(bytes), stream_(stream) {
    if (bytes_ == 0) return;
    const cudaError_t err = cudaMallocAsync(&data_, bytes_, stream_);
    if (err != cudaSuccess) {
      throw std::runtime_error("cudaMallocAsync of " + std::to_string(bytes_) +
                               " workspace bytes failed: " + cudaGetErrorString(err));
    }
  }
  ~StreamWorkspace() {
    if (data_ != nullptr) static_cast<void>(cudaFreeAsync(data_, stream_));
  }
  StreamWorkspace(const StreamWorkspace&) = delete;
  StreamWorkspace& operator=(const StreamWorkspace&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_;
  cudaStream_t stream_;
  void* data_ = nullptr;
};

void raise_if_failed(const char* error) {
  if (error != nullptr) throw std::runtime_error(std::string("pyae CUDA kernel: ") + error);
}

float* optional_output(const py::object& obj, const char* name, long long channels) {
  if (obj.is_none()) return nullptr;
  const DeviceArray array = read_output(obj, name);
  expect_shape(array, {channels}, name);
  return array.data;
}

const float* channel_vector(const py::object& obj, const char* name, long long channels) {
  const DeviceArray array = read_cuda_array(obj, name);
  expect_shape(array, {channels}, name);
  return array.data;
}

// x and w of either entry point, checked, with the conv shape they make.
struct ConvInputs {
  DeviceArray x, w;
  PyaeConvShape shape;
};

ConvInputs read_conv_inputs(const py::object& x, const py::object& w, const py::object& strides,
                            const std::string& padding, bool transpose) {
  ConvInputs conv{read_cuda_array(x, "x"), read_cuda_array(w, "w"), {}};
  expect_rank4(conv.x, "x");
  expect_rank4(conv.w, "w");
  conv.shape = make_shape(conv.x.shape, conv.w.shape, strides, padding, transpose);
  return conv;
}

void conv_bn_lrelu_forward_cuda(const py::object& x, const py::object& w,
                                const py::object& gamma, const py::object& beta,
                                const py::object& mean, const py::object& var,
                                const py::object& y_out, const py::object& mean_out,
                                const py::object& var_out, const py::object& strides,
                                const std::string& padding, float epsilon, float negative_slope,
                                bool training, bool transpose, bool allow_tf32,
                                std::uintptr_t stream_handle) {
  const ConvInputs conv = read_conv_inputs(x, w, strides, padding, transpose);
  const DeviceArray& x_array = conv.x;
  const DeviceArray& w_array = conv.w;
  const PyaeConvShape& shape = conv.shape;
  const long long channels = shape.out_c;
  const DeviceArray y_array = read_output(y_out, "y_out");
  expect_shape(y_array, output_shape_of(shape), "y_out");
  const float* gamma_ptr = channel_vector(gamma, "gamma", channels);
  const float* beta_ptr = channel_vector(beta, "beta", channels);
  const float* mean_ptr = nullptr;
  const float* var_ptr = nullptr;
  if (!training || !mean.is_none()) mean_ptr = channel_vector(mean, "mean", channels);
  if (!training || !var.is_none()) var_ptr = channel_vector(var, "var", channels);
  float* mean_out_ptr = optional_output(mean_out, "mean_out", channels);
  float* var_out_ptr = optional_output(var_out, "var_out", channels);
  if (training && (mean_out_ptr == nullptr || var_out_ptr == nullptr)) {
    fail("training=True needs mean_out and var_out arrays of shape (" +
         std::to_string(channels) + ",)");
  }
  const PyaeFusedParams params{epsilon, negative_slope, training ? 1 : 0, allow_tf32 ? 1 : 0};
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  py::gil_scoped_release no_gil;
  StreamWorkspace workspace(pyae_cuda_forward_workspace_bytes(&shape, params.training), stream);
  raise_if_failed(pyae_cuda_fused_forward(&shape, &params, x_array.data, w_array.data,
                                          gamma_ptr, beta_ptr, mean_ptr, var_ptr, y_array.data,
                                          mean_out_ptr, var_out_ptr, workspace.data(),
                                          workspace.bytes(), stream));
}

void conv_bn_lrelu_backward_cuda(const py::object& dy, const py::object& x, const py::object& w,
                                 const py::object& gamma, const py::object& beta,
                                 const py::object& y, const py::object& mean,
                                 const py::object& var, const py::object& dx_out,
                                 const py::object& dw_out, const py::object& dgamma_out,
                                 const py::object& dbeta_out, const py::object& strides,
                                 const std::string& padding, float epsilon,
                                 float negative_slope, bool training, bool transpose,
                                 bool allow_tf32, std::uintptr_t stream_handle) {
  const ConvInputs conv = read_conv_inputs(x, w, strides, padding, transpose);
  const DeviceArray& x_array = conv.x;
  const DeviceArray& w_array = conv.w;
  const PyaeConvShape& shape = conv.shape;
  const long long channels = shape.out_c;
  const DeviceArray dy_array = read_cuda_array(dy, "dy");
  const DeviceArray y_array = read_cuda_array(y, "y");
  expect_shape(dy_array, output_shape_of(shape), "dy");
  expect_shape(y_array, output_shape_of(shape), "y");
  const DeviceArray dx_array = read_output(dx_out, "dx_out");
  const DeviceArray dw_array = read_output(dw_out, "dw_out");
  expect_shape(dx_array, x_array.shape, "dx_out");
  expect_shape(dw_array, w_array.shape, "dw_out");
  const float* gamma_ptr = channel_vector(gamma, "gamma", channels);
  const float* beta_ptr = channel_vector(beta, "beta", channels);
  const float* mean_ptr = channel_vector(mean, "mean", channels);
  const float* var_ptr = channel_vector(var, "var", channels);
  float* dgamma_ptr = optional_output(dgamma_out, "dgamma_out", channels);
  float* dbeta_ptr = optional_output(dbeta_out, "dbeta_out", channels);
  if (dgamma_ptr == nullptr || dbeta_ptr == nullptr) fail("dgamma_out and dbeta_out are required");
  const PyaeFusedParams params{epsilon, negative_slope, training ? 1 : 0, allow_tf32 ? 1 : 0};
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  py::gil_scoped_release no_gil;
  StreamWorkspace workspace(pyae_cuda_backward_workspace_bytes(&shape), stream);
  raise_if_failed(pyae_cuda_fused_backward(
      &shape, &params, x_array.data, w_array.data, gamma_ptr, beta_ptr, y_array.data, mean_ptr,
      var_ptr, dy_array.data, dx_array.data, dw_array.data, dgamma_ptr, dbeta_ptr,
      workspace.data(), workspace.bytes(), stream));
}

py::tuple conv_bn_lrelu_output_shape(const Shape& x_shape, const Shape& w_shape,
                                     const py::object& strides, const std::string& padding,
                                     bool transpose) {
  if (x_shape.size() != 4 || w_shape.size() != 4) {
    fail("x_shape and w_shape must have 4 entries, got " + shape_text(x_shape) + " and " +
         shape_text(w_shape));
  }
  const Shape out = output_shape_of(make_shape(x_shape, w_shape, strides, padding, transpose));
  return py::make_tuple(out[0], out[1], out[2], out[3]);
}

py::dict cuda_device_info() {
  py::dict info;
  int runtime = 0, driver = 0, device = 0;
  static_cast<void>(cudaRuntimeGetVersion(&runtime));
  static_cast<void>(cudaDriverGetVersion(&driver));
  info["runtime_version"] = runtime;
  info["driver_version"] = driver;
  const cudaError_t err = cudaGetDevice(&device);
  cudaDeviceProp props{};
  if (err == cudaSuccess && cudaGetDeviceProperties(&props, device) == cudaSuccess) {
    info["device"] = device;
    info["name"] = std::string(props.name);
    info["compute_capability"] = py::make_tuple(props.major, props.minor);
    info["multiprocessors"] = props.multiProcessorCount;
  } else {
    info["error"] = std::string(cudaGetErrorString(err));
  }
  return info;
}

}  // namespace

void register_gpu_bindings(py::module_& m) {
  using py::arg;
  m.def("conv_bn_lrelu_forward_cuda", &conv_bn_lrelu_forward_cuda,
        "Fused conv (or transposed conv) + batch norm + LeakyReLU forward on CUDA arrays "
        "(NHWC float32, Keras kernel layout). Writes y_out and, in training, mean_out/var_out "
        "(biased batch moments). Runs on `stream` (a cudaStream_t as int; 0: default stream).",
        arg("x"), arg("w"), arg("gamma"), arg("beta"), arg("mean"), arg("var"), arg("y_out"),
        arg("mean_out"), arg("var_out"), arg("strides"), arg("padding"),
        arg("epsilon") = 1e-3f, arg("negative_slope") = 0.3f, arg("training") = true,
        arg("transpose") = false, arg("allow_tf32") = false, arg("stream") = 0);
  m.def("conv_bn_lrelu_backward_cuda", &conv_bn_lrelu_backward_cuda,
        "Backward of conv_bn_lrelu_forward_cuda from y (not z). mean/var are the statistics "
        "the forward normalised with. Writes dx_out, dw_out, dgamma_out, dbeta_out.",
        arg("dy"), arg("x"), arg("w"), arg("gamma"), arg("beta"), arg("y"), arg("mean"),
        arg("var"), arg("dx_out"), arg("dw_out"), arg("dgamma_out"), arg("dbeta_out"),
        arg("strides"), arg("padding"), arg("epsilon") = 1e-3f, arg("negative_slope") = 0.3f,
        arg("training") = true, arg("transpose") = false, arg("allow_tf32") = false,
        arg("stream") = 0);
  m.def("conv_bn_lrelu_output_shape", &conv_bn_lrelu_output_shape,
        "NHWC shape of y for x_shape and Keras kernel shape w_shape.", arg("x_shape"),
        arg("w_shape"), arg("strides"), arg("padding"), arg("transpose") = false);
  m.def("cuda_device_info", &cuda_device_info,
        "The current CUDA device and the runtime/driver versions.");
}
