// Forward of the fused op.
//   training:  one GEMM writes z into y and per-block column moments (epilogue), a per-channel
//              kernel merges them, and one elementwise pass turns z into y in place: no buffer
//              the size of z besides y itself.
//   inference: BN and LeakyReLU are folded into the GEMM epilogue: one pass.
#include "api_checks.cuh"
#include "cuda_status.cuh"
#include "fused_conv_bn_lrelu_cuda.h"
#include "workspace.cuh"

namespace pyae_cuda {
namespace {

const char* check_forward_pointers(const PyaeFusedParams& p, const float* x, const float* w,
                                   const float* gamma, const float* beta, const float* mean,
                                   const float* var, const float* y, const float* batch_mean,
                                   const float* batch_var) {
  if (x == nullptr || w == nullptr || gamma == nullptr || beta == nullptr || y == nullptr) {
    return set_error("x, w, gamma, beta and y must not be null");
  }
  if (p.training && (batch_mean == nullptr || batch_var == nullptr)) {
    return set_error("training needs batch_mean and batch_var outputs");
  }
  if (!p.training && (mean == nullptr || var == nullptr)) {
    return set_error("inference needs the moving mean and variance");
  }
  return nullptr;
}

GemmArgs forward_gemm_args(const PyaeConvShape& s, const float* x, const float* w,
                           const float* w_t, float* y) {
  GemmArgs args{};
  args.g = geometry_of(s);
  args.image = x;
  args.matrix = s.transpose ? w_t : w;
  args.out = y;
  args.n_cols = s.out_c;
  return args;
}

template <Epilogue kEpilogue>
const char* launch_forward_gemm(const PyaeConvShape& s, const GemmArgs& args, bool tf32,
                                cudaStream_t stream) {
  if (s.transpose) return launch_implicit_gemm<GemmMode::kScatter, kEpilogue>(args, tf32, 1, stream);
  return launch_implicit_gemm<GemmMode::kGather, kEpilogue>(args, tf32, 1, stream);
}

const char* forward_training(const PyaeConvShape& s, const PyaeFusedParams& p, GemmArgs args,
                             const ForwardWorkspace& ws, const float* gamma, const float* beta,
                             float* y, float* batch_mean, float* batch_var,
                             cudaStream_t stream) {
  args.part_mean = ws.part_mean;
  args.part_m2 = ws.part_m2;
  args.part_count = ws.part_count;
  PYAE_RETURN_IF_FAILED(launch_forward_gemm<Epilogue::kStoreStats>(s, args, p.allow_tf32, stream));
  PYAE_RETURN_IF_FAILED(launch_finalize_batch_stats(ws.part_mean, ws.part_m2, ws.part_count,
                                                    ws.row_blocks, s.out_c, gamma, p.epsilon,
                                                    batch_mean, batch_var, ws.scale, stream));
  return launch_normalize_leaky_relu(y, z_elements(s), s.out_c, batch_mean, ws.scale, beta,
                                     p.negative_slope, stream);
}

const char* forward_inference(const PyaeConvShape& s, const PyaeFusedParams& p, GemmArgs args,
                              const float* gamma, const float* beta, const float* mean,
                              const float* var, cudaStream_t stream) {
  args.gamma = gamma;
  args.beta = beta;
  args.mean = mean;
  args.var = var;
  args.epsilon = p.epsilon;
  args.negative_slope = p.negative_slope;
  return launch_forward_gemm<Epilogue::kNormalize>(s, args, p.allow_tf32, stream);
}

}  // namespace
}  // namespace pyae_cuda

size_t pyae_cuda_forward_workspace_bytes(const PyaeConvShape* shape, int training) {
  if (pyae_cuda_validate_shape(shape) != nullptr) return 0;
  pyae_cuda::WorkspaceCarver sizer(nullptr);
  pyae_cuda::carve_forward(*shape, training != 0, &sizer);
  return sizer.used();
}

const char* pyae_cuda_fused_forward(const PyaeConvShape* shape, const PyaeFusedParams* params,
                                    const float* x, const float* w, const float* gamma,
                                    const float* beta, const float* mean, const float* var,
                                    float* y, float* batch_mean, float* batch_var,
                                    void* workspace, size_t workspace_bytes,
                                    cudaStream_t stream) {
  using namespace pyae_cuda;
  PYAE_RETURN_IF_FAILED(pyae_cuda_validate_shape(shape));
  PYAE_RETURN_IF_FAILED(check_params(params));
  const PyaeConvShape& s = *shape;
  const PyaeFusedParams& p = *params;
  PYAE_RETURN_IF_FAILED(
      check_forward_pointers(p, x, w, gamma, beta, mean, var, y, batch_mean, batch_var));
  PYAE_RETURN_IF_FAILED(check_workspace(pyae_cuda_forward_workspace_bytes(shape, p.training),
                                        workspace, workspace_bytes));
  static_cast<void>(cudaGetLastError());  // a stale error must not be blamed on this call

  WorkspaceCarver carver(workspace);
  const ForwardWorkspace ws = carve_forward(s, p.training != 0, &carver);
  if (s.transpose) {
    PYAE_RETURN_IF_FAILED(launch_transpose_filter(w, ws.w_t, filter_taps(s), s.out_c, s.in_c, stream));
  }
  const GemmArgs args = forward_gemm_args(s, x, w, ws.w_t, y);
  if (p.training) {
    return forward_training(s, p, args, ws, gamma, beta, y, batch_mean, batch_var, stream);
  }
  return forward_inference(s, p, args, gamma, beta, mean, var, stream);
}
