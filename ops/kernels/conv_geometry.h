// Geometry of the convolution inside the fused op.
//
// Both variants are described as one "forward" convolution from a big image to a small
// image, with the filter viewed as a matrix A of shape [kernel_h * kernel_w * big_c, small_c]:
//   Conv2D           x = big   (in channels),  z = small (filters);     A = kernel (kh,kw,in,out)
//   Conv2DTranspose  z = big   (filters),      x = small (in channels); A = kernel (kh,kw,out,in)
// so the transposed op is the data-gradient of the same convolution and both reuse one pair
// of im2col / col2im routines.
#pragma once

#include <array>
#include <cstdint>
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

// Length of the small image along one axis for a conv from `big` (TensorFlow rules).
int64_t ConvOutputLength(int64_t big, int64_t kernel, int64_t stride, Padding padding);
// Length of the big image for a transposed conv from `small` (Keras, output_padding=None).
int64_t ConvTransposeOutputLength(int64_t small, int64_t kernel, int64_t stride,
                                  Padding padding);
// Leading padding of the conv from `big` to `small` (TensorFlow puts the odd pixel last).
int64_t PadBefore(int64_t big, int64_t small, int64_t kernel, int64_t stride, Padding padding);

// Fills a geometry from the op's input shape and the kernel's; returns "" or an error.
// x is NHWC; kernel is (kh, kw, in, out) or, when transposed, (kh, kw, out, in).
std::string MakeGeometry(const int64_t x_shape[4], const int64_t kernel_shape[4],
                         int64_t stride_h, int64_t stride_w, Padding padding, bool transpose,
                         ConvGeometry* geometry);

}  // namespace pyae
