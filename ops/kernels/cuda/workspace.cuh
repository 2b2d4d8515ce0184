// How the caller's workspace is cut into the temporaries of one forward or backward call.
// The same function sizes the workspace (base == nullptr) and carves it, so the two agree.
#ifndef PYAE_OPS_KERNELS_CUDA_WORKSPACE_CUH_
#define PYAE_OPS_KERNELS_CUDA_WORKSPACE_CUH_

#include <cstddef>

#include "channel_ops.cuh"
#include "conv_geometry.cuh"
#include "implicit_gemm.cuh"

namespace pyae_cuda {

class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base) : base_(static_cast<char*>(base)) {}

  template <typename T>
  T* take(size_t count) {
    const size_t start = (used_ + kAlignment - 1) / kAlignment * kAlignment;
    used_ = start + count * sizeof(T);
    return base_ == nullptr ? nullptr : reinterpret_cast<T*>(base_ + start);
  }

  size_t used() const { return used_; }

 private:
  static constexpr size_t kAlignment = 256;
  char* base_;
  size_t used_ = 0;
};

inline GemmMode forward_mode(const PyaeConvShape& s) {
  return s.transpose ? GemmMode::kScatter : GemmMode::kGather;
}

inline GemmMode data_grad_mode(const PyaeConvShape& s) {
  return s.transpose ? GemmMode::kGather : GemmMode::kScatter;
}

inline int filter_taps(const PyaeConvShape& s) { return s.kernel_h * s.kernel_w; }

inline long long z_elements(const PyaeConvShape& s) {
  return static_cast<long long>(s.batch) * s.out_h * s.out_w * s.out_c;
}

// dW is split over the small pixels so that enough blocks run; the partial sums are added
// in a fixed order afterwards. Depends only on the shape: results are reproducible.
inline int weight_grad_splits(const ConvGeometry& g, int* split_len) {
  constexpr long long kTargetBlocks = 1024;
  constexpr long long kMaxPartialFloats = 16ll << 20;  // 64 MiB of partials at most
  const long long small_pixels = static_cast<long long>(g.batch) * g.small_h * g.small_w;
  const long long filter_size = static_cast<long long>(g.kernel_h) * g.kernel_w * g.big_c * g.small_c;
  const dim3 tiles = gemm_grid(GemmMode::kWeightGrad, g, g.small_c, 1);
  long long splits = (kTargetBlocks + tiles.x * tiles.y - 1) / (tiles.x * tiles.y);
  splits = splits < (small_pixels + 255) / 256 ? splits : (small_pixels + 255) / 256;
  splits = splits < kMaxPartialFloats / filter_size ? splits : kMaxPartialFloats / filter_size;
  splits = splits < 65535 ? splits : 65535;
  splits = splits > 1 ? splits : 1;
  long long len = (small_pixels + splits - 1) / splits;
  len = (len + kTileK - 1) / kTileK * kTileK;
  *split_len = static_cast<int>(len);
  return static_cast<int>((small_pixels + len - 1) / len);
}

struct ForwardWorkspace {
  float* w_t;  // transposed filter for the scatter GEMM (transposed conv only)
  float* part_mean;
  float* part_m2;
  int* part_count;
  float* scale;
  int row_blocks;
};

inline ForwardWorkspace carve_forward(const PyaeConvShape& s, bool training,
                                      WorkspaceCarver* carver) {
  ForwardWorkspace ws{};
  const ConvGeometry g = geometry_of(s);
  if (s.transpose) ws.w_t = carver->take<float>(static_cast<size_t>(filter_taps(s)) * s.in_c * s.out_c);
  if (training) {
    ws.row_blocks = gemm_row_blocks(forward_mode(s), g, s.out_c);
    ws.part_mean = carver->take<float>(static_cast<size_t>(ws.row_blocks) * s.out_c);
    ws.part_m2 = carver->take<float>(static_cast<size_t>(ws.row_blocks) * s.out_c);
    ws.part_count = carver->take<int>(ws.row_blocks);
    ws.scale = carver->take<float>(s.out_c);
  }
  return ws;
}

struct BackwardWorkspace {
  float* w_t;        // transposed filter: conv dx and transposed-conv recomputation scatter
  float* z_then_dz;  // recomputed z (only when y cannot be inverted), then dz
  BackwardChannels channels;
  float* part_dbeta;
  float* part_dgamma;
  int reduction_blocks;
  float* dw_parts;  // null when dW needs a single split
  int dw_splits;
  int dw_split_len;
};

inline BackwardWorkspace carve_backward(const PyaeConvShape& s, WorkspaceCarver* carver) {
  BackwardWorkspace ws{};
  const ConvGeometry g = geometry_of(s);
  const size_t filter_size = static_cast<size_t>(filter_taps(s)) * s.in_c * s.out_c;
  const int c = s.out_c;
  ws.w_t = carver->take<float>(filter_size);
  ws.z_then_dz = carver->take<float>(static_cast<size_t>(z_elements(s)));
  ws.channels.recover_flag = carver->take<int>(1);
  ws.channels.center = carver->take<float>(c);
  ws.channels.xhat_scale = carver->take<float>(c);
  ws.channels.bn_scale = carver->take<float>(c);
  ws.channels.coef_du = carver->take<float>(c);
  ws.channels.coef_xhat = carver->take<float>(c);
  ws.channels.coef_const = carver->take<float>(c);
  ws.reduction_blocks = reduction_row_blocks(s.batch * s.out_h * s.out_w);
  ws.part_dbeta = carver->take<float>(static_cast<size_t>(ws.reduction_blocks) * c);
  ws.part_dgamma = carver->take<float>(static_cast<size_t>(ws.reduction_blocks) * c);
  ws.dw_splits = weight_grad_splits(g, &ws.dw_split_len);
  if (ws.dw_splits > 1) ws.dw_parts = carver->take<float>(filter_size * ws.dw_splits);
  return ws;
}

}  // namespace pyae_cuda

#endif  // PYAE_OPS_KERNELS_CUDA_WORKSPACE_CUH_
