// Backward of the fused op, from y (z is not kept by the forward).
//   1. per-channel setup: can u be recovered from y? (else z is recomputed by the forward GEMM,
//      which otherwise exits at once: the choice is made on the device, no synchronisation)
//   2. dbeta = sum du, dgamma = sum du * xhat (block partials, then per channel in double)
//   3. dz elementwise into one z-sized buffer (over the recomputed z when there is one)
//   4. dx: the conv's data gradient (scatter for conv, gather for transposed conv)
//   5. dW: the weight-gradient GEMM split over pixels, the splits summed in a fixed order
#include "api_checks.cuh"
#include "cuda_status.cuh"
#include "fused_conv_bn_lrelu_cuda.h"
#include "workspace.cuh"

namespace pyae_cuda {
namespace {

const char* check_backward_pointers(const float* const* inputs, int input_count,
                                    float* const* outputs, int output_count) {
  for (int i = 0; i < input_count; ++i) {
    if (inputs[i] == nullptr) return set_error("backward input %d is null", i);
  }
  for (int i = 0; i < output_count; ++i) {
    if (outputs[i] == nullptr) return set_error("backward output %d is null", i);
  }
  return nullptr;
}

template <GemmMode kMode>
const char* launch_store(const GemmArgs& args, bool tf32, int splits, cudaStream_t stream) {
  return launch_implicit_gemm<kMode, Epilogue::kStore>(args, tf32, splits, stream);
}

const char* recompute_z_if_needed(const PyaeConvShape& s, bool tf32, const float* x,
                                  const float* w, const BackwardWorkspace& ws,
                                  cudaStream_t stream) {
  GemmArgs args{};
  args.g = geometry_of(s);
  args.image = x;
  args.matrix = s.transpose ? ws.w_t : w;
  args.out = ws.z_then_dz;
  args.n_cols = s.out_c;
  args.skip_if_set = ws.channels.recover_flag;
  if (s.transpose) return launch_store<GemmMode::kScatter>(args, tf32, 1, stream);
  return launch_store<GemmMode::kGather>(args, tf32, 1, stream);
}

const char* bn_lrelu_backward(const PyaeConvShape& s, const PyaeFusedParams& p, const float* y,
                              const float* dy, float* dgamma, float* dbeta,
                              const BackwardWorkspace& ws, cudaStream_t stream) {
  const int rows = s.batch * s.out_h * s.out_w;
  PYAE_RETURN_IF_FAILED(launch_backward_partials(y, dy, ws.z_then_dz, rows, s.out_c,
                                                 p.negative_slope, ws.channels, ws.part_dbeta,
                                                 ws.part_dgamma, stream));
  PYAE_RETURN_IF_FAILED(launch_finalize_backward(ws.part_dbeta, ws.part_dgamma,
                                                 ws.reduction_blocks, rows, s.out_c, p.training,
                                                 ws.channels, dbeta, dgamma, stream));
  return launch_compute_dz(y, dy, ws.z_then_dz, z_elements(s), s.out_c, p.negative_slope,
                           ws.channels, stream);
}

const char* data_gradient(const PyaeConvShape& s, bool tf32, const float* w,
                          const BackwardWorkspace& ws, float* dx, cudaStream_t stream) {
  GemmArgs args{};
  args.g = geometry_of(s);
  args.image = ws.z_then_dz;
  args.matrix = s.transpose ? w : ws.w_t;
  args.out = dx;
  args.n_cols = s.in_c;
  if (s.transpose) return launch_store<GemmMode::kGather>(args, tf32, 1, stream);
  return launch_store<GemmMode::kScatter>(args, tf32, 1, stream);
}

const char* weight_gradient(const PyaeConvShape& s, bool tf32, const float* x,
                            const BackwardWorkspace& ws, float* dw, cudaStream_t stream) {
  GemmArgs args{};
  args.g = geometry_of(s);
  args.image = s.transpose ? ws.z_then_dz : x;   // the big image
  args.matrix = s.transpose ? x : ws.z_then_dz;  // the small image
  args.n_cols = args.g.small_c;
  args.split_len = ws.dw_split_len;
  args.out = ws.dw_splits > 1 ? ws.dw_parts : dw;
  PYAE_RETURN_IF_FAILED(launch_store<GemmMode::kWeightGrad>(args, tf32, ws.dw_splits, stream));
  if (ws.dw_splits == 1) return nullptr;
  const int filter_size = filter_taps(s) * s.in_c * s.out_c;
  return launch_sum_splits(ws.dw_parts, ws.dw_splits, filter_size, dw, stream);
}

}  // namespace
}  // namespace pyae_cuda

size_t pyae_cuda_backward_workspace_bytes(const PyaeConvShape* shape) {
  if (pyae_cuda_validate_shape(shape) != nullptr) return 0;
  pyae_cuda::WorkspaceCarver sizer(nullptr);
  pyae_cuda::carve_backward(*shape, &sizer);
  return sizer.used();
}

const char* pyae_cuda_fused_backward(const PyaeConvShape* shape, const PyaeFusedParams* params,
                                     const float* x, const float* w, const float* gamma,
                                     const float* beta, const float* y, const float* mean,
                                     const float* var, const float* dy, float* dx, float* dw,
                                     float* dgamma, float* dbeta, void* workspace,
                                     size_t workspace_bytes, cudaStream_t stream) {
  using namespace pyae_cuda;
  PYAE_RETURN_IF_FAILED(pyae_cuda_validate_shape(shape));
  PYAE_RETURN_IF_FAILED(check_params(params));
  const PyaeConvShape& s = *shape;
  const PyaeFusedParams& p = *params;
  const float* inputs[] = {x, w, gamma, beta, y, mean, var, dy};
  float* outputs[] = {dx, dw, dgamma, dbeta};
  PYAE_RETURN_IF_FAILED(check_backward_pointers(inputs, 8, outputs, 4));
  PYAE_RETURN_IF_FAILED(
      check_workspace(pyae_cuda_backward_workspace_bytes(shape), workspace, workspace_bytes));
  static_cast<void>(cudaGetLastError());  // a stale error must not be blamed on this call

  WorkspaceCarver carver(workspace);
  const BackwardWorkspace ws = carve_backward(s, &carver);
  const bool tf32 = p.allow_tf32 != 0;
  const int big_c = s.transpose ? s.out_c : s.in_c;
  const int small_c = s.transpose ? s.in_c : s.out_c;
  PYAE_RETURN_IF_FAILED(launch_transpose_filter(w, ws.w_t, filter_taps(s), big_c, small_c, stream));
  PYAE_RETURN_IF_FAILED(launch_backward_setup(gamma, beta, mean, var, s.out_c, p.epsilon,
                                              p.negative_slope, ws.channels, stream));
  PYAE_RETURN_IF_FAILED(recompute_z_if_needed(s, tf32, x, w, ws, stream));
  PYAE_RETURN_IF_FAILED(
      bn_lrelu_backward(s, p, y, dy, dgamma, dbeta, ws, stream));
  PYAE_RETURN_IF_FAILED(data_gradient(s, tf32, w, ws, dx, stream));
  return weight_gradient(s, tf32, x, ws, dw, stream);
}
