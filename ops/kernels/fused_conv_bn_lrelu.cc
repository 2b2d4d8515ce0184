// The fused op's CPU kernels, compiled once per path (see isa_target.h and fused_isa.h): the
// direct conv kernels and the auto-vectorised statistics and epilogue loops all get the path's
// instructions. fused_dispatch.cc calls the path in use.
#include "fused_conv_bn_lrelu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "direct_conv.h"
#include "fused_isa.h"
#include "gemm.h"
#include "im2col.h"
#include "scratch.h"

#include "isa_target.h"  // after every other include

#include "bn_loops.h"  // compiled for this path: after the target pragma

namespace pyae {
namespace PYAE_ISA_NS {
namespace {

// Tiles of small-image pixels sized so their patch matrix (~1 MiB) stays in L2.
int64_t TileRows(const ConvGeometry& g) {
  constexpr int64_t kTileFloats = 256 * 1024;
  return std::max<int64_t>(32, kTileFloats / g.patch_size());
}

template <typename Fn>
void ForEachTile(const ConvGeometry& g, int64_t first_image, int64_t end_image, Fn fn) {
  const int64_t tile_rows = TileRows(g);
  const int64_t end = end_image * g.small_pixels();
  for (int64_t s = first_image * g.small_pixels(); s < end; s += tile_rows) {
    fn(s, std::min(tile_rows, end - s));
  }
}

bool UnitStride(const ConvGeometry& g) { return g.stride_h == 1 && g.stride_w == 1; }

// At stride 1 the adjoint of the big->small conv is itself a conv, small->big, with the kernel
// flipped and its channel axes swapped. Running it as im2col + GEMM writes each output row
// once, where col2im would scatter-add every patch.
ConvGeometry AdjointGeometry(const ConvGeometry& g) {
  ConvGeometry adjoint = g;
  adjoint.big_h = g.small_h;
  adjoint.big_w = g.small_w;
  adjoint.big_c = g.small_c;
  adjoint.small_h = g.big_h;
  adjoint.small_w = g.big_w;
  adjoint.small_c = g.big_c;
  adjoint.pad_top = g.kernel_h - 1 - g.pad_top;
  adjoint.pad_left = g.kernel_w - 1 - g.pad_left;
  return adjoint;
}

// kernel [kh][kw][big_c][small_c] -> [kh][kw][small_c][big_c], the taps in the same order
// (what the direct transposed conv reads) or flipped (the unit-stride adjoint's kernel).
std::vector<float> TapTransposedKernel(const ConvGeometry& g, const float* kernel, bool flip) {
  const int64_t kh = g.kernel_h, kw = g.kernel_w, big_c = g.big_c, small_c = g.small_c;
  std::vector<float> transposed(kh * kw * big_c * small_c);
  for (int64_t i = 0; i < kh; ++i) {
    for (int64_t j = 0; j < kw; ++j) {
      const float* tap = kernel + (i * kw + j) * big_c * small_c;
      const int64_t to_tap = flip ? (kh - 1 - i) * kw + (kw - 1 - j) : i * kw + j;
      float* to = transposed.data() + to_tap * small_c * big_c;
      for (int64_t ci = 0; ci < big_c; ++ci) {
        for (int64_t co = 0; co < small_c; ++co) to[co * big_c + ci] = tap[ci * small_c + co];
      }
    }
  }
  return transposed;
}

std::vector<float> AdjointKernel(const ConvGeometry& g, const float* kernel) {
  return TapTransposedKernel(g, kernel, true);
}

// A conv's filter matrix [patch_size, small_c], and the same packed for the direct kernels
// when this build has them (packed, where it needs to be, once per call; shared by every task).
struct ConvFilter {
  const float* matrix = nullptr;
  std::unique_ptr<PackedFilter> packed;
};

ConvFilter MakeConvFilter(const ConvGeometry& conv, const float* matrix) {
  ConvFilter filter;
  filter.matrix = matrix;
  if (matrix != nullptr && DirectConvAvailable()) {
    filter.packed = std::make_unique<PackedFilter>(matrix, conv.patch_size(), conv.small_c);
  }
  return filter;
}

// The kernel regrouped per tap and packed for DirectConvTranspose (empty without the direct
// kernels).
std::unique_ptr<PackedFilter> PackTransposed(const ConvGeometry& g, const float* kernel) {
  if (!DirectConvAvailable()) return nullptr;
  return std::make_unique<PackedFilter>(TapTransposedKernel(g, kernel, false),
                                        g.kernel_h * g.kernel_w * g.small_c,
                                        g.big_c);
}

// How z is computed: g's own conv; for a unit-stride transposed conv, the adjoint conv with
// the flipped kernel (one write per z row instead of a scatter-add); for a strided one, the
// direct transposed conv where this build has it, else GEMM + col2im.
struct ZConv {
  ConvGeometry conv;
  std::vector<float> adjoint_kernel;
  ConvFilter filter;
  std::unique_ptr<PackedFilter> transposed;
};

std::unique_ptr<ZConv> MakeZConv(const ConvGeometry& g, const float* kernel) {
  auto z_conv = std::make_unique<ZConv>();
  z_conv->conv = g;
  if (!g.transpose) {
    z_conv->filter = MakeConvFilter(g, kernel);
  } else if (UnitStride(g)) {
    z_conv->conv = AdjointGeometry(g);
    z_conv->adjoint_kernel = AdjointKernel(g, kernel);
    z_conv->filter = MakeConvFilter(z_conv->conv, z_conv->adjoint_kernel.data());
  } else {
    z_conv->transposed = PackTransposed(g, kernel);
  }
  return z_conv;
}

// Blocks for the direct kernels, largest first: each takes half of one thread's share of
// what is left (whole chunks of `chunk` images while that is at least one chunk), down to
// quarter chunks at the end. Tasks are pulled in order, so the threads finish together
// however late one of them starts: the last tasks are small. (Equal blocks left a thread
// idle for up to one block at the end of every pass: ~6% of a backward.)
ImageBlocks GuidedBlocks(int64_t batch, int64_t chunk, const Runtime& runtime) {
  const int64_t smallest = std::max<int64_t>(1, chunk / 4);
  const int64_t share = 2 * std::max(1, runtime.num_threads);
  ImageBlocks blocks{{0}};
  for (int64_t image = 0; image < batch;) {
    const int64_t left = batch - image;
    int64_t size = (left + share - 1) / share;
    size = size >= chunk ? size / chunk * chunk : std::max(smallest, size);
    image += std::min(size, left);
    blocks.bounds.push_back(image);
  }
  return blocks;
}

// The forward's blocks: guided on the direct kernels (the strided transposed conv's run an
// image at a time), equal ones for the GEMM path.
ImageBlocks ForwardBlocks(const ConvGeometry& g, const ZConv& z_conv, const Runtime& runtime) {
  if (z_conv.filter.packed) {
    return GuidedBlocks(g.batch, DirectChunkImages(z_conv.conv), runtime);
  }
  if (z_conv.transposed) return GuidedBlocks(g.batch, 1, runtime);
  return EqualBlocks(g.batch, runtime);
}

// y = leaky_relu(z * scale + shift) in place.
void ApplyEpilogue(float* __restrict z, int64_t rows, int64_t channels,
                   const float* __restrict scale, const float* __restrict shift, float slope) {
  for (int64_t r = 0; r < rows; ++r) {
    float* __restrict row = z + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const float u = row[c] * scale[c] + shift[c];
      row[c] = u > 0.0f ? u : u * slope;
    }
  }
}

// Applies `epilogue` (if any) to rows the GEMM paths computed, then hands them to on_rows.
template <typename OnRows>
void FinishRows(TileEpilogue* epilogue, int64_t channels, float* rows, int64_t count,
                OnRows& on_rows) {
  if (epilogue != nullptr) {
    ApplyEpilogue(rows, count, channels, epilogue->scale, epilogue->shift,
                  epilogue->negative_slope);
  }
  on_rows(rows, count);
}

// out rows [first image, end image) of `conv` = conv(in); on_rows sees each finished run of
// rows, after `epilogue` (if any) made them y.
template <typename OnRows>
void ConvRows(const ConvGeometry& conv, const float* in, const ConvFilter& filter,
              int64_t first, int64_t end, Scratch* cols, float* out, OnRows on_rows,
              TileEpilogue* epilogue = nullptr) {
  if (filter.packed) {
    DirectConv(conv, in, *filter.packed, first, end, out, on_rows, epilogue);
    return;
  }
  const float* matrix = filter.matrix;
  const int64_t patch = conv.patch_size();
  cols->Reserve(TileRows(conv) * patch);
  ForEachTile(conv, first, end, [&](int64_t s, int64_t rows) {
    Im2Col(conv, in, s, rows, cols->data());
    float* out_rows = out + s * conv.small_c;
    Gemm(false, false, rows, conv.small_c, patch, 1.0f, cols->data(), patch, matrix,
         conv.small_c, 0.0f, out_rows, conv.small_c);
    FinishRows(epilogue, conv.small_c, out_rows, rows, on_rows);
  });
}

// Computes z for images [first, end) into `z` (whole-batch layout). `on_rows(rows, count)`
// sees each finished run of z rows while it is still in cache. With an `epilogue`, the rows
// are y: the direct kernels apply it in registers, the GEMM paths to each run.
template <typename OnRows>
void ComputeZ(const ConvGeometry& g, const ZConv& z_conv, const float* x, const float* kernel,
              int64_t first, int64_t end, Scratch* cols, float* z, OnRows on_rows,
              TileEpilogue* epilogue = nullptr) {
  if (!g.transpose || UnitStride(g)) {
    ConvRows(z_conv.conv, x, z_conv.filter, first, end, cols, z, on_rows, epilogue);
    return;
  }
  if (z_conv.transposed) {
    DirectConvTranspose(g, x, *z_conv.transposed, first, end, z, on_rows, epilogue);
    return;
  }
  const int64_t patch = g.patch_size();
  cols->Reserve(TileRows(g) * patch);
  float* z_block = z + first * g.big_pixels() * g.big_c;
  const int64_t block_rows = (end - first) * g.big_pixels();
  std::memset(z_block, 0, sizeof(float) * block_rows * g.big_c);
  ForEachTile(g, first, end, [&](int64_t s, int64_t rows) {
    Gemm(false, true, rows, patch, g.small_c, 1.0f, x + s * g.small_c, g.small_c, kernel,
         g.small_c, 0.0f, cols->data(), patch);
    Col2ImAdd(g, cols->data(), s, rows, z);
  });
  FinishRows(epilogue, g.big_c, z_block, block_rows, on_rows);
}

// out[length] = the sum of `count` per-task partials [count, length], in slices run as tasks:
// each element still sums the tasks in order (the result does not depend on the threads), and
// the pass over the partials (2 MB at a 64 -> 64 channel 3x3 conv's 14 tasks) is shared by
// every thread instead of running on the caller alone.
void SumPartialsInSlices(const float* partials, int64_t count, int64_t length,
                         const Runtime& runtime, float* out) {
  constexpr int64_t kSliceFloats = 4096;
  const int64_t slices = (length + kSliceFloats - 1) / kSliceFloats;
  runtime.run_tasks(slices, [&](int64_t slice) {
    const int64_t begin = slice * kSliceFloats;
    const int64_t size = std::min(kSliceFloats, length - begin);
    float* __restrict to = out + begin;
    std::fill_n(to, size, 0.0f);
    for (int64_t b = 0; b < count; ++b) {
      const float* __restrict from = partials + b * length + begin;
      for (int64_t i = 0; i < size; ++i) to[i] += from[i];
    }
  });
}

// Recovers (du, xhat) for a run of z rows, from y alone or from a recomputed z.
template <bool kInvert>
struct Preactivation {
  const float* y;
  const float* dy;
  const float* z;  // recomputed z, used when !kInvert
  const float* beta;
  const float* mean;
  const ChannelTerms* terms;
  float slope, inv_slope;

