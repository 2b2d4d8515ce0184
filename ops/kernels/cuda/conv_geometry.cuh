// The one geometry behind conv, transposed conv and their gradients.
//
// Every case is a strided correlation between a "big" image and a "small" one:
//   small[n, i, j, cs] = sum_{kh, kw, cb} big[n, i*s - pad + kh, j*s - pad + kw, cb] * W[kh, kw, cb, cs]
// Conv2D:          big = x, small = z, W = (kh, kw, in, out).
// Conv2DTranspose: big = z, small = x, W = (kh, kw, out, in)  (Keras layout: the same W).
// So three implicit GEMMs cover everything:
//   gather   big -> small   (conv forward, transposed-conv dx)
//   scatter  small -> big   (transposed-conv forward, conv dx), split by output phase
//   wgrad    dW = sum over small pixels of big-patch (x) small  (both dW)
#ifndef PYAE_OPS_KERNELS_CUDA_CONV_GEOMETRY_CUH_
#define PYAE_OPS_KERNELS_CUDA_CONV_GEOMETRY_CUH_

#include "fused_conv_bn_lrelu_cuda.h"

namespace pyae_cuda {

struct ConvGeometry {
  int batch;
  int big_h, big_w, big_c;
  int small_h, small_w, small_c;
  int kernel_h, kernel_w;
  int stride_h, stride_w;
  int pad_top, pad_left;
};

inline ConvGeometry geometry_of(const PyaeConvShape& s) {
  ConvGeometry g;
  g.batch = s.batch;
  if (s.transpose) {
    g.big_h = s.out_h, g.big_w = s.out_w, g.big_c = s.out_c;
    g.small_h = s.in_h, g.small_w = s.in_w, g.small_c = s.in_c;
  } else {
    g.big_h = s.in_h, g.big_w = s.in_w, g.big_c = s.in_c;
    g.small_h = s.out_h, g.small_w = s.out_w, g.small_c = s.out_c;
  }
  g.kernel_h = s.kernel_h, g.kernel_w = s.kernel_w;
  g.stride_h = s.stride_h, g.stride_w = s.stride_w;
  g.pad_top = s.pad_top, g.pad_left = s.pad_left;
  return g;
}

// Number of x in [0, length) with x % stride == phase.
__host__ __device__ inline int count_in_phase(int length, int stride, int phase) {
  return phase < length ? (length - phase + stride - 1) / stride : 0;
}

// The scatter GEMM runs once per output phase (p % stride, q % stride): inside a phase every
// output pixel uses the same kernel taps, so no multiply is spent on a tap that misses.
struct ScatterPhase {
  int rows_h, rows_w;      // big-image rows/cols in this phase
  int first_kh, first_kw;  // first tap hitting this phase; the others follow every stride
  int taps_h, taps_w;      // number of such taps
  int shift_h, shift_w;    // small row of a phase row a with tap t: a + shift - t
};

__host__ __device__ inline ScatterPhase scatter_phase(const ConvGeometry& g, int phase_h,
                                                      int phase_w) {
  ScatterPhase p;
  p.rows_h = count_in_phase(g.big_h, g.stride_h, phase_h);
  p.rows_w = count_in_phase(g.big_w, g.stride_w, phase_w);
  p.first_kh = (phase_h + g.pad_top) % g.stride_h;
  p.first_kw = (phase_w + g.pad_left) % g.stride_w;
  p.taps_h = count_in_phase(g.kernel_h, g.stride_h, p.first_kh);
  p.taps_w = count_in_phase(g.kernel_w, g.stride_w, p.first_kw);
  p.shift_h = (phase_h + g.pad_top) / g.stride_h;
  p.shift_w = (phase_w + g.pad_left) / g.stride_w;
  return p;
}

}  // namespace pyae_cuda

#endif  // PYAE_OPS_KERNELS_CUDA_CONV_GEOMETRY_CUH_
