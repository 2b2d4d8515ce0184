// Implicit-GEMM convolution: a 64x64x16 shared-memory tiled GEMM whose operands are read
// straight from the NHWC images through im2col address tables (no im2col buffer).
//
// C[row, col] = sum_k A[row, k] * B[k, col]
//   gather:  row = small pixel, k = (kh, kw, cb), col = cs;  A = big patch, B = W
//   scatter: row = big pixel of one phase, k = (tap_h, tap_w, cs), col = cb;  A = small, B = W^T
//   wgrad:   row = (kh, kw, cb), k = small pixel (one split), col = cs;  A = big patch, B = small
// An A element is image[row.offset + k.offset] when row.h + k.h and row.w + k.w fall inside
// the image, else 0 (the padding). The tables are built once per block (rows) and once per
// K tile (k), so the inner loop pays two adds and two compares per element, no divisions.
#ifndef PYAE_OPS_KERNELS_CUDA_IMPLICIT_GEMM_CUH_
#define PYAE_OPS_KERNELS_CUDA_IMPLICIT_GEMM_CUH_

#include <mma.h>

#include "conv_geometry.cuh"
#include "cuda_status.cuh"

namespace pyae_cuda {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
constexpr int kGemmThreads = 256;
constexpr int kPitchA = kTileM + 4;  // +4 floats: fewer bank conflicts, float4/wmma alignment kept
constexpr int kPitchC = kTileN + 4;
constexpr int kOutside = -(1 << 28);  // an h that no valid offset can bring back into the image

enum class GemmMode { kGather, kScatter, kWeightGrad };
enum class Epilogue {
  kStore,       // out = C
  kStoreStats,  // out = C, plus per-block (mean, M2, count) of every column
  kNormalize,   // out = leaky_relu((C - mean) * gamma / sqrt(var + eps) + beta), inference BN
};

struct GemmArgs {
  ConvGeometry g;
  const float* image;   // A: big image (gather, wgrad) or small image (scatter)
  const float* matrix;  // B: W (gather), W as (kh, kw, cs, cb) (scatter), small image (wgrad)
  float* out;
  int n_cols;     // GEMM columns: small_c (gather, wgrad) or big_c (scatter)
  int split_len;  // wgrad: small pixels summed by one blockIdx.z
  // kStoreStats: partials indexed [row_block][column], row_block = z * gridDim.x + x
  float* part_mean;
  float* part_m2;
  int* part_count;
  // kNormalize
  const float* gamma;
  const float* beta;
  const float* mean;
  const float* var;
  float epsilon;
  float negative_slope;
  // When non-null and *skip_if_set != 0 the whole launch is a no-op (decided on the device).
  const int* skip_if_set;
};

struct RowEntry {
  int offset, h, w, out_offset;  // out_offset < 0: row outside the GEMM
};
struct KEntry {
  int offset, h, w, b_offset;  // b_offset < 0: k outside the GEMM
};

struct BlockTask {
  int rows;
  int k_begin, k_end;
  int phase_h, phase_w;
  ScatterPhase phase;
  int split;
};

__device__ inline RowEntry outside_row() { return RowEntry{0, kOutside, kOutside, -1}; }
__device__ inline KEntry outside_k() { return KEntry{0, kOutside, kOutside, -1}; }

template <GemmMode kMode>
__device__ BlockTask block_task(const GemmArgs& args) {
  const ConvGeometry& g = args.g;
  BlockTask task{};
  if (kMode == GemmMode::kGather) {
    task.rows = g.batch * g.small_h * g.small_w;
    task.k_end = g.kernel_h * g.kernel_w * g.big_c;
  } else if (kMode == GemmMode::kScatter) {
    task.phase_h = blockIdx.z / g.stride_w;
    task.phase_w = blockIdx.z % g.stride_w;
    task.phase = scatter_phase(g, task.phase_h, task.phase_w);
    task.rows = g.batch * task.phase.rows_h * task.phase.rows_w;
    task.k_end = task.phase.taps_h * task.phase.taps_w * g.small_c;
  } else {
    const int small_pixels = g.batch * g.small_h * g.small_w;
    task.rows = g.kernel_h * g.kernel_w * g.big_c;
    task.split = blockIdx.z;
    task.k_begin = task.split * args.split_len;
    task.k_end = min(task.k_begin + args.split_len, small_pixels);
  }
  return task;
}

// (n, i, j) of a small pixel -> the top-left big pixel its kernel window starts at.
__device__ inline void small_pixel_window(const ConvGeometry& g, int pixel, int* n, int* h,
                                          int* w) {
  const int per_image = g.small_h * g.small_w;
  *n = pixel / per_image;
  const int rest = pixel - *n * per_image;
  const int i = rest / g.small_w;
  const int j = rest - i * g.small_w;
  *h = i * g.stride_h - g.pad_top;
  *w = j * g.stride_w - g.pad_left;
}

// (kh, kw, cb) of a filter row -> its offset inside a big-image window.
__device__ inline void filter_tap(const ConvGeometry& g, int index, int* kh, int* kw, int* c) {
  const int per_kh = g.kernel_w * g.big_c;
  *kh = index / per_kh;
  const int rest = index - *kh * per_kh;
  *kw = rest / g.big_c;
  *c = rest - *kw * g.big_c;
}

template <GemmMode kMode>
__device__ RowEntry make_row(const GemmArgs& args, const BlockTask& task, int row) {
  if (row >= task.rows) return outside_row();
  const ConvGeometry& g = args.g;
  RowEntry e;
  if (kMode == GemmMode::kGather) {
    int n, h, w;
    small_pixel_window(g, row, &n, &h, &w);
    e.h = h, e.w = w;
    e.offset = ((n * g.big_h + h) * g.big_w + w) * g.big_c;
    e.out_offset = row * args.n_cols;
  } else if (kMode == GemmMode::kScatter) {
    const ScatterPhase& p = task.phase;
    const int n = row / (p.rows_h * p.rows_w);
    const int rest = row - n * p.rows_h * p.rows_w;
    const int a = rest / p.rows_w;
    const int b = rest - a * p.rows_w;
    e.h = a + p.shift_h, e.w = b + p.shift_w;
    e.offset = ((n * g.small_h + e.h) * g.small_w + e.w) * g.small_c;
    const int big_row = task.phase_h + a * g.stride_h;
    const int big_col = task.phase_w + b * g.stride_w;
    e.out_offset = ((n * g.big_h + big_row) * g.big_w + big_col) * g.big_c;
  } else {
    int kh, kw, c;
    filter_tap(g, row, &kh, &kw, &c);
    e.h = kh, e.w = kw;
    e.offset = (kh * g.big_w + kw) * g.big_c + c;
    e.out_offset = (task.split * task.rows + row) * args.n_cols;
  }
  return e;
}

template <GemmMode kMode>
__device__ KEntry make_k(const GemmArgs& args, const BlockTask& task, int k) {
  if (k >= task.k_end) return outside_k();
  const ConvGeometry& g = args.g;
  KEntry e;
  if (kMode == GemmMode::kGather) {
    int kh, kw, c;
    filter_tap(g, k, &kh, &kw, &c);
    e.h = kh, e.w = kw;
    e.offset = (kh * g.big_w + kw) * g.big_c + c;
    e.b_offset = k * args.n_cols;
  } else if (kMode == GemmMode::kScatter) {
    const ScatterPhase& p = task.phase;
    const int per_tap_h = p.taps_w * g.small_c;
    const int t = k / per_tap_h;
    const int rest = k - t * per_tap_h;
    const int u = rest / g.small_c;
    const int c = rest - u * g.small_c;
    e.h = -t, e.w = -u;
    e.offset = (-t * g.small_w - u) * g.small_c + c;
    const int kh = p.first_kh + t * g.stride_h;
    const int kw = p.first_kw + u * g.stride_w;
    e.b_offset = ((kh * g.kernel_w + kw) * g.small_c + c) * args.n_cols;
  } else {
    int n, h, w;
    small_pixel_window(g, k, &n, &h, &w);
    e.h = h, e.w = w;
    e.offset = ((n * g.big_h + h) * g.big_w + w) * g.big_c;
    e.b_offset = k * args.n_cols;
  }
  return e;
}

// Register-staged tiles: the next K tile is fetched from global memory while the current
// one is multiplied out of shared memory.
struct StagedTiles {
  float a[4];
  float b[4];
};

template <GemmMode kMode>
__device__ void fetch_tiles(const GemmArgs& args, const RowEntry* rows, const KEntry* ks,
                            int col0, StagedTiles* staged) {
  // gather/scatter: consecutive k are consecutive channels; wgrad: consecutive rows are.
  constexpr bool kKFastest = kMode != GemmMode::kWeightGrad;
  const int image_h = kMode == GemmMode::kScatter ? args.g.small_h : args.g.big_h;
  const int image_w = kMode == GemmMode::kScatter ? args.g.small_w : args.g.big_w;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int index = threadIdx.x + e * kGemmThreads;
    const int r = kKFastest ? index / kTileK : index % kTileM;
    const int k = kKFastest ? index % kTileK : index / kTileM;
    const RowEntry& row = rows[r];
    const KEntry& kk = ks[k];
    const bool inside = static_cast<unsigned>(row.h + kk.h) < static_cast<unsigned>(image_h) &&
                        static_cast<unsigned>(row.w + kk.w) < static_cast<unsigned>(image_w);
    staged->a[e] = inside ? __ldg(args.image + row.offset + kk.offset) : 0.0f;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int index = threadIdx.x + e * kGemmThreads;
    const int n = index % kTileN;
    const int k = index / kTileN;
    const int b_offset = ks[k].b_offset;
    const bool inside = b_offset >= 0 && col0 + n < args.n_cols;
    staged->b[e] = inside ? __ldg(args.matrix + b_offset + col0 + n) : 0.0f;
  }
}

