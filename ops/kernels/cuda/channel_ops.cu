#include "channel_ops.cuh"

#include <cstdint>

#include "cuda_status.cuh"

namespace pyae_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kChannelsPerBlock = 32;  // backward partials: one warp spans 32 channels
constexpr int kRowLanes = kThreads / kChannelsPerBlock;

unsigned elementwise_blocks(long long total) {
  const long long blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < (1 << 20) ? (blocks > 0 ? blocks : 1) : (1 << 20));
}

__device__ inline float leaky_relu(float v, float slope) { return v > 0.0f ? v : v * slope; }

__device__ inline float leaky_relu_grad_factor(float y, float slope) {
  return y > 0.0f ? 1.0f : slope;
}

// Chan et al.'s pairwise update of (count, mean, M2); exact in any merge order up to rounding,
// and the order here is fixed.
struct Moments {
  double count, mean, m2;
};

__device__ inline Moments merge_moments(Moments a, Moments b) {
  if (b.count == 0.0) return a;
  if (a.count == 0.0) return b;
  const double count = a.count + b.count;
  const double delta = b.mean - a.mean;
  Moments out;
  out.count = count;
  out.mean = a.mean + delta * (b.count / count);
  out.m2 = a.m2 + b.m2 + delta * delta * (a.count * b.count / count);
  return out;
}

__global__ void finalize_batch_stats_kernel(const float* part_mean, const float* part_m2,
                                            const int* part_count, int row_blocks, int channels,
                                            const float* gamma, float epsilon, float* mean_out,
                                            float* var_out, float* scale_out) {
  __shared__ Moments shared[kThreads];
  const int c = blockIdx.x;
  Moments acc{0.0, 0.0, 0.0};
  for (int b = threadIdx.x; b < row_blocks; b += kThreads) {
    const int count = part_count[b];
    if (count == 0) continue;
    const size_t at = static_cast<size_t>(b) * channels + c;
    acc = merge_moments(acc, Moments{static_cast<double>(count), part_mean[at], part_m2[at]});
  }
  shared[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      shared[threadIdx.x] = merge_moments(shared[threadIdx.x], shared[threadIdx.x + stride]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const Moments total = shared[0];
    const double var = total.m2 / total.count;
    mean_out[c] = static_cast<float>(total.mean);
    var_out[c] = static_cast<float>(var);
    scale_out[c] = static_cast<float>(gamma[c] / sqrt(var + static_cast<double>(epsilon)));
  }
}

template <bool kVector4>
__global__ void normalize_leaky_relu_kernel(float* z_then_y, long long total, int channels,
                                            const float* mean, const float* scale,
                                            const float* beta, float slope) {
  const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
  if (kVector4) {  // channels % 4 == 0 and 16-byte aligned: four channels per load
    float4* data = reinterpret_cast<float4*>(z_then_y);
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
         i < total / 4; i += step) {
      const int c = static_cast<int>((i * 4) % channels);
      float4 v = data[i];
      v.x = leaky_relu(fmaf(v.x - mean[c], scale[c], beta[c]), slope);
      v.y = leaky_relu(fmaf(v.y - mean[c + 1], scale[c + 1], beta[c + 1]), slope);
      v.z = leaky_relu(fmaf(v.z - mean[c + 2], scale[c + 2], beta[c + 2]), slope);
      v.w = leaky_relu(fmaf(v.w - mean[c + 3], scale[c + 3], beta[c + 3]), slope);
      data[i] = v;
    }
  } else {
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
         i < total; i += step) {
      const int c = static_cast<int>(i % channels);
      z_then_y[i] = leaky_relu(fmaf(z_then_y[i] - mean[c], scale[c], beta[c]), slope);
    }
  }
}

__global__ void backward_setup_kernel(const float* gamma, const float* beta, const float* mean,
                                      const float* var, int channels, float epsilon,
                                      float slope, BackwardChannels ch) {
  // The inversion u = (y > 0 ? y : y / slope), xhat = (u - beta) / gamma loses accuracy when
  // gamma is tiny against beta; the same rule as the CPU kernel picks recomputation then.
  bool invertible = slope > 0.0f;
  for (int c = threadIdx.x; c < channels; c += blockDim.x) {
    const float g = fabsf(gamma[c]);
    invertible = invertible && g >= 1e-6f && fabsf(beta[c]) <= 64.0f * g;
  }
  const bool recover = __syncthreads_and(invertible) != 0;
  for (int c = threadIdx.x; c < channels; c += blockDim.x) {
    const double rstd = 1.0 / sqrt(static_cast<double>(var[c]) + static_cast<double>(epsilon));
    ch.bn_scale[c] = static_cast<float>(gamma[c] * rstd);
    ch.center[c] = recover ? beta[c] : mean[c];
    ch.xhat_scale[c] = recover ? static_cast<float>(1.0 / static_cast<double>(gamma[c]))
                               : static_cast<float>(rstd);
  }
  if (threadIdx.x == 0) *ch.recover_flag = recover ? 1 : 0;
}

