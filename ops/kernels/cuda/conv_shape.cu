// The API's shape of one call, from the kernel contract's geometry (conv_geometry.h), and its
// check. Nothing here re-derives an output length or a padding: the contract does.
#include <climits>
#include <cstdint>

#include "conv_geometry.h"
#include "cuda_status.cuh"
#include "fused_conv_bn_lrelu_cuda.h"

namespace {

// Every index the kernels form stays far below INT_MAX (32-bit index arithmetic).
bool fits_int32(long long a, long long b, long long c, long long d) {
  return a * b * c * d < static_cast<long long>(INT_MAX) / 2;
}

const char* contract_error(const std::string& message) {
  return message.empty() ? nullptr : pyae_cuda::set_error("%s", message.c_str());
}

PyaeConvShape shape_of(const pyae::ConvGeometry& g) {
  PyaeConvShape s{};
  const auto narrow = [](int64_t v) { return static_cast<int>(v); };
  s.batch = narrow(g.batch);
  s.in_h = narrow(g.transpose ? g.small_h : g.big_h);
  s.in_w = narrow(g.transpose ? g.small_w : g.big_w);
  s.in_c = narrow(g.x_channels());
  s.out_h = narrow(g.transpose ? g.big_h : g.small_h);
  s.out_w = narrow(g.transpose ? g.big_w : g.small_w);
  s.out_c = narrow(g.z_channels());
  s.kernel_h = narrow(g.kernel_h), s.kernel_w = narrow(g.kernel_w);
  s.stride_h = narrow(g.stride_h), s.stride_w = narrow(g.stride_w);
  s.pad_top = narrow(g.pad_top), s.pad_left = narrow(g.pad_left);
  s.transpose = g.transpose ? 1 : 0;
  return s;
}

bool same_shape(const PyaeConvShape& a, const PyaeConvShape& b) {
  return a.batch == b.batch && a.in_h == b.in_h && a.in_w == b.in_w && a.in_c == b.in_c &&
         a.out_h == b.out_h && a.out_w == b.out_w && a.out_c == b.out_c &&
         a.kernel_h == b.kernel_h && a.kernel_w == b.kernel_w && a.stride_h == b.stride_h &&
         a.stride_w == b.stride_w && a.pad_top == b.pad_top && a.pad_left == b.pad_left &&
         a.transpose == b.transpose;
}

// The contract's shape for the call `s` claims to describe, with SAME or VALID padding.
const char* contract_shape(const PyaeConvShape& s, pyae::Padding padding, PyaeConvShape* out) {
  const int64_t x_shape[4] = {s.batch, s.in_h, s.in_w, s.in_c};
  const int64_t kernel_shape[4] = {s.kernel_h, s.kernel_w, s.transpose ? s.out_c : s.in_c,
                                   s.transpose ? s.in_c : s.out_c};
  pyae::ConvGeometry g;
  PYAE_RETURN_IF_FAILED(contract_error(pyae::MakeGeometry(
      x_shape, kernel_shape, s.stride_h, s.stride_w, padding, s.transpose != 0, &g)));
  *out = shape_of(g);
  return nullptr;
}

}  // namespace

const char* pyae_cuda_make_conv_shape(int batch, int in_h, int in_w, int in_c, int kernel_h,
                                      int kernel_w, int weight_dim2, int weight_dim3,
                                      int stride_h, int stride_w, int padding_same,
                                      int transpose, PyaeConvShape* shape) {
  const int64_t x_shape[4] = {batch, in_h, in_w, in_c};
  const int64_t kernel_shape[4] = {kernel_h, kernel_w, weight_dim2, weight_dim3};
  const pyae::Padding padding = padding_same ? pyae::Padding::kSame : pyae::Padding::kValid;
  pyae::ConvGeometry g;
  PYAE_RETURN_IF_FAILED(contract_error(pyae::MakeGeometry(
      x_shape, kernel_shape, stride_h, stride_w, padding, transpose != 0, &g)));
  const long long big[4] = {g.batch, g.big_h, g.big_w, g.big_c};
  if (g.big_h > INT_MAX || g.big_w > INT_MAX || !fits_int32(big[0], big[1], big[2], big[3])) {
    return pyae_cuda::set_error("tensors too large for 32-bit indexing. Received: x.shape=(%d, "
                                "%d, %d, %d)", batch, in_h, in_w, in_c);
  }
  const PyaeConvShape s = shape_of(g);
  PYAE_RETURN_IF_FAILED(pyae_cuda_validate_shape(&s));
  *shape = s;
  return nullptr;
}

// A shape is valid when it is the contract's shape of its own x, kernel, strides and one of
// the two paddings, and every tensor is 32-bit indexable.
const char* pyae_cuda_validate_shape(const PyaeConvShape* shape) {
  using pyae_cuda::set_error;
  if (shape == nullptr) return set_error("shape is null");
  const PyaeConvShape& s = *shape;
  PyaeConvShape same{}, valid{};
  PYAE_RETURN_IF_FAILED(contract_shape(s, pyae::Padding::kSame, &same));
  const bool is_valid_padding = contract_shape(s, pyae::Padding::kValid, &valid) == nullptr &&
                                same_shape(s, valid);
  if (!same_shape(s, same) && !is_valid_padding) {
    return set_error("the shape is not the SAME or VALID geometry of its x and kernel. Received: "
                     "out=(%d, %d, %d, %d), pad=(%d, %d) for x=(%d, %d, %d, %d), kernel %dx%d, "
                     "strides (%d, %d), transpose=%d", s.batch, s.out_h, s.out_w, s.out_c,
                     s.pad_top, s.pad_left, s.batch, s.in_h, s.in_w, s.in_c, s.kernel_h,
                     s.kernel_w, s.stride_h, s.stride_w, s.transpose);
  }
  if (!fits_int32(s.batch, s.in_h, s.in_w, s.in_c) ||
      !fits_int32(s.batch, s.out_h, s.out_w, s.out_c) ||
      !fits_int32(s.kernel_h, s.kernel_w, s.in_c, s.out_c)) {
    return set_error("tensors too large for 32-bit indexing. Received: x=(%d, %d, %d, %d), "
                     "y=(%d, %d, %d, %d)", s.batch, s.in_h, s.in_w, s.in_c, s.batch, s.out_h,
                     s.out_w, s.out_c);
  }
  return nullptr;
}
