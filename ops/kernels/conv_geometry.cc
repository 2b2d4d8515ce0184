#include "conv_geometry.h"

#include <algorithm>
#include <sstream>

namespace pyae {

int64_t ConvOutputLength(int64_t big, int64_t kernel, int64_t stride, Padding padding) {
  if (padding == Padding::kSame) return (big + stride - 1) / stride;
  const int64_t span = big - kernel + 1;
  return span <= 0 ? 0 : (span + stride - 1) / stride;
}

int64_t ConvTransposeOutputLength(int64_t small, int64_t kernel, int64_t stride,
                                  Padding padding) {
  if (padding == Padding::kSame) return small * stride;
  return small * stride + std::max<int64_t>(kernel - stride, 0);
}

int64_t PadBefore(int64_t big, int64_t small, int64_t kernel, int64_t stride,
                  Padding padding) {
  if (padding == Padding::kValid) return 0;
  const int64_t pad_total = std::max<int64_t>((small - 1) * stride + kernel - big, 0);
  return pad_total / 2;
}

std::string MakeGeometry(const int64_t x_shape[4], const int64_t kernel_shape[4],
                         int64_t stride_h, int64_t stride_w, Padding padding, bool transpose,
                         ConvGeometry* g) {
  std::ostringstream err;
  if (stride_h < 1 || stride_w < 1) {
    err << "strides must be >= 1, got [" << stride_h << ", " << stride_w << "]";
    return err.str();
  }
  if (x_shape[0] < 1) {
    err << "x has an empty batch (batch size " << x_shape[0] << ")";
    return err.str();
  }
  if (kernel_shape[0] < 1 || kernel_shape[1] < 1) {
    err << "kernel spatial size must be >= 1, got " << kernel_shape[0] << "x" << kernel_shape[1];
    return err.str();
  }
  const int64_t kernel_in = transpose ? kernel_shape[3] : kernel_shape[2];
  const int64_t kernel_out = transpose ? kernel_shape[2] : kernel_shape[3];
  if (x_shape[3] != kernel_in) {
    err << "x has " << x_shape[3] << " channels but the kernel of shape [" << kernel_shape[0]
        << ", " << kernel_shape[1] << ", " << kernel_shape[2] << ", " << kernel_shape[3]
        << "] expects " << kernel_in;
    return err.str();
  }
  if (kernel_out < 1 || kernel_in < 1) {
    err << "kernel channel sizes must be >= 1";
    return err.str();
  }
  g->batch = x_shape[0];
  g->kernel_h = kernel_shape[0];
  g->kernel_w = kernel_shape[1];
  g->stride_h = stride_h;
  g->stride_w = stride_w;
  g->transpose = transpose;
  if (!transpose) {
    g->big_h = x_shape[1];
    g->big_w = x_shape[2];
    g->big_c = x_shape[3];
    g->small_h = ConvOutputLength(g->big_h, g->kernel_h, stride_h, padding);
    g->small_w = ConvOutputLength(g->big_w, g->kernel_w, stride_w, padding);
    g->small_c = kernel_out;
  } else {
    g->small_h = x_shape[1];
    g->small_w = x_shape[2];
    g->small_c = x_shape[3];
    g->big_h = ConvTransposeOutputLength(g->small_h, g->kernel_h, stride_h, padding);
    g->big_w = ConvTransposeOutputLength(g->small_w, g->kernel_w, stride_w, padding);
    g->big_c = kernel_out;
  }
  if (g->small_h < 1 || g->small_w < 1 || g->big_h < 1 || g->big_w < 1) {
    err << "input of spatial size " << x_shape[1] << "x" << x_shape[2]
        << " is too small for a " << g->kernel_h << "x" << g->kernel_w
        << " kernel with VALID padding";
    return err.str();
  }
  g->pad_top = PadBefore(g->big_h, g->small_h, g->kernel_h, stride_h, padding);
  g->pad_left = PadBefore(g->big_w, g->small_w, g->kernel_w, stride_w, padding);
  return "";
}

}  // namespace pyae
