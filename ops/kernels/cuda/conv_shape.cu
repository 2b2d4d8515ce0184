// Shape arithmetic (TensorFlow SAME/VALID, Keras Conv2DTranspose) and validation.
#include <climits>

#include "cuda_status.cuh"
#include "fused_conv_bn_lrelu_cuda.h"

namespace {

int conv_output_length(int length, int kernel, int stride, bool same) {
  if (same) return (length + stride - 1) / stride;
  const int span = length - kernel + 1;
  return span > 0 ? (span + stride - 1) / stride : 0;
}

int transpose_output_length(int length, int kernel, int stride, bool same) {
  if (same) return length * stride;
  return length * stride + (kernel > stride ? kernel - stride : 0);
}

// TF pads the forward conv from `big` to `small` by max((small - 1) * s + k - big, 0) in
// total, the smaller half before.
int pad_before(int big, int small, int kernel, int stride, bool same) {
  if (!same) return 0;
  const int total = (small - 1) * stride + kernel - big;
  return total > 0 ? total / 2 : 0;
}

bool fits_int32(long long a, long long b, long long c, long long d) {
  return a * b * c * d < static_cast<long long>(INT_MAX) / 2;
}

}  // namespace

const char* pyae_cuda_make_conv_shape(int batch, int in_h, int in_w, int in_c, int kernel_h,
                                      int kernel_w, int weight_dim2, int weight_dim3,
                                      int stride_h, int stride_w, int padding_same,
                                      int transpose, PyaeConvShape* shape) {
  using pyae_cuda::set_error;
  if (stride_h < 1 || stride_w < 1) {
    return set_error("strides must be >= 1, got (%d, %d)", stride_h, stride_w);
  }
  if (kernel_h < 1 || kernel_w < 1 || weight_dim2 < 1 || weight_dim3 < 1) {
    return set_error("kernel shape must be positive, got (%d, %d, %d, %d)", kernel_h, kernel_w,
                     weight_dim2, weight_dim3);
  }
  const int weight_in = transpose ? weight_dim3 : weight_dim2;
  if (weight_in != in_c) {
    return set_error("x has %d channels but the kernel (%d, %d, %d, %d) expects %d", in_c,
                     kernel_h, kernel_w, weight_dim2, weight_dim3, weight_in);
  }
  const bool same = padding_same != 0;
  PyaeConvShape s{};
  s.batch = batch, s.in_h = in_h, s.in_w = in_w, s.in_c = in_c;
  s.out_c = transpose ? weight_dim2 : weight_dim3;
  s.kernel_h = kernel_h, s.kernel_w = kernel_w;
  s.stride_h = stride_h, s.stride_w = stride_w;
  s.transpose = transpose ? 1 : 0;
  if (transpose) {
    s.out_h = transpose_output_length(in_h, kernel_h, stride_h, same);
    s.out_w = transpose_output_length(in_w, kernel_w, stride_w, same);
    s.pad_top = pad_before(s.out_h, in_h, kernel_h, stride_h, same);
    s.pad_left = pad_before(s.out_w, in_w, kernel_w, stride_w, same);
  } else {
    s.out_h = conv_output_length(in_h, kernel_h, stride_h, same);
    s.out_w = conv_output_length(in_w, kernel_w, stride_w, same);
    s.pad_top = pad_before(in_h, s.out_h, kernel_h, stride_h, same);
    s.pad_left = pad_before(in_w, s.out_w, kernel_w, stride_w, same);
  }
  PYAE_RETURN_IF_FAILED(pyae_cuda_validate_shape(&s));
  *shape = s;
  return nullptr;
}

const char* pyae_cuda_validate_shape(const PyaeConvShape* shape) {
  using pyae_cuda::set_error;
  if (shape == nullptr) return set_error("shape is null");
  const PyaeConvShape& s = *shape;
  if (s.batch < 1 || s.in_h < 1 || s.in_w < 1 || s.in_c < 1) {
    return set_error("x must have a positive shape, got (%d, %d, %d, %d)", s.batch, s.in_h,
                     s.in_w, s.in_c);
  }
  if (s.out_h < 1 || s.out_w < 1 || s.out_c < 1) {
    return set_error("the output would be empty: (%d, %d, %d, %d) from x (%d, %d, %d, %d) with "
                     "kernel %dx%d", s.batch, s.out_h, s.out_w, s.out_c, s.batch, s.in_h,
                     s.in_w, s.in_c, s.kernel_h, s.kernel_w);
  }
  if (s.kernel_h < 1 || s.kernel_w < 1 || s.stride_h < 1 || s.stride_w < 1) {
    return set_error("kernel %dx%d and strides (%d, %d) must be positive", s.kernel_h,
                     s.kernel_w, s.stride_h, s.stride_w);
  }
  if (s.pad_top < 0 || s.pad_top >= s.kernel_h || s.pad_left < 0 || s.pad_left >= s.kernel_w) {
    return set_error("padding (%d, %d) must lie in [0, kernel) for kernel %dx%d", s.pad_top,
                     s.pad_left, s.kernel_h, s.kernel_w);
  }
  if (!fits_int32(s.batch, s.in_h, s.in_w, s.in_c) ||
      !fits_int32(s.batch, s.out_h, s.out_w, s.out_c) ||
      !fits_int32(s.kernel_h, s.kernel_w, s.in_c, s.out_c)) {
    return set_error("tensors too large for 32-bit indexing: x (%d, %d, %d, %d), y (%d, %d, %d, "
                     "%d)", s.batch, s.in_h, s.in_w, s.in_c, s.batch, s.out_h, s.out_w, s.out_c);
  }
  return nullptr;
}
