// Per-channel and elementwise kernels around the implicit GEMMs: batch statistics, the BN +
// LeakyReLU epilogue, the backward's channel reductions and dz, and small layout helpers.
// All reductions are two-level (block partials, then one block per channel merging them in
// double in a fixed order), so results do not depend on scheduling.
#ifndef PYAE_OPS_KERNELS_CUDA_CHANNEL_OPS_CUH_
#define PYAE_OPS_KERNELS_CUDA_CHANNEL_OPS_CUH_

#include <cuda_runtime_api.h>

namespace pyae_cuda {

constexpr int kReductionRowsPerBlock = 256;

inline int reduction_row_blocks(int rows) {
  return (rows + kReductionRowsPerBlock - 1) / kReductionRowsPerBlock;
}

// Merges per-block (mean, M2, count) into batch mean and biased variance, and
// scale = gamma / sqrt(var + eps) for the normalisation pass.
const char* launch_finalize_batch_stats(const float* part_mean, const float* part_m2,
                                        const int* part_count, int row_blocks, int channels,
                                        const float* gamma, float epsilon, float* mean_out,
                                        float* var_out, float* scale_out, cudaStream_t stream);

// y = leaky_relu((z - mean) * scale + beta), in place over z.
const char* launch_normalize_leaky_relu(float* z_then_y, long long total, int channels,
                                        const float* mean, const float* scale,
                                        const float* beta, float negative_slope,
                                        cudaStream_t stream);

// Per-channel constants of the backward. recover_flag = 1 when u can be recovered from y
// (slope > 0 and every channel has |gamma| >= 1e-6 and |beta| <= 64 |gamma|), else 0.
// xhat = (v - center) * xhat_scale, with v = u and center = beta, xhat_scale = 1 / gamma when
// recovering, v = z and center = mean, xhat_scale = rstd when z is recomputed.
// bn_scale = gamma * rstd.
struct BackwardChannels {
  int* recover_flag;
  float* center;
  float* xhat_scale;
  float* bn_scale;
  float* coef_du;    // dz = coef_du * du + coef_xhat * xhat + coef_const
  float* coef_xhat;
  float* coef_const;
};

const char* launch_backward_setup(const float* gamma, const float* beta, const float* mean,
                                  const float* var, int channels, float epsilon,
                                  float negative_slope, const BackwardChannels& ch,
                                  cudaStream_t stream);

// Block partials of dbeta = sum du and dgamma = sum du * xhat over rows.
const char* launch_backward_partials(const float* y, const float* dy, const float* z,
                                     int rows, int channels, float negative_slope,
                                     const BackwardChannels& ch, float* part_dbeta,
                                     float* part_dgamma, cudaStream_t stream);

// dbeta, dgamma and the dz coefficients (training: full BN backward; inference: dz = du * bn_scale).
const char* launch_finalize_backward(const float* part_dbeta, const float* part_dgamma,
                                     int row_blocks, int rows, int channels, int training,
                                     const BackwardChannels& ch, float* dbeta, float* dgamma,
                                     cudaStream_t stream);

// dz, written over z_then_dz (which holds the recomputed z when the flag says so).
const char* launch_compute_dz(const float* y, const float* dy, float* z_then_dz,
                              long long total, int channels, float negative_slope,
                              const BackwardChannels& ch, cudaStream_t stream);

// W (taps, big_c, small_c) -> (taps, small_c, big_c), for the scatter GEMM's B operand.
const char* launch_transpose_filter(const float* w, float* w_t, int taps, int big_c,
                                    int small_c, cudaStream_t stream);

// out[i] = sum over s of parts[s * count + i], in double, in order of s.
const char* launch_sum_splits(const float* parts, int splits, int count, float* out,
                              cudaStream_t stream);

}  // namespace pyae_cuda

#endif  // PYAE_OPS_KERNELS_CUDA_CHANNEL_OPS_CUH_
