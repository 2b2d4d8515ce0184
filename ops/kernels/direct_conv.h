// Implicit-GEMM convolution on AVX-512 or AVX2 + FMA (the "direct" kernels), compiled once per
// path into namespace pyae::PYAE_ISA_NS (see isa_target.h); the generic path has none.
//
// The im2col route copies every patch into a matrix that the BLAS then copies again into its
// own panel layout; here a tile of output pixels broadcasts its input values straight from
// the images, so each input value is read from cache, never copied. Pixels are sorted by which
// kernel taps land inside the image, and each runs only those: none reads or multiplies
// padding. (The transposed conv, and the filter gradient at few input channels, read a
// zero-padded copy.)
// Geometry as in conv_geometry.h: one conv from the big image to the small one, with the
// filter viewed as a [patch_size, small_c] matrix.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "conv_geometry.h"

#if !defined(PYAE_ISA_NS)
#error "direct_conv.h belongs to the per-ISA sources: PYAE_ISA_NS must be defined"
#endif

namespace pyae {
namespace PYAE_ISA_NS {

// True on the AVX-512 and AVX2 paths; callers fall back to im2col + GEMM otherwise.
bool DirectConvAvailable();

// Images that DirectConv computes as one chunk (1 when an image alone fills it): a caller
// splitting the batch gives each task a multiple of this, so no task ends on a partial chunk.
int64_t DirectChunkImages(const ConvGeometry& g);

// A [rows, cols] row-major matrix re-laid out for the direct kernels: column blocks of at most
// 64, each zero-padded to a multiple of 16 and stored [rows][block width]. A matrix already in
// that layout (one block, cols a multiple of 16: 16, 32, 48 or 64 filters) is used as it is,
// not copied: borrowed from a pointer, which must outlive the PackedFilter, or taken over
// from a vector.
class PackedFilter {
 public:
  PackedFilter(const float* matrix, int64_t rows, int64_t cols);
  PackedFilter(std::vector<float> matrix, int64_t rows, int64_t cols);
  PackedFilter(const PackedFilter&) = delete;  // data_ may point into packed_
  PackedFilter& operator=(const PackedFilter&) = delete;

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t num_blocks() const { return (cols_ + kBlockCols - 1) / kBlockCols; }
  // First column of block b, its real width and its padded width (a multiple of 16).
  int64_t block_col(int64_t b) const { return b * kBlockCols; }
  int64_t block_width(int64_t b) const;
  int64_t block_stride(int64_t b) const { return (block_width(b) + 15) / 16 * 16; }
  const float* block(int64_t b) const { return data_ + block_offset_[b]; }

  static constexpr int64_t kBlockCols = 64;

 private:
  bool IsPacked() const { return num_blocks() == 1 && block_stride(0) == cols_; }
  void Pack(const float* matrix);

  int64_t rows_, cols_;
  std::vector<int64_t> block_offset_;
  std::vector<float> packed_;
  const float* data_ = nullptr;
};

// Sees each finished run of output rows while it is still in cache.
using RowsCallback = std::function<void(float* rows, int64_t count)>;

// y = leaky_relu(z * scale + shift), applied to each output tile in registers as it is
// stored (inference: the affine step is known before the conv runs).
struct TileEpilogue {
  const float* scale;  // per output channel
  const float* shift;
  float negative_slope;
};

// small = conv(big) for images [first, end): `small` is the whole batch's [.., small_c] rows.
// `epilogue` (optional) is applied before on_rows sees the rows.
void DirectConv(const ConvGeometry& g, const float* big, const PackedFilter& filter,
                int64_t first, int64_t end, float* small, const RowsCallback& on_rows,
                TileEpilogue* epilogue = nullptr);

// big = conv^T(small) for images [first, end), the adjoint of DirectConv (Conv2D's data
// gradient, Conv2DTranspose's forward). `filter` packs the kernel regrouped per tap as
// [kernel_h][kernel_w][small_c][big_c].
void DirectConvTranspose(const ConvGeometry& g, const float* small, const PackedFilter& filter,
                         int64_t first, int64_t end, float* big, const RowsCallback& on_rows,
                         TileEpilogue* epilogue = nullptr);

// Which small pixels each filter-gradient tile reads, for every chunk DirectFilterGrad meets:
// made once per call by MakeFilterGradPlan, shared read-only by the call's tasks.
//
// At unit stride with 16 or more input channels the tiles read the big images where they lie,
// one kernel tap at a time, and each tile runs only the pixels whose tap lands inside the
// image, as the forward does (a 7x7 image at kernel 3 spends 18% of its multiplies on padding
// otherwise, and a padded copy costs a pass over the images). Otherwise (direct_conv.cc says
// why) the tiles span a whole kernel row of a zero-padded copy, every pixel.
struct FilterGradPlan {
  // Filter rows [filter_row, filter_row + length), read at `offset` floats from each patch
  // origin of the pixels in list `list`; the tiles cut it into runs of their own height.
  struct Segment {
    int64_t offset, filter_row, length, list;
  };
  // Pixels of a chunk in order: their patch origins (from the chunk's base), their small
  // rows (floats from the chunk's first), their index in the chunk, and where each pass of
  // the chunk's pixels starts in the list (one entry more than passes).
  struct PixelList {
    std::vector<int64_t> origins, small_at, pixel, pass_begin;
  };
  bool in_place = false;
  std::vector<Segment> segments;
  // Chunks of whole images: one entry, whose lists a shorter chunk cuts short. Bands of one
  // image's rows (band_rows > 0): an entry per band.
  int64_t band_rows = 0;
  std::vector<std::vector<PixelList>> chunk_lists;
};

FilterGradPlan MakeFilterGradPlan(const ConvGeometry& g);

// dfilter[patch_size, small_c] += patches(big)^T x small, over images [first, end).
void DirectFilterGrad(const ConvGeometry& g, const FilterGradPlan& plan, const float* big,
                      const float* small, int64_t first, int64_t end, float* dfilter);

}  // namespace PYAE_ISA_NS
}  // namespace pyae
