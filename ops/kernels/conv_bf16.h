// The AVX512-BF16 convolutions (namespace pyae::avx512bf16) on vdpbf16ps with float32
// accumulators: direct ones (direct_bf16.cc) where the reduction's channel count is even, else
// im2col into bf16 rows and a GEMM (col2im for the transposed conv). vdpbf16ps adds, to each float32 lane, the products
// of one *pair* of bf16 values, so the reduction axis is consumed two at a time: the left
// operand's rows hold the pairs next to each other (a row-major matrix with an even row
// length, a zero after an odd one), and the right one is packed with the two rows of each
// pair interleaved column by column (PairPacked). Pairs are broadcast to every lane as one
// 32-bit value. Odd reduction lengths (a 1- or 3-channel image's patch) pad one zero.
// Compiled only into fused_bf16.cc's target region; include after the standard headers.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "conv_geometry.h"
#include "fused_bf16.h"

namespace pyae {
namespace avx512bf16 {

// Uninitialised bf16 storage, fully written before it is read.
class Bf16Buffer {
 public:
  void Reserve(int64_t size) {
    if (size > capacity_) {
      data_.reset(new Bf16[size]);
      capacity_ = size;
    }
  }
  Bf16* data() { return data_.get(); }

 private:
  std::unique_ptr<Bf16[]> data_;
  int64_t capacity_ = 0;
};

// A [rows, cols] matrix (rows: the reduction axis) as the GEMM's right operand: column blocks
// of at most 64, each padded to a multiple of 16 columns and stored [rows / 2][width][2] with
// the rows of each pair interleaved; an odd last row is paired with zeros.
class PairPacked {
 public:
  void Reset(int64_t rows, int64_t cols);
  // Packs matrix(row, col) (a float, rounded to bf16).
  template <typename Matrix>
  void Fill(int64_t rows, int64_t cols, Matrix matrix);

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t pairs() const { return (rows_ + 1) / 2; }
  int64_t num_blocks() const { return (cols_ + kBlockCols - 1) / kBlockCols; }
  int64_t block_col(int64_t b) const { return b * kBlockCols; }
  int64_t block_width(int64_t b) const {
    return cols_ - block_col(b) < kBlockCols ? cols_ - block_col(b) : kBlockCols;
  }
  int64_t block_stride(int64_t b) const { return (block_width(b) + 15) / 16 * 16; }
  const Bf16* block(int64_t b) const { return data_.data() + offsets_[b]; }
  Bf16* block(int64_t b) { return data_.data() + offsets_[b]; }

  static constexpr int64_t kBlockCols = 64;

 private:
  int64_t rows_ = 0, cols_ = 0;
  std::vector<int64_t> offsets_;
  std::vector<Bf16> data_;
};

// c[m, cols] (+)= a[m, 2 * b.pairs()] x b, a's rows `lda` apart (a zero after an odd length).
void GemmBf16(int64_t m, const Bf16* a, int64_t lda, const PairPacked& b, float* c, int64_t ldc,
              bool accumulate);

// Rows of im2col for small pixels [first, first + rows): cols[r, ld], zero where padded and
// in the columns past the patch.
void Im2ColBf16(const ConvGeometry& g, const Bf16* big, int64_t first, int64_t rows,
                int64_t ld, Bf16* cols);

template <typename Matrix>
void PairPacked::Fill(int64_t rows, int64_t cols, Matrix matrix) {
  Reset(rows, cols);
  for (int64_t b = 0; b < num_blocks(); ++b) {
    Bf16* to = block(b);
    const int64_t stride = block_stride(b);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < block_width(b); ++c) {
        to[((r / 2) * stride + c) * 2 + r % 2] = RoundToBf16(matrix(r, block_col(b) + c));
      }
    }
  }
}

// One run of a patch that lies contiguous both in a padded input and in the filter's rows:
// `pairs` bf16 pairs from `offset` (bf16 values past a pixel's patch origin) against the
// filter's pair rows from `pair` (direct_bf16.cc).
struct Bf16Slice {
  int64_t offset, pair, pairs;
};

// Output pixels the direct kernels compute together: each one's patch origin in the padded
// input and its output row (in values from the output's start).
struct Bf16Pixels {
  std::vector<int64_t> origins, at;
};