// The pre-BN value the backward works from: u recovered from y, or the recomputed z.
__device__ inline float backward_source(float y, const float* z, long long index, bool recover,
                                        float slope) {
  if (recover) return y > 0.0f ? y : y / slope;
  return z[index];
}

__global__ void backward_partials_kernel(const float* y, const float* dy, const float* z,
                                         int rows, int channels, float slope,
                                         BackwardChannels ch, float* part_dbeta,
                                         float* part_dgamma) {
  __shared__ float shared_du[kRowLanes][kChannelsPerBlock + 1];
  __shared__ float shared_du_xhat[kRowLanes][kChannelsPerBlock + 1];
  const int c = blockIdx.y * kChannelsPerBlock + threadIdx.x;
  const bool recover = *ch.recover_flag != 0;
  float sum_du = 0.0f;
  float sum_du_xhat = 0.0f;
  if (c < channels) {
    const float center = ch.center[c];
    const float xhat_scale = ch.xhat_scale[c];
    const int row_begin = static_cast<int>(blockIdx.x) * kReductionRowsPerBlock;
    const int row_end = min(rows, row_begin + kReductionRowsPerBlock);
    for (int r = row_begin + static_cast<int>(threadIdx.y); r < row_end; r += kRowLanes) {
      const long long index = static_cast<long long>(r) * channels + c;
      const float y_value = y[index];
      const float du = dy[index] * leaky_relu_grad_factor(y_value, slope);
      const float xhat = (backward_source(y_value, z, index, recover, slope) - center) * xhat_scale;
      sum_du += du;
      sum_du_xhat = fmaf(du, xhat, sum_du_xhat);
    }
  }
  shared_du[threadIdx.y][threadIdx.x] = sum_du;
  shared_du_xhat[threadIdx.y][threadIdx.x] = sum_du_xhat;
  __syncthreads();
  if (threadIdx.y != 0 || c >= channels) return;
  for (int lane = 1; lane < kRowLanes; ++lane) {  // fixed order: deterministic
    sum_du += shared_du[lane][threadIdx.x];
    sum_du_xhat += shared_du_xhat[lane][threadIdx.x];
  }
  const size_t at = static_cast<size_t>(blockIdx.x) * channels + c;
  part_dbeta[at] = sum_du;
  part_dgamma[at] = sum_du_xhat;
}

__global__ void finalize_backward_kernel(const float* part_dbeta, const float* part_dgamma,
                                         int row_blocks, int rows, int channels, int training,
                                         BackwardChannels ch, float* dbeta, float* dgamma) {
  __shared__ double shared_dbeta[kThreads];
  __shared__ double shared_dgamma[kThreads];
  const int c = blockIdx.x;
  double sum_dbeta = 0.0;
  double sum_dgamma = 0.0;
  for (int b = threadIdx.x; b < row_blocks; b += kThreads) {
    sum_dbeta += part_dbeta[static_cast<size_t>(b) * channels + c];
    sum_dgamma += part_dgamma[static_cast<size_t>(b) * channels + c];
  }
  shared_dbeta[threadIdx.x] = sum_dbeta;
  shared_dgamma[threadIdx.x] = sum_dgamma;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      shared_dbeta[threadIdx.x] += shared_dbeta[threadIdx.x + stride];
      shared_dgamma[threadIdx.x] += shared_dgamma[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  const double total_dbeta = shared_dbeta[0];
  const double total_dgamma = shared_dgamma[0];
  dbeta[c] = static_cast<float>(total_dbeta);
  dgamma[c] = static_cast<float>(total_dgamma);
  const double bn_scale = ch.bn_scale[c];
  ch.coef_du[c] = static_cast<float>(bn_scale);
  // Training: dz = bn_scale * (du - dbeta / M - xhat * dgamma / M). Inference: bn_scale * du.
  ch.coef_xhat[c] = training ? static_cast<float>(-bn_scale * total_dgamma / rows) : 0.0f;
  ch.coef_const[c] = training ? static_cast<float>(-bn_scale * total_dbeta / rows) : 0.0f;
}

__global__ void compute_dz_kernel(const float* y, const float* dy, float* z_then_dz,
                                  long long total, int channels, float slope,
                                  BackwardChannels ch) {
  const bool recover = *ch.recover_flag != 0;
  const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += step) {
    const int c = static_cast<int>(i % channels);
    const float y_value = y[i];
    const float du = dy[i] * leaky_relu_grad_factor(y_value, slope);
    const float xhat =
        (backward_source(y_value, z_then_dz, i, recover, slope) - ch.center[c]) * ch.xhat_scale[c];
    z_then_dz[i] = fmaf(ch.coef_du[c], du, fmaf(ch.coef_xhat[c], xhat, ch.coef_const[c]));
  }
}

__global__ void transpose_filter_kernel(const float* w, float* w_t, int taps, int big_c,
                                        int small_c) {
  const long long total = static_cast<long long>(taps) * big_c * small_c;
  const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += step) {
    const long long tap = i / (static_cast<long long>(big_c) * small_c);
    const int rest = static_cast<int>(i - tap * big_c * small_c);
    const int cb = rest / small_c;
    const int cs = rest - cb * small_c;
    w_t[(tap * small_c + cs) * big_c + cb] = w[i];
  }
}