  // du[c], xhat[c] for the `channels` elements of z row `row`.
  inline void Row(int64_t row, int64_t channels, float* __restrict du,
                  float* __restrict xhat) const {
    const float* __restrict y_row = y + row * channels;
    const float* __restrict dy_row = dy + row * channels;
    const float* __restrict inv_gamma = terms->inv_gamma.data();
    const float* __restrict rstd = terms->rstd.data();
    const float* __restrict z_row = kInvert ? nullptr : z + row * channels;
    const float* __restrict beta_c = beta;
    const float* __restrict mean_c = mean;
    // Locals, not members: stores through du/xhat could alias *this and block vectorising.
    const float negative_slope = slope, negative_inv_slope = inv_slope;
    for (int64_t c = 0; c < channels; ++c) {
      const float yv = y_row[c];
      const bool positive = yv > 0.0f;
      du[c] = dy_row[c] * (positive ? 1.0f : negative_slope);
      if (kInvert) {
        const float u = yv * (positive ? 1.0f : negative_inv_slope);
        xhat[c] = (u - beta_c[c]) * inv_gamma[c];
      } else {
        xhat[c] = (z_row[c] - mean_c[c]) * rstd[c];
      }
    }
  }
};

template <bool kInvert>
void AccumulateGradSums(const Preactivation<kInvert>& pre, int64_t first_row, int64_t rows,
                        int64_t channels, double* sum_du, double* sum_du_xhat) {
  std::vector<float> buffer(channels * 4);
  float* __restrict du = buffer.data();
  float* __restrict xhat = du + channels;
  float* __restrict run_du = xhat + channels;
  float* __restrict run_du_xhat = run_du + channels;
  for (int64_t r0 = first_row; r0 < first_row + rows; r0 += kRunRows) {
    std::fill(run_du, run_du + 2 * channels, 0.0f);
    const int64_t r1 = std::min(first_row + rows, r0 + kRunRows);
    for (int64_t r = r0; r < r1; ++r) {
      pre.Row(r, channels, du, xhat);
      for (int64_t c = 0; c < channels; ++c) {
        run_du[c] += du[c];
        run_du_xhat[c] += du[c] * xhat[c];
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      sum_du[c] += run_du[c];
      sum_du_xhat[c] += run_du_xhat[c];
    }
  }
}

template <bool kInvert>
void ComputeDz(const Preactivation<kInvert>& pre, int64_t first_row, int64_t rows,
               int64_t channels, float* dz) {
  const float* __restrict dz_du = pre.terms->dz_du.data();
  const float* __restrict dz_bias = pre.terms->dz_bias.data();
  const float* __restrict dz_xhat = pre.terms->dz_xhat.data();
  std::vector<float> buffer(channels * 2);
  float* __restrict du = buffer.data();
  float* __restrict xhat = du + channels;
  for (int64_t r = 0; r < rows; ++r) {
    pre.Row(first_row + r, channels, du, xhat);
    float* __restrict dz_row = dz + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      dz_row[c] = dz_du[c] * du[c] + dz_bias[c] + dz_xhat[c] * xhat[c];
    }
  }
}

// The filter in the layouts the backward's dx needs, built once per call.
struct DxFilters {
  ConvFilter kernel;                  // transposed: dx = conv(dz, kernel)
  std::vector<float> adjoint_kernel;  // unit-stride Conv2D: dx = adjoint conv of dz
  ConvFilter adjoint;
  std::unique_ptr<PackedFilter> transposed;  // strided Conv2D: dx = direct conv^T of dz
};

std::unique_ptr<DxFilters> MakeDxFilters(const ConvGeometry& g, const float* kernel) {
  auto filters = std::make_unique<DxFilters>();
  // With few input channels dx is a thin GEMV per pixel, cheaper as a scatter (left empty).
  constexpr int64_t kMinGatherChannels = 16;
  if (g.transpose) {
    filters->kernel = MakeConvFilter(g, kernel);
  } else if (g.big_c >= kMinGatherChannels && UnitStride(g)) {
    filters->adjoint_kernel = AdjointKernel(g, kernel);
    filters->adjoint = MakeConvFilter(AdjointGeometry(g), filters->adjoint_kernel.data());
  } else if (g.big_c >= kMinGatherChannels) {
    filters->transposed = PackTransposed(g, kernel);
  }
  return filters;
}

// dfilter += patches(big)^T x small over images [first, end); `plan` is the direct kernel's
// (unused without it).
void AccumulateFilterGrad(const ConvGeometry& g, const FilterGradPlan& plan, const float* big,
                          const float* small, int64_t first, int64_t end, float* dfilter) {
  if (DirectConvAvailable()) {
    DirectFilterGrad(g, plan, big, small, first, end, dfilter);
    return;
  }
  const int64_t patch = g.patch_size();
  Scratch cols(TileRows(g) * patch);
  ForEachTile(g, first, end, [&](int64_t s, int64_t rows) {
    Im2Col(g, big, s, rows, cols.data());
    Gemm(true, false, patch, g.small_c, rows, 1.0f, cols.data(), patch, small + s * g.small_c,
         g.small_c, 1.0f, dfilter, g.small_c);
  });
}

// Conv2D's dx for images [first, end) as dz x kernel^T scattered back onto the big image.
void ScatterDx(const ConvGeometry& g, const float* dz, const float* kernel, int64_t first,
               int64_t end, float* dx) {
  const int64_t patch = g.patch_size();
  Scratch cols(TileRows(g) * patch);
  std::memset(dx + first * g.big_pixels() * g.big_c, 0,
              sizeof(float) * (end - first) * g.big_pixels() * g.big_c);
  ForEachTile(g, first, end, [&](int64_t s, int64_t rows) {
    Gemm(false, true, rows, patch, g.small_c, 1.0f, dz + s * g.small_c, g.small_c, kernel,
         g.small_c, 0.0f, cols.data(), patch);
    Col2ImAdd(g, cols.data(), s, rows, dx);
  });
}

// dx and this task's share of dkernel for images [first, end): dz for the task's images
// first (scratch freed on return, never kept for the backward), then both convs from it.
template <bool kInvert>
void ConvBackwardBlock(const ConvGeometry& g, const Preactivation<kInvert>& pre,
                       const float* x, const float* kernel, const DxFilters& dx_filters,
                       const FilterGradPlan& grad_plan, int64_t first, int64_t end, float* dx,
                       float* dkernel_partial) {
  const int64_t channels = g.z_channels();
  const int64_t z_rows = (end - first) * g.z_pixels();
  Scratch dz_block(z_rows * channels);
  ComputeDz(pre, first * g.z_pixels(), z_rows, channels, dz_block.data());
  const float* dz = dz_block.data() - first * g.z_pixels() * channels;
  // Transposed, z is the big image of the conv; else x is.
  AccumulateFilterGrad(g, grad_plan, g.transpose ? dz : x, g.transpose ? x : dz, first, end,
                       dkernel_partial);
  if (dx == nullptr) return;
  Scratch cols;
  const auto no_epilogue = [](float*, int64_t) {};
  if (g.transpose) {
    ConvRows(g, dz, dx_filters.kernel, first, end, &cols, dx, no_epilogue);
  } else if (dx_filters.adjoint.matrix != nullptr) {
    ConvRows(AdjointGeometry(g), dz, dx_filters.adjoint, first, end, &cols, dx, no_epilogue);
  } else if (dx_filters.transposed) {
    DirectConvTranspose(g, dz, *dx_filters.transposed, first, end, dx, no_epilogue);
  } else {
    ScatterDx(g, dz, kernel, first, end, dx);
  }
}

template <bool kInvert>
std::string BackwardWith(const FusedParams& p, const Runtime& runtime, Preactivation<kInvert> pre,
                         ChannelTerms* terms, const float* x, const float* kernel,
                         const float* gamma, float* dx, float* dkernel, float* dgamma,
                         float* dbeta) {
  const ConvGeometry& g = p.geometry;
  const int64_t channels = g.z_channels();
  const ImageBlocks blocks = EqualBlocks(g.batch, runtime);
  std::vector<double> sums(blocks.count() * channels * 2, 0.0);
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    double* sum_du = sums.data() + b * channels * 2;
    AccumulateGradSums(pre, blocks.begin(b) * g.z_pixels(),
                       (blocks.end(b) - blocks.begin(b)) * g.z_pixels(), channels, sum_du,
                       sum_du + channels);
  });
  SetGradTerms(sums, blocks.count(), channels, static_cast<double>(g.batch * g.z_pixels()),
               p.training, gamma, terms, dgamma, dbeta);
  const int64_t kernel_size = g.patch_size() * g.small_c;
  // Nothing to pack when the caller does not want dx.
  const std::unique_ptr<DxFilters> dx_filters =
      dx != nullptr ? MakeDxFilters(g, kernel) : std::make_unique<DxFilters>();
  // Guided in chunks of the conv's own: tasks of a few small images would run short tiles.
  const ImageBlocks conv_blocks =
      DirectConvAvailable() ? GuidedBlocks(g.batch, DirectChunkImages(g), runtime) : blocks;
  const FilterGradPlan grad_plan = DirectConvAvailable() ? MakeFilterGradPlan(g) : FilterGradPlan{};
  // Each task zeroes its own partial: in parallel, and into the cache of the core that then
  // accumulates into it (a zeroed vector here was a serial pass over megabytes per call).
  Scratch kernel_partials(conv_blocks.count() * kernel_size);
  runtime.run_tasks(conv_blocks.count(), [&](int64_t b) {
    float* partial = kernel_partials.data() + b * kernel_size;
    std::fill_n(partial, kernel_size, 0.0f);
    ConvBackwardBlock(g, pre, x, kernel, *dx_filters, grad_plan, conv_blocks.begin(b),
                      conv_blocks.end(b), dx, partial);
  });
  SumPartialsInSlices(kernel_partials.data(), conv_blocks.count(), kernel_size, runtime,
                      dkernel);
  return "";
}

