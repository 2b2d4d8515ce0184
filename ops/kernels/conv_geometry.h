// The fused op's kernel contract: its geometry (output lengths, padding) and its parameter
// validation, in one vocabulary for every caller. Header-only and host-side, so the C++
// kernels (g++), the CUDA kernels (nvcc's host pass), the TensorFlow op and the pybind11
// bindings all use this one copy; they only translate its "" / message results into their
// own error types. Every message names the rule and the offending value, Keras-style:
// "epsilon must be > 0. Received: epsilon=-1.0".
//
// Geometry: both variants are described as one "forward" convolution from a big image to a
// small image, with the filter viewed as a matrix A of shape [kernel_h * kernel_w * big_c,
// small_c]:
//   Conv2D           x = big   (in channels),  z = small (filters);     A = kernel (kh,kw,in,out)
//   Conv2DTranspose  z = big   (filters),      x = small (in channels); A = kernel (kh,kw,out,in)
// so the transposed op is the data-gradient of the same convolution and both reuse one pair
// of gather / scatter routines (im2col / col2im on the CPU, implicit GEMMs on the GPU).
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <sstream>
#include <string>

namespace pyae {

enum class Padding { kSame, kValid };

struct ConvGeometry {
  int64_t batch = 0;
  int64_t big_h = 0, big_w = 0, big_c = 0;
  int64_t small_h = 0, small_w = 0, small_c = 0;
  int64_t kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_left = 0;
  bool transpose = false;

  int64_t patch_size() const { return kernel_h * kernel_w * big_c; }
  int64_t big_pixels() const { return big_h * big_w; }
  int64_t small_pixels() const { return small_h * small_w; }