__global__ void sum_splits_kernel(const float* parts, int splits, int count, float* out) {
  const int step = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += step) {
    double sum = 0.0;
    for (int s = 0; s < splits; ++s) sum += parts[static_cast<size_t>(s) * count + i];
    out[i] = static_cast<float>(sum);
  }
}

}  // namespace

const char* launch_finalize_batch_stats(const float* part_mean, const float* part_m2,
                                        const int* part_count, int row_blocks, int channels,
                                        const float* gamma, float epsilon, float* mean_out,
                                        float* var_out, float* scale_out, cudaStream_t stream) {
  finalize_batch_stats_kernel<<<channels, kThreads, 0, stream>>>(
      part_mean, part_m2, part_count, row_blocks, channels, gamma, epsilon, mean_out, var_out,
      scale_out);
  PYAE_CUDA_CHECK_LAUNCH("finalize_batch_stats_kernel");
  return nullptr;
}

const char* launch_normalize_leaky_relu(float* z_then_y, long long total, int channels,
                                        const float* mean, const float* scale,
                                        const float* beta, float negative_slope,
                                        cudaStream_t stream) {
  const bool vector4 =
      channels % 4 == 0 && reinterpret_cast<std::uintptr_t>(z_then_y) % alignof(float4) == 0;
  if (vector4) {
    normalize_leaky_relu_kernel<true><<<elementwise_blocks(total / 4), kThreads, 0, stream>>>(
        z_then_y, total, channels, mean, scale, beta, negative_slope);
  } else {
    normalize_leaky_relu_kernel<false><<<elementwise_blocks(total), kThreads, 0, stream>>>(
        z_then_y, total, channels, mean, scale, beta, negative_slope);
  }
  PYAE_CUDA_CHECK_LAUNCH("normalize_leaky_relu_kernel");
  return nullptr;
}

const char* launch_backward_setup(const float* gamma, const float* beta, const float* mean,
                                  const float* var, int channels, float epsilon,
                                  float negative_slope, const BackwardChannels& ch,
                                  cudaStream_t stream) {
  backward_setup_kernel<<<1, kThreads, 0, stream>>>(gamma, beta, mean, var, channels, epsilon,
                                                    negative_slope, ch);
  PYAE_CUDA_CHECK_LAUNCH("backward_setup_kernel");
  return nullptr;
}

const char* launch_backward_partials(const float* y, const float* dy, const float* z,
                                     int rows, int channels, float negative_slope,
                                     const BackwardChannels& ch, float* part_dbeta,
                                     float* part_dgamma, cudaStream_t stream) {
  const dim3 grid(reduction_row_blocks(rows),
                  (channels + kChannelsPerBlock - 1) / kChannelsPerBlock);
  if (grid.y > 65535u) return set_error("too many channels: %d", channels);
  backward_partials_kernel<<<grid, dim3(kChannelsPerBlock, kRowLanes), 0, stream>>>(
      y, dy, z, rows, channels, negative_slope, ch, part_dbeta, part_dgamma);
  PYAE_CUDA_CHECK_LAUNCH("backward_partials_kernel");
  return nullptr;
}

const char* launch_finalize_backward(const float* part_dbeta, const float* part_dgamma,
                                     int row_blocks, int rows, int channels, int training,
                                     const BackwardChannels& ch, float* dbeta, float* dgamma,
                                     cudaStream_t stream) {
  finalize_backward_kernel<<<channels, kThreads, 0, stream>>>(
      part_dbeta, part_dgamma, row_blocks, rows, channels, training, ch, dbeta, dgamma);
  PYAE_CUDA_CHECK_LAUNCH("finalize_backward_kernel");
  return nullptr;
}

const char* launch_compute_dz(const float* y, const float* dy, float* z_then_dz,
                              long long total, int channels, float negative_slope,
                              const BackwardChannels& ch, cudaStream_t stream) {
  compute_dz_kernel<<<elementwise_blocks(total), kThreads, 0, stream>>>(
      y, dy, z_then_dz, total, channels, negative_slope, ch);
  PYAE_CUDA_CHECK_LAUNCH("compute_dz_kernel");
  return nullptr;
}

const char* launch_transpose_filter(const float* w, float* w_t, int taps, int big_c,
                                    int small_c, cudaStream_t stream) {
  const long long total = static_cast<long long>(taps) * big_c * small_c;
  transpose_filter_kernel<<<elementwise_blocks(total), kThreads, 0, stream>>>(w, w_t, taps,
                                                                              big_c, small_c);
  PYAE_CUDA_CHECK_LAUNCH("transpose_filter_kernel");
  return nullptr;
}

const char* launch_sum_splits(const float* parts, int splits, int count, float* out,
                              cudaStream_t stream) {
  sum_splits_kernel<<<elementwise_blocks(count), kThreads, 0, stream>>>(parts, splits, count,
                                                                        out);
  PYAE_CUDA_CHECK_LAUNCH("sum_splits_kernel");
  return nullptr;
}

}  // namespace pyae_cuda