// Images per piece of ImagePieces: about 1 MiB of x (at least one image), so a piece is
// still in cache when the conv reads it.
int64_t PieceImages(const ConvGeometry& g) {
  constexpr int64_t kPieceFloats = 256 * 1024;
  return std::max<int64_t>(1, kPieceFloats / (g.big_pixels() * g.big_c));
}

void ZOfPieces(const ConvGeometry& g, const Runtime& runtime, const float* kernel,
               const ImagePieces& x_pieces, float* z, float* mean_out, float* variance_out) {
  const int64_t channels = g.small_c;
  const int64_t x_values = g.big_pixels() * g.big_c;
  const int64_t piece_images = PieceImages(g);
  const std::unique_ptr<ZConv> z_conv = MakeZConv(g, kernel);
  const ImageBlocks blocks = ForwardBlocks(g, *z_conv, runtime);
  const bool statistics = mean_out != nullptr && variance_out != nullptr;
  std::vector<double> moments(blocks.count() * channels * 2, 0.0);
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    Scratch cols;
    Scratch piece(std::min(piece_images, blocks.end(b) - blocks.begin(b)) * x_values);
    double* sum = moments.data() + b * channels * 2;
    for (int64_t first = blocks.begin(b); first < blocks.end(b); first += piece_images) {
      const int64_t end = std::min(first + piece_images, blocks.end(b));
      x_pieces(first, end, piece.data());
      const float* x = piece.data() - first * x_values;  // read only at images [first, end)
      ComputeZ(g, *z_conv, x, kernel, first, end, &cols, z, [&](float* rows, int64_t count) {
        if (statistics) AccumulateMoments(rows, count, channels, sum, sum + channels);
      });
    }
  });
  if (statistics) {
    StatisticsFromMoments(moments, blocks.count(), channels,
                          static_cast<double>(g.batch * g.small_pixels()), mean_out,
                          variance_out);
  }
}