  // The fused op's input x and output z/y, whichever image each one is.
  int64_t x_channels() const { return transpose ? small_c : big_c; }
  int64_t z_channels() const { return transpose ? big_c : small_c; }
  int64_t x_pixels() const { return transpose ? small_pixels() : big_pixels(); }
  int64_t z_pixels() const { return transpose ? big_pixels() : small_pixels(); }
  // NHWC shape of z (and y): the big image when transposed, else the small one.
  std::array<int64_t, 4> z_shape() const {
    return transpose ? std::array<int64_t, 4>{batch, big_h, big_w, big_c}
                     : std::array<int64_t, 4>{batch, small_h, small_w, small_c};
  }
};

// --- geometry -------------------------------------------------------------------------------

// Length of the small image along one axis for a conv from `big` (TensorFlow rules). 0 when
// a VALID kernel does not fit.
inline int64_t ConvOutputLength(int64_t big, int64_t kernel, int64_t stride, Padding padding) {
  if (padding == Padding::kSame) return (big + stride - 1) / stride;
  const int64_t span = big - kernel + 1;
  return span <= 0 ? 0 : (span + stride - 1) / stride;
}

// Length of the big image for a transposed conv from `small` (Keras, output_padding=None).
inline int64_t ConvTransposeOutputLength(int64_t small, int64_t kernel, int64_t stride,
                                         Padding padding) {
  if (padding == Padding::kSame) return small * stride;
  return small * stride + std::max<int64_t>(kernel - stride, 0);
}

// Length of the op's output (z, y) along one axis, from x's length along it.
inline int64_t OutputLength(int64_t length, int64_t kernel, int64_t stride, Padding padding,
                            bool transpose) {
  return transpose ? ConvTransposeOutputLength(length, kernel, stride, padding)
                   : ConvOutputLength(length, kernel, stride, padding);
}

// Leading padding of the conv from `big` to `small`: TensorFlow pads by
// max((small - 1) * stride + kernel - big, 0) in total and puts the odd pixel last.
inline int64_t PadBefore(int64_t big, int64_t small, int64_t kernel, int64_t stride,
                         Padding padding) {
  if (padding == Padding::kValid) return 0;
  const int64_t pad_total = std::max<int64_t>((small - 1) * stride + kernel - big, 0);
  return pad_total / 2;
}

// --- validation -----------------------------------------------------------------------------

// A float as Python's repr() writes it (shortest round trip, "-1.0", "0.001", "nan"), so a
// message reads the same whether Python or C++ raised it.
inline std::string ReprFloat(float value) {
  char buffer[32];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  std::string text(buffer, result.ptr);
  if (text.find_first_of(".ein") == std::string::npos) text += ".0";
  return text;
}

inline std::string Received(const std::string& rule, const std::string& name,
                            const std::string& value) {
  return rule + ". Received: " + name + "=" + value;
}

// The op's scalar parameters: epsilon > 0 (it keeps sqrt(var + epsilon) away from 0) and
// negative_slope >= 0 (the backward tells the sign of a pre-activation from the sign of y).
// NaN fails both.
inline std::string CheckOpParams(float epsilon, float negative_slope) {
  if (!(epsilon > 0.0f)) return Received("epsilon must be > 0", "epsilon", ReprFloat(epsilon));
  if (!(negative_slope >= 0.0f)) {
    return Received("negative_slope must be >= 0", "negative_slope", ReprFloat(negative_slope));
  }
  return "";
}

inline std::string CheckStrides(int64_t stride_h, int64_t stride_w) {
  if (stride_h >= 1 && stride_w >= 1) return "";
  return Received("strides must be >= 1", "strides",
                  "(" + std::to_string(stride_h) + ", " + std::to_string(stride_w) + ")");
}

// "same"/"SAME" or "valid"/"VALID" (Keras writes lower case, TensorFlow upper case).
inline std::string ParsePadding(const std::string& text, Padding* padding) {
  if (text == "same" || text == "SAME") {
    *padding = Padding::kSame;
  } else if (text == "valid" || text == "VALID") {
    *padding = Padding::kValid;
  } else {
    return Received("padding must be 'same' or 'valid'", "padding", "'" + text + "'");
  }
  return "";
}

inline std::string ShapeText(const int64_t shape[4]) {
  std::ostringstream out;
  out << "(" << shape[0] << ", " << shape[1] << ", " << shape[2] << ", " << shape[3] << ")";
  return out.str();
}

// Fills a geometry from the op's input shape and the kernel's; returns "" or an error.
// x is NHWC; kernel is (kh, kw, in, out) or, when transposed, (kh, kw, out, in).
inline std::string MakeGeometry(const int64_t x_shape[4], const int64_t kernel_shape[4],
                                int64_t stride_h, int64_t stride_w, Padding padding,
                                bool transpose, ConvGeometry* g) {
  std::string err = CheckStrides(stride_h, stride_w);
  if (!err.empty()) return err;
  if (x_shape[0] < 1 || x_shape[1] < 1 || x_shape[2] < 1 || x_shape[3] < 1) {
    return Received("x must have a positive shape (an empty batch or image has no batch "
                    "statistics)", "x.shape", ShapeText(x_shape));
  }
  if (kernel_shape[0] < 1 || kernel_shape[1] < 1 || kernel_shape[2] < 1 || kernel_shape[3] < 1) {
    return Received("kernel must have a positive shape", "kernel.shape", ShapeText(kernel_shape));
  }
  const int64_t kernel_in = transpose ? kernel_shape[3] : kernel_shape[2];
  const int64_t kernel_out = transpose ? kernel_shape[2] : kernel_shape[3];
  if (x_shape[3] != kernel_in) {
    return Received("x has " + std::to_string(x_shape[3]) + " channels but the kernel expects " +
                        std::to_string(kernel_in),
                    "kernel.shape", ShapeText(kernel_shape));
  }
  g->batch = x_shape[0];
  g->kernel_h = kernel_shape[0];
  g->kernel_w = kernel_shape[1];
  g->stride_h = stride_h;
  g->stride_w = stride_w;
  g->transpose = transpose;
  const int64_t out_h = OutputLength(x_shape[1], g->kernel_h, stride_h, padding, transpose);
  const int64_t out_w = OutputLength(x_shape[2], g->kernel_w, stride_w, padding, transpose);
  if (out_h < 1 || out_w < 1) {
    return Received("x is too small for a " + std::to_string(g->kernel_h) + "x" +
                        std::to_string(g->kernel_w) + " kernel with VALID padding",
                    "x.shape", ShapeText(x_shape));
  }
  if (transpose) {
    g->small_h = x_shape[1], g->small_w = x_shape[2], g->small_c = x_shape[3];
    g->big_h = out_h, g->big_w = out_w, g->big_c = kernel_out;
  } else {
    g->big_h = x_shape[1], g->big_w = x_shape[2], g->big_c = x_shape[3];
    g->small_h = out_h, g->small_w = out_w, g->small_c = kernel_out;
  }
  g->pad_top = PadBefore(g->big_h, g->small_h, g->kernel_h, stride_h, padding);
  g->pad_left = PadBefore(g->big_w, g->small_w, g->kernel_w, stride_w, padding);
  return "";
}

}  // namespace pyae
