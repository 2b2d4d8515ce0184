// Public C-style API of the CUDA fused Conv + BatchNorm + LeakyReLU op (NHWC, float32).
//
// Framework-free: plain device pointers, a shape struct, a caller-owned workspace and a
// stream. Every function returns nullptr on success or a message naming the bad value (the
// string lives in thread-local storage until the next call on the same thread). Nothing
// here aborts the process, synchronises the stream, or allocates device memory.
//
// Contract (see DESIGN.md, "The op contract"):
//   z = conv2d(x, W) with W (kh, kw, in, out), or conv2d_transpose(x, W) with W (kh, kw, out, in)
//   training:  mean, var = biased moments of z over N, H, W;   inference: the moving ones
//   y = leaky_relu(gamma * (z - mean) / sqrt(var + eps) + beta, negative_slope)
// The backward reads y (never z): it inverts LeakyReLU and the affine BN step when that is
// exact (negative_slope > 0 and, for every channel, |gamma| >= 1e-6 and |beta| <= 64|gamma|),
// and otherwise recomputes z with the forward conv. The decision is made on the device, so
// neither call synchronises.
#ifndef PYAE_OPS_KERNELS_CUDA_FUSED_CONV_BN_LRELU_CUDA_H_
#define PYAE_OPS_KERNELS_CUDA_FUSED_CONV_BN_LRELU_CUDA_H_

#include <cstddef>

#include <cuda_runtime_api.h>

// Shapes of one call. "in" is x, "out" is z (and y); both NHWC. pad_top/pad_left follow
// TensorFlow: for a transposed conv they are the padding of the forward conv that maps the
// big image (z) back to the small one (x). Fill it with pyae_cuda_make_conv_shape.
struct PyaeConvShape {
  int batch;
  int in_h, in_w, in_c;
  int out_h, out_w, out_c;
  int kernel_h, kernel_w;
  int stride_h, stride_w;
  int pad_top, pad_left;
  int transpose;  // 0: Conv2D, 1: Conv2DTranspose (Keras, output_padding=None)
};

struct PyaeFusedParams {
  float epsilon;         // > 0
  float negative_slope;  // >= 0
  int training;          // 1: batch statistics, 0: moving statistics
  int allow_tf32;        // 1: TF32 tensor cores for the convolutions (sm_80+), 0: FMA float32
};

// Computes out_h/out_w/out_c and the TF padding from x's and W's shapes. weight_dim2/3 are
// W's last two dimensions as Keras stores them. padding_same: 1 for SAME, 0 for VALID.
const char* pyae_cuda_make_conv_shape(int batch, int in_h, int in_w, int in_c, int kernel_h,
                                      int kernel_w, int weight_dim2, int weight_dim3,
                                      int stride_h, int stride_w, int padding_same,
                                      int transpose, PyaeConvShape* shape);

// Checks a shape (positive sizes, consistent output and padding, 32-bit indexable).
const char* pyae_cuda_validate_shape(const PyaeConvShape* shape);

// Device bytes the caller must provide as `workspace` (may be 0: then workspace may be null).
size_t pyae_cuda_forward_workspace_bytes(const PyaeConvShape* shape, int training);
size_t pyae_cuda_backward_workspace_bytes(const PyaeConvShape* shape);

// Forward. x: in NHWC; w: Keras layout; gamma, beta: (out_c,). In inference mean/var are the
// moving statistics (read) and batch_mean/batch_var may be null; in training mean/var are
// ignored (may be null) and batch_mean/batch_var (out_c,) receive the biased moments. y: out NHWC.
const char* pyae_cuda_fused_forward(const PyaeConvShape* shape, const PyaeFusedParams* params,
                                    const float* x, const float* w, const float* gamma,
                                    const float* beta, const float* mean, const float* var,
                                    float* y, float* batch_mean, float* batch_var,
                                    void* workspace, size_t workspace_bytes,
                                    cudaStream_t stream);

// Backward. mean/var: the statistics the forward normalised with (batch ones in training,
// moving ones in inference); y: the forward's output; dy: gradient of y. Writes dx (shape
// of x), dw (shape of w), dgamma and dbeta (out_c,). Deterministic for a given shape.
const char* pyae_cuda_fused_backward(const PyaeConvShape* shape, const PyaeFusedParams* params,
                                     const float* x, const float* w, const float* gamma,
                                     const float* beta, const float* y, const float* mean,
                                     const float* var, const float* dy, float* dx, float* dw,
                                     float* dgamma, float* dbeta, void* workspace,
                                     size_t workspace_bytes, cudaStream_t stream);

#endif  // PYAE_OPS_KERNELS_CUDA_FUSED_CONV_BN_LRELU_CUDA_H_