void FilterGradOfPieces(const ConvGeometry& g, const Runtime& runtime,
                        const ImagePieces& x_pieces, const ImagePieces& dz_pieces,
                        float* dkernel) {
  const int64_t x_values = g.big_pixels() * g.big_c;
  const int64_t dz_values = g.small_pixels() * g.small_c;
  const int64_t piece_images = PieceImages(g);
  const int64_t kernel_size = g.patch_size() * g.small_c;
  const ImageBlocks blocks = DirectConvAvailable()
                                 ? GuidedBlocks(g.batch, DirectChunkImages(g), runtime)
                                 : EqualBlocks(g.batch, runtime);
  const FilterGradPlan plan = DirectConvAvailable() ? MakeFilterGradPlan(g) : FilterGradPlan{};
  Scratch partials(blocks.count() * kernel_size);
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    float* partial = partials.data() + b * kernel_size;
    std::fill_n(partial, kernel_size, 0.0f);
    const int64_t images = std::min(piece_images, blocks.end(b) - blocks.begin(b));
    Scratch x_piece(images * x_values), dz_piece(images * dz_values);
    for (int64_t first = blocks.begin(b); first < blocks.end(b); first += piece_images) {
      const int64_t end = std::min(first + piece_images, blocks.end(b));
      x_pieces(first, end, x_piece.data());
      dz_pieces(first, end, dz_piece.data());
      // Both read only at images [first, end).
      AccumulateFilterGrad(g, plan, x_piece.data() - first * x_values,
                           dz_piece.data() - first * dz_values, first, end, partial);
    }
  });
  SumPartialsInSlices(partials.data(), blocks.count(), kernel_size, runtime, dkernel);
}

}  // namespace