template <GemmMode kMode>
__device__ void store_tiles(const StagedTiles& staged, float* a_tile, float* b_tile) {
  constexpr bool kKFastest = kMode != GemmMode::kWeightGrad;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int index = threadIdx.x + e * kGemmThreads;
    const int r = kKFastest ? index / kTileK : index % kTileM;
    const int k = kKFastest ? index % kTileK : index / kTileM;
    a_tile[k * kPitchA + r] = staged.a[e];
    b_tile[(index / kTileN) * kTileN + index % kTileN] = staged.b[e];
  }
}

// Each thread owns a 4x4 block of C: rows 4*(tid/16).., columns 4*(tid%16)..
__device__ inline void multiply_tile_fma(const float* a_tile, const float* b_tile,
                                         float acc[4][4]) {
  const int row = (threadIdx.x / 16) * 4;
  const int col = (threadIdx.x % 16) * 4;
#pragma unroll
  for (int k = 0; k < kTileK; ++k) {
    const float4 a = *reinterpret_cast<const float4*>(a_tile + k * kPitchA + row);
    const float4 b = *reinterpret_cast<const float4*>(b_tile + k * kTileN + col);
    const float av[4] = {a.x, a.y, a.z, a.w};
    const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
  }
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define PYAE_HAVE_TF32_MMA 1
namespace wmma = nvcuda::wmma;
using Tf32FragmentA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32,
                                     wmma::col_major>;
using Tf32FragmentB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32,
                                     wmma::row_major>;
using Tf32Accumulator = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

// Warp w computes rows 16*(w%4).. and columns 32*(w/4).. as two 16x16 fragments.
__device__ inline void multiply_tile_tf32(const float* a_tile, const float* b_tile,
                                          Tf32Accumulator acc[2]) {
  const int warp = threadIdx.x / 32;
  const int row = (warp % 4) * 16;
  const int col = (warp / 4) * 32;
#pragma unroll
  for (int k = 0; k < kTileK; k += 8) {
    Tf32FragmentA a;
    wmma::load_matrix_sync(a, a_tile + k * kPitchA + row, kPitchA);
#pragma unroll
    for (int i = 0; i < a.num_elements; ++i) a.x[i] = wmma::__float_to_tf32(a.x[i]);
#pragma unroll
    for (int f = 0; f < 2; ++f) {
      Tf32FragmentB b;
      wmma::load_matrix_sync(b, b_tile + k * kTileN + col + 16 * f, kTileN);
#pragma unroll
      for (int i = 0; i < b.num_elements; ++i) b.x[i] = wmma::__float_to_tf32(b.x[i]);
      wmma::mma_sync(acc[f], a, b, acc[f]);
    }
  }
}

__device__ inline void store_tf32(const Tf32Accumulator acc[2], float* c_tile) {
  const int warp = threadIdx.x / 32;
  const int row = (warp % 4) * 16;
  const int col = (warp / 4) * 32;
  for (int f = 0; f < 2; ++f) {
    wmma::store_matrix_sync(c_tile + row * kPitchC + col + 16 * f, acc[f], kPitchC,
                            wmma::mem_row_major);
  }
}
#endif

// Mean and M2 of each column over this block's valid rows, two passes over the C tile in
// shared memory (exact centring; blocks are merged later with Chan's formula in double).
__device__ inline void write_column_stats(const GemmArgs& args, const float* c_tile,
                                          int valid_rows, int col0) {
  const int row_block = blockIdx.z * gridDim.x + blockIdx.x;
  if (blockIdx.y == 0 && threadIdx.x == 0) args.part_count[row_block] = valid_rows;
  const int column = threadIdx.x;
  if (column >= kTileN || col0 + column >= args.n_cols) return;
  float sum = 0.0f;
  for (int r = 0; r < valid_rows; ++r) sum += c_tile[r * kPitchC + column];
  const float mean = sum / static_cast<float>(valid_rows);
  float m2 = 0.0f;
  for (int r = 0; r < valid_rows; ++r) {
    const float d = c_tile[r * kPitchC + column] - mean;
    m2 = fmaf(d, d, m2);
  }
  args.part_mean[row_block * args.n_cols + col0 + column] = mean;
  args.part_m2[row_block * args.n_cols + col0 + column] = m2;
}

template <Epilogue kEpilogue>
__device__ void write_outputs(const GemmArgs& args, const RowEntry* rows, int col0,
                              const float acc[4][4]) {
  const int row0 = (threadIdx.x / 16) * 4;
  const int col_base = col0 + (threadIdx.x % 16) * 4;
  float mean[4], scale[4], shift[4];
  if (kEpilogue == Epilogue::kNormalize) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = min(col_base + j, args.n_cols - 1);
      mean[j] = args.mean[c];
      scale[j] = args.gamma[c] / sqrtf(args.var[c] + args.epsilon);
      shift[j] = args.beta[c];
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int out_offset = rows[row0 + i].out_offset;
    if (out_offset < 0) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (col_base + j >= args.n_cols) continue;
      float v = acc[i][j];
      if (kEpilogue == Epilogue::kNormalize) {
        v = fmaf(v - mean[j], scale[j], shift[j]);
        v = v > 0.0f ? v : v * args.negative_slope;
      }
      args.out[out_offset + col_base + j] = v;
    }
  }
}