// Per-task scratch of the three convolutions.
struct ConvScratch {
  Bf16Buffer cols, rows, padded;
  std::vector<float> floats;
  Bf16Pixels pixels;
};

// Per-channel sums of an output and of its squares, taken from the direct kernels' tiles as
// they are stored (float32, before any rounding): floats over runs of about 64 rows, added
// into the caller's doubles (as the float32 kernels sum their moments).
class TileMoments {
 public:
  TileMoments(int64_t channels, double* sum, double* sum_sq);
  int64_t channels() const { return channels_; }
  float* run() { return run_.data(); }  // sums at [c], squares at [channels + c]
  void Flush();                         // adds the run to the doubles and zeroes it

 private:
  int64_t channels_;
  std::vector<float> run_;
  double* sum_;
  double* sum_sq_;
};

// The direct kernels (direct_bf16.cc) run a conv whose reduction has an even channel count
// (so the channel pairs vdpbf16ps takes lie next to each other in NHWC): conv(big) when big_c
// is even, conv^T(small) when small_c is. The others run im2col + GEMM (+ col2im).
bool DirectConvApplies(const ConvGeometry& g);
bool DirectTransposeApplies(const ConvGeometry& g);

// small rows of images [first, end) = conv(big), `filter` packed by PackFilter; float32 or
// rounded to bf16; `moments` (optional) sums them. Needs DirectConvApplies(g).
void DirectConvImages(const ConvGeometry& g, const Bf16* big, const PairPacked& filter,
                      int64_t first, int64_t end, ConvScratch* scratch, float* small,
                      TileMoments* moments = nullptr);
void DirectConvImages(const ConvGeometry& g, const Bf16* big, const PairPacked& filter,
                      int64_t first, int64_t end, ConvScratch* scratch, Bf16* small,
                      TileMoments* moments = nullptr);

// big images [first, end) = conv^T(small), `filter` packed by PackTapFilter; every value
// written; `moments` (optional) sums them. Needs DirectTransposeApplies(g).
void DirectConvTransposeImages(const ConvGeometry& g, const Bf16* small,
                               const PairPacked& filter, int64_t first, int64_t end,
                               ConvScratch* scratch, float* big, TileMoments* moments = nullptr);
void DirectConvTransposeImages(const ConvGeometry& g, const Bf16* small,
                               const PairPacked& filter, int64_t first, int64_t end,
                               ConvScratch* scratch, Bf16* big, TileMoments* moments = nullptr);

// The filter regrouped per tap for DirectConvTransposeImages: rows tap * small_c + co,
// columns big_c.
void PackTapFilter(const ConvGeometry& g, const float* filter, PairPacked* packed);

// small rows of images [first, end) = conv(big) (whole-batch layout); `filter` packs the
// [patch, small_c] filter matrix.
void ConvImages(const ConvGeometry& g, const Bf16* big, const PairPacked& filter, int64_t first,
                int64_t end, ConvScratch* scratch, float* small);

// big images [first, end) = conv^T(small); `filter_t` is PackFilterTransposed's.
void ConvTransposeImages(const ConvGeometry& g, const Bf16* small, const PairPacked& filter_t,
                         int64_t first, int64_t end, ConvScratch* scratch, float* big);

// dfilter[patch, small_c] (the kernel's layout) += patches(big)^T x small, over images
// [first, end): direct (direct_bf16.cc) for every shape, its reduction over pixel pairs, so
// no channel count needs another route.
void FilterGradImages(const ConvGeometry& g, const Bf16* big, const Bf16* small, int64_t first,
                      int64_t end, ConvScratch* scratch, float* dfilter);

// The filter matrix [patch, small_c] packed as it is (for ConvImages), and for
// ConvTransposeImages: PackTapFilter's where DirectTransposeApplies, else transposed
// [small_c, patch] for the GEMM.
void PackFilter(const ConvGeometry& g, const float* filter, PairPacked* packed);
void PackFilterTransposed(const ConvGeometry& g, const float* filter, PairPacked* packed);

// bf16 <-> float32 for n values (round to nearest even; NaN stays NaN).
void ToBf16(const float* in, int64_t n, Bf16* out);
void ToFloat(const Bf16* in, int64_t n, float* out);

// Small pixels per im2col tile: the tile's patch rows stay in L2.
int64_t TileRows(int64_t row_length);

}  // namespace avx512bf16
}  // namespace pyae