std::string FusedForward(const FusedParams& p, const Runtime& runtime, const float* x,
                         const float* kernel, const float* gamma, const float* beta,
                         const float* moving_mean, const float* moving_variance, float* y,
                         float* mean_out, float* variance_out) {
  const ConvGeometry& g = p.geometry;
  std::string err = CheckParameters(p, kernel, gamma, beta);
  if (!err.empty()) return err;
  const int64_t channels = g.z_channels();
  const std::unique_ptr<ZConv> z_conv = MakeZConv(g, kernel);
  const ImageBlocks blocks = ForwardBlocks(g, *z_conv, runtime);
  std::vector<float> scale(channels), shift(channels);
  auto set_affine = [&](const float* mean, const float* variance) {
    for (int64_t c = 0; c < channels; ++c) {
      scale[c] = gamma[c] / std::sqrt(variance[c] + p.epsilon);
      shift[c] = beta[c] - mean[c] * scale[c];
    }
  };
  if (!p.training) {
    err = CheckMovingStatistics(p, moving_mean, moving_variance);
    if (!err.empty()) return err;
    set_affine(moving_mean, moving_variance);
    runtime.run_tasks(blocks.count(), [&](int64_t b) {
      Scratch cols;
      TileEpilogue epilogue{scale.data(), shift.data(), p.negative_slope};
      ComputeZ(g, *z_conv, x, kernel, blocks.begin(b), blocks.end(b), &cols, y,
               [](float*, int64_t) {}, &epilogue);
    });
    std::memcpy(mean_out, moving_mean, sizeof(float) * channels);
    std::memcpy(variance_out, moving_variance, sizeof(float) * channels);
    return "";
  }
  std::vector<double> moments(blocks.count() * channels * 2, 0.0);
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    Scratch cols;
    double* sum = moments.data() + b * channels * 2;
    ComputeZ(g, *z_conv, x, kernel, blocks.begin(b), blocks.end(b), &cols, y,
             [&](float* rows, int64_t count) {
               AccumulateMoments(rows, count, channels, sum, sum + channels);
             });
  });
  StatisticsFromMoments(moments, blocks.count(), channels,
                        static_cast<double>(g.batch * g.z_pixels()), mean_out, variance_out);
  set_affine(mean_out, variance_out);
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    const int64_t rows = (blocks.end(b) - blocks.begin(b)) * g.z_pixels();
    ApplyEpilogue(y + blocks.begin(b) * g.z_pixels() * channels, rows, channels, scale.data(),
                  shift.data(), p.negative_slope);
  });
  return "";
}