template <GemmMode kMode, Epilogue kEpilogue, bool kTf32>
__global__ void __launch_bounds__(kGemmThreads) implicit_gemm_kernel(GemmArgs args) {
  __shared__ __align__(128) float a_tile[kTileK * kPitchA];
  __shared__ __align__(128) float b_tile[kTileK * kTileN];
  __shared__ __align__(128) float c_tile[kTileM * kPitchC];
  __shared__ RowEntry rows[kTileM];
  __shared__ KEntry ks[2][kTileK];

  if (args.skip_if_set != nullptr && *args.skip_if_set != 0) return;
  const BlockTask task = block_task<kMode>(args);
  const int row0 = blockIdx.x * kTileM;
  const int col0 = blockIdx.y * kTileN;
  const int valid_rows = min(kTileM, task.rows - row0);
  if (valid_rows <= 0) {  // a scatter phase with fewer rows than the largest one
    if (kEpilogue == Epilogue::kStoreStats && blockIdx.y == 0 && threadIdx.x == 0) {
      args.part_count[blockIdx.z * gridDim.x + blockIdx.x] = 0;
    }
    return;
  }
  if (threadIdx.x < kTileM) rows[threadIdx.x] = make_row<kMode>(args, task, row0 + threadIdx.x);
  if (threadIdx.x < kTileK) ks[0][threadIdx.x] = make_k<kMode>(args, task, task.k_begin + threadIdx.x);
  __syncthreads();

  float acc[4][4] = {};
#ifdef PYAE_HAVE_TF32_MMA
  Tf32Accumulator mma_acc[2];
  if (kTf32) {
    wmma::fill_fragment(mma_acc[0], 0.0f);
    wmma::fill_fragment(mma_acc[1], 0.0f);
  }
#endif
  const int k_tiles = (task.k_end - task.k_begin + kTileK - 1) / kTileK;
  StagedTiles staged;
  if (k_tiles > 0) fetch_tiles<kMode>(args, rows, ks[0], col0, &staged);
  for (int tile = 0; tile < k_tiles; ++tile) {
    store_tiles<kMode>(staged, a_tile, b_tile);
    const bool has_next = tile + 1 < k_tiles;
    KEntry* next_ks = ks[(tile + 1) & 1];
    if (has_next && threadIdx.x < kTileK) {
      next_ks[threadIdx.x] =
          make_k<kMode>(args, task, task.k_begin + (tile + 1) * kTileK + threadIdx.x);
    }
    __syncthreads();
    if (has_next) fetch_tiles<kMode>(args, rows, next_ks, col0, &staged);
#ifdef PYAE_HAVE_TF32_MMA
    if (kTf32) {
      multiply_tile_tf32(a_tile, b_tile, mma_acc);
    } else {
      multiply_tile_fma(a_tile, b_tile, acc);
    }
#else
    multiply_tile_fma(a_tile, b_tile, acc);
#endif
    __syncthreads();
  }

  const int my_row = (threadIdx.x / 16) * 4;
  const int my_col = (threadIdx.x % 16) * 4;
  bool tile_in_smem = false;
#ifdef PYAE_HAVE_TF32_MMA
  if (kTf32) {  // bring the fragments into the same 4x4-per-thread layout as the FMA path
    store_tf32(mma_acc, c_tile);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = c_tile[(my_row + i) * kPitchC + my_col + j];
    }
    tile_in_smem = true;
  }