std::string FusedBackward(const FusedParams& p, const Runtime& runtime, const float* dy,
                          const float* x, const float* kernel, const float* gamma,
                          const float* beta, const float* y, const float* mean,
                          const float* variance, float* dx, float* dkernel, float* dgamma,
                          float* dbeta) {
  const ConvGeometry& g = p.geometry;
  const int64_t channels = g.z_channels();
  // mean and variance are the batch's in training: NaN or Inf in x or dy propagates to the
  // gradients, as in Keras. Only the parameters are checked.
  std::string err = CheckParameters(p, kernel, gamma, beta);
  if (!err.empty()) return err;
  ChannelTerms terms = MakeChannelTerms(gamma, variance, channels, p.epsilon);
  const float inv_slope = p.negative_slope > 0.0f ? 1.0f / p.negative_slope : 0.0f;
  if (CanInvertOutput(gamma, beta, channels, p.negative_slope)) {
    Preactivation<true> pre{y, dy, nullptr, beta, mean, &terms, p.negative_slope, inv_slope};
    return BackwardWith(p, runtime, pre, &terms, x, kernel, gamma, dx, dkernel, dgamma, dbeta);
  }
  // Inverting y would not be exact: recompute z from x (scratch for this call only).
  Scratch z(g.batch * g.z_pixels() * channels);
  const std::unique_ptr<ZConv> z_conv = MakeZConv(g, kernel);
  const ImageBlocks blocks = EqualBlocks(g.batch, runtime);
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    Scratch cols;
    ComputeZ(g, *z_conv, x, kernel, blocks.begin(b), blocks.end(b), &cols, z.data(),
             [](float*, int64_t) {});
  });
  Preactivation<false> pre{y, dy, z.data(), beta, mean, &terms, p.negative_slope, inv_slope};
  return BackwardWith(p, runtime, pre, &terms, x, kernel, gamma, dx, dkernel, dgamma, dbeta);
}

const FusedKernels& Kernels() {
  static const FusedKernels kernels{&FusedForward, &FusedBackward, &ZOfPieces,
                                    &FilterGradOfPieces};
  return kernels;
}

}  // namespace PYAE_ISA_NS
}  // namespace pyae

#include "isa_target_end.h"