#endif
  write_outputs<kEpilogue>(args, rows, col0, acc);
  if (kEpilogue == Epilogue::kStoreStats) {
    if (!tile_in_smem) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) c_tile[(my_row + i) * kPitchC + my_col + j] = acc[i][j];
      }
    }
    __syncthreads();
    write_column_stats(args, c_tile, valid_rows, col0);
  }
}

// Launch geometry. Row blocks (grid.x * grid.z) is also the number of stats partials.
inline dim3 gemm_grid(GemmMode mode, const ConvGeometry& g, int n_cols, int splits) {
  const int col_blocks = (n_cols + kTileN - 1) / kTileN;
  if (mode == GemmMode::kGather) {
    const int rows = g.batch * g.small_h * g.small_w;
    return dim3((rows + kTileM - 1) / kTileM, col_blocks, 1);
  }
  if (mode == GemmMode::kScatter) {
    const int rows = g.batch * count_in_phase(g.big_h, g.stride_h, 0) *
                     count_in_phase(g.big_w, g.stride_w, 0);
    return dim3((rows + kTileM - 1) / kTileM, col_blocks, g.stride_h * g.stride_w);
  }
  const int rows = g.kernel_h * g.kernel_w * g.big_c;
  return dim3((rows + kTileM - 1) / kTileM, col_blocks, splits);
}

inline int gemm_row_blocks(GemmMode mode, const ConvGeometry& g, int n_cols) {
  const dim3 grid = gemm_grid(mode, g, n_cols, 1);
  return static_cast<int>(grid.x * grid.z);
}

template <GemmMode kMode, Epilogue kEpilogue>
const char* launch_implicit_gemm(const GemmArgs& args, bool allow_tf32, int splits,
                                 cudaStream_t stream) {
  const dim3 grid = gemm_grid(kMode, args.g, args.n_cols, splits);
  if (grid.y > 65535u || grid.z > 65535u) {
    return set_error("convolution too large for one launch: grid (%u, %u, %u)", grid.x, grid.y,
                     grid.z);
  }
  if (allow_tf32) {
    implicit_gemm_kernel<kMode, kEpilogue, true><<<grid, kGemmThreads, 0, stream>>>(args);
  } else {
    implicit_gemm_kernel<kMode, kEpilogue, false><<<grid, kGemmThreads, 0, stream>>>(args);
  }
  PYAE_CUDA_CHECK_LAUNCH("implicit_gemm_kernel");
  return nullptr;
}

}  // namespace pyae_cuda

#endif  // PYAE_OPS_KERNELS_CUDA_IMPLICIT_GEMM_CUH_
