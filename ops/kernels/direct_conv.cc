#include "direct_conv.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "scratch.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace pyae {

PackedFilter::PackedFilter(const float* matrix, int64_t rows, int64_t cols)
    : rows_(rows), cols_(cols) {
  int64_t size = 0;
  for (int64_t b = 0; b < num_blocks(); ++b) {
    block_offset_.push_back(size);
    size += rows * block_stride(b);
  }
  packed_.assign(size, 0.0f);
  for (int64_t b = 0; b < num_blocks(); ++b) {
    float* to = packed_.data() + block_offset_[b];
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(to + r * block_stride(b), matrix + r * cols + block_col(b),
                  sizeof(float) * block_width(b));
    }
  }
}

int64_t PackedFilter::block_width(int64_t b) const {
  return std::min(kBlockCols, cols_ - block_col(b));
}

#if defined(__AVX512F__)

bool DirectConvAvailable() { return true; }

namespace {

// Small-image pixels per pass: their rows and the patches they read stay in L2.
constexpr int64_t kPassPixels = 512;

__mmask16 TailMask(int64_t width) {
  const int64_t tail = width % 16;
  return tail == 0 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << tail) - 1);
}

// A run of whole images copied into a zero-bordered buffer, so that every kernel tap of every
// small pixel reads memory without a bounds check. Rows/columns the conv never reads are left
// out (TensorFlow's SAME pads the odd pixel at the end).
class PaddedImages {
 public:
  PaddedImages(const ConvGeometry& g, int64_t max_images) : g_(g) {
    height_ = std::max(g.big_h + g.pad_top, (g.small_h - 1) * g.stride_h + g.kernel_h);
    width_ = std::max(g.big_w + g.pad_left, (g.small_w - 1) * g.stride_w + g.kernel_w);
    buffer_.Reserve(max_images * image_floats());
  }

  int64_t image_floats() const { return height_ * width_ * g_.big_c; }
  int64_t row_floats() const { return width_ * g_.big_c; }
  const float* data() const { return buffer_.data(); }

  void Fill(const float* big, int64_t first_image, int64_t images) {
    const int64_t c = g_.big_c;
    const size_t row_bytes = sizeof(float) * g_.big_w * c;
    for (int64_t i = 0; i < images; ++i) {
      const float* image = big + (first_image + i) * g_.big_pixels() * c;
      float* padded = buffer_.data() + i * image_floats();
      for (int64_t h = 0; h < height_; ++h) {
        float* row = padded + h * row_floats();
        const int64_t ih = h - g_.pad_top;
        if (ih < 0 || ih >= g_.big_h) {
          std::memset(row, 0, sizeof(float) * row_floats());
          continue;
        }
        std::memset(row, 0, sizeof(float) * g_.pad_left * c);
        std::memcpy(row + g_.pad_left * c, image + ih * g_.big_w * c, row_bytes);
        std::memset(row + (g_.pad_left + g_.big_w) * c, 0,
                    sizeof(float) * (width_ - g_.pad_left - g_.big_w) * c);
      }
    }
  }

  // Offset of small pixel q's patch origin (tap 0, channel 0); q counts across the images.
  void Origins(int64_t images, std::vector<int64_t>* origins) const {
    origins->clear();
    for (int64_t i = 0; i < images; ++i) {
      for (int64_t oh = 0; oh < g_.small_h; ++oh) {
        const int64_t row = i * image_floats() + oh * g_.stride_h * row_floats();
        for (int64_t ow = 0; ow < g_.small_w; ++ow) {
          origins->push_back(row + ow * g_.stride_w * g_.big_c);
        }
      }
    }
  }

  // Offset of each kernel tap from a patch origin, in the filter matrix's (kh, kw) order.
  std::vector<int64_t> TapOffsets() const {
    std::vector<int64_t> taps;
    for (int64_t kh = 0; kh < g_.kernel_h; ++kh) {
      for (int64_t kw = 0; kw < g_.kernel_w; ++kw) {
        taps.push_back(kh * row_floats() + kw * g_.big_c);
      }
    }
    return taps;
  }

 private:
  const ConvGeometry& g_;
  int64_t height_, width_;
  Scratch buffer_;
};

// Images per chunk: enough small pixels that the last, partly filled tile costs little.
int64_t ChunkImages(const ConvGeometry& g, int64_t remaining) {
  const int64_t wanted = (kPassPixels + g.small_pixels() - 1) / g.small_pixels();
  return std::min(remaining, std::max<int64_t>(1, wanted));
}

// out[r][0, 16 * kVectors) (+)= sum over `length` consecutive patch values x filter rows, for
// kRows small pixels whose patch spans start at `origin` + `offset`. Rows at or past `valid`
// are neither read nor stored.
template <int kRows, int kVectors>
void ConvTile(const float* padded, const int64_t* origin, int64_t offset, int64_t length,
              const float* filter, bool accumulate, float* out, int64_t out_stride,
              int64_t valid, __mmask16 last_mask) {
  constexpr int64_t kStride = 16 * kVectors;
  __m512 acc[kRows][kVectors];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    const float* row = out + r * out_stride;
    const bool load = accumulate && r < valid;
#pragma GCC unroll 4
    for (int j = 0; j + 1 < kVectors; ++j) {
      acc[r][j] = load ? _mm512_loadu_ps(row + 16 * j) : _mm512_setzero_ps();
    }
    acc[r][kVectors - 1] = load ? _mm512_maskz_loadu_ps(last_mask, row + 16 * (kVectors - 1))
                                : _mm512_setzero_ps();
  }
  const float* a[kRows];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) a[r] = padded + origin[r] + offset;
  const float* w = filter;
  for (int64_t k = 0; k < length; ++k, w += kStride) {
    __m512 wv[kVectors];
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) wv[j] = _mm512_loadu_ps(w + 16 * j);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512 b = _mm512_set1_ps(a[r][k]);
#pragma GCC unroll 4
      for (int j = 0; j < kVectors; ++j) acc[r][j] = _mm512_fmadd_ps(b, wv[j], acc[r][j]);
    }
  }
  // Fully unrolled, so the accumulators never need an address and stay in registers.
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    if (r < valid) {
      float* row = out + r * out_stride;
#pragma GCC unroll 4
      for (int j = 0; j + 1 < kVectors; ++j) _mm512_storeu_ps(row + 16 * j, acc[r][j]);
      _mm512_mask_storeu_ps(row + 16 * (kVectors - 1), last_mask, acc[r][kVectors - 1]);
    }
  }
}

// One slice of the patch (a run of consecutive floats within one kernel row: kernel_w
// taps x channels are contiguous in both the padded image and the filter) sized so that its
// filter rows stay in L1 while every tile of a pass reads them.
struct PatchSlice {
  int64_t offset;         // from a patch origin, in the padded image
  int64_t filter_row;     // first filter row
  int64_t length;
};

std::vector<PatchSlice> PatchSlices(const ConvGeometry& g, int64_t padded_row_floats,
                                    int64_t filter_stride) {
  constexpr int64_t kL1FilterBytes = 24 * 1024;
  const int64_t span = g.kernel_w * g.big_c;
  const int64_t max_length = std::max<int64_t>(
      1, kL1FilterBytes / static_cast<int64_t>(sizeof(float) * filter_stride));
  std::vector<PatchSlice> slices;
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    for (int64_t s = 0; s < span; s += max_length) {
      slices.push_back({kh * padded_row_floats + s, kh * span + s,
                        std::min(max_length, span - s)});
    }
  }
  return slices;
}

// Small pixels [begin, end) of a chunk against one column block of the filter.
template <int kRows, int kVectors>
void ConvPixels(const float* padded, const std::vector<int64_t>& origins,
                const std::vector<PatchSlice>& slices, const float* filter, int64_t begin,
                int64_t end, float* out, int64_t out_stride, __mmask16 last_mask) {
  int64_t tile_origin[kRows];
  for (size_t i = 0; i < slices.size(); ++i) {
    const PatchSlice& slice = slices[i];
    const float* slice_filter = filter + slice.filter_row * 16 * kVectors;
    for (int64_t q = begin; q < end; q += kRows) {
      const int64_t valid = std::min<int64_t>(kRows, end - q);
      // A short last tile repeats its last pixel rather than reading past the chunk.
      for (int r = 0; r < kRows; ++r) {
        tile_origin[r] = origins[q + std::min<int64_t>(r, valid - 1)];
      }
      ConvTile<kRows, kVectors>(padded, tile_origin, slice.offset, slice.length, slice_filter,
                                i > 0, out + q * out_stride, out_stride, valid, last_mask);
    }
  }
}

void ConvPixelsAnyWidth(int64_t vectors, const float* padded,
                        const std::vector<int64_t>& origins,
                        const std::vector<PatchSlice>& slices, const float* filter,
                        int64_t begin, int64_t end, float* out, int64_t out_stride,
                        __mmask16 last_mask) {
  // Tiles of 6-8 pixels x 1-4 vectors: 8-24 accumulators and few enough patch pointers to
  // stay in registers.
  switch (vectors) {
    case 1:
      return ConvPixels<8, 1>(padded, origins, slices, filter, begin, end, out, out_stride,
                              last_mask);
    case 2:
      return ConvPixels<8, 2>(padded, origins, slices, filter, begin, end, out, out_stride,
                              last_mask);
    case 3:
      return ConvPixels<8, 3>(padded, origins, slices, filter, begin, end, out, out_stride,
                              last_mask);
    default:
      return ConvPixels<6, 4>(padded, origins, slices, filter, begin, end, out, out_stride,
                              last_mask);
  }
}

// dfilter rows [row, row + kRows) (channels of one tap) += sum over `count` pixels of patch
// value x small row.
template <int kRows, int kVectors>
void FilterGradTile(const float* padded, const int64_t* origin, int64_t count, int64_t offset,
                    const float* small, int64_t small_stride, float* dfilter,
                    int64_t dfilter_stride, __mmask16 last_mask) {
  __m512 acc[kRows][kVectors];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  for (int64_t q = 0; q < count; ++q) {
    const float* a = padded + origin[q] + offset;
    const float* s = small + q * small_stride;
    __m512 sv[kVectors];
#pragma GCC unroll 4
    for (int j = 0; j + 1 < kVectors; ++j) sv[j] = _mm512_loadu_ps(s + 16 * j);
    sv[kVectors - 1] = _mm512_maskz_loadu_ps(last_mask, s + 16 * (kVectors - 1));
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512 b = _mm512_set1_ps(a[r]);
#pragma GCC unroll 4
      for (int j = 0; j < kVectors; ++j) acc[r][j] = _mm512_fmadd_ps(b, sv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    float* row = dfilter + r * dfilter_stride;
#pragma GCC unroll 4
    for (int j = 0; j + 1 < kVectors; ++j) {
      _mm512_storeu_ps(row + 16 * j, _mm512_add_ps(_mm512_loadu_ps(row + 16 * j), acc[r][j]));
    }
    float* last = row + 16 * (kVectors - 1);
    _mm512_mask_storeu_ps(
        last, last_mask,
        _mm512_add_ps(_mm512_maskz_loadu_ps(last_mask, last), acc[r][kVectors - 1]));
  }
}

using FilterGradFn = void (*)(const float*, const int64_t*, int64_t, int64_t, const float*,
                              int64_t, float*, int64_t, __mmask16);

template <int kVectors>
FilterGradFn FilterGradFor(int64_t rows) {
  switch (rows) {
    case 1: return FilterGradTile<1, kVectors>;
    case 2: return FilterGradTile<2, kVectors>;
    case 3: return FilterGradTile<3, kVectors>;
    case 4: return FilterGradTile<4, kVectors>;
    case 5: return FilterGradTile<5, kVectors>;
    case 6: return FilterGradTile<6, kVectors>;
    case 7: return FilterGradTile<7, kVectors>;
    default: return FilterGradTile<8, kVectors>;
  }
}

FilterGradFn FilterGradFor(int64_t vectors, int64_t rows) {
  switch (vectors) {
    case 1: return FilterGradFor<1>(rows);
    case 2: return FilterGradFor<2>(rows);
    case 3: return FilterGradFor<3>(rows);
    default: return FilterGradFor<4>(rows);
  }
}

// Channels of one tap per filter-gradient tile: 16-32 accumulators.
int64_t FilterGradRows(int64_t vectors) { return vectors >= 3 ? 4 : 8; }

}  // namespace

void DirectConv(const ConvGeometry& g, const float* big, const PackedFilter& filter,
                int64_t first, int64_t end, float* small, const RowsCallback& on_rows) {
  PaddedImages padded(g, ChunkImages(g, end - first));
  std::vector<std::vector<PatchSlice>> slices;
  for (int64_t b = 0; b < filter.num_blocks(); ++b) {
    slices.push_back(PatchSlices(g, padded.row_floats(), filter.block_stride(b)));
  }
  std::vector<int64_t> origins;
  for (int64_t image = first; image < end;) {
    const int64_t images = ChunkImages(g, end - image);
    padded.Fill(big, image, images);
    padded.Origins(images, &origins);
    float* out = small + image * g.small_pixels() * g.small_c;
    const int64_t pixels = images * g.small_pixels();
    for (int64_t q = 0; q < pixels; q += kPassPixels) {
      const int64_t q_end = std::min(pixels, q + kPassPixels);
      for (int64_t b = 0; b < filter.num_blocks(); ++b) {
        ConvPixelsAnyWidth(filter.block_stride(b) / 16, padded.data(), origins, slices[b],
                           filter.block(b), q, q_end, out + filter.block_col(b), g.small_c,
                           TailMask(filter.block_width(b)));
      }
      on_rows(out + q * g.small_c, q_end - q);
    }
    image += images;
  }
}

void DirectFilterGrad(const ConvGeometry& g, const float* big, const float* small,
                      int64_t first, int64_t end, float* dfilter) {
  PaddedImages padded(g, ChunkImages(g, end - first));
  const std::vector<int64_t> taps = padded.TapOffsets();
  std::vector<int64_t> origins;
  const int64_t cols = g.small_c;
  for (int64_t image = first; image < end;) {
    const int64_t images = ChunkImages(g, end - image);
    padded.Fill(big, image, images);
    padded.Origins(images, &origins);
    const float* rows = small + image * g.small_pixels() * cols;
    const int64_t pixels = images * g.small_pixels();
    for (int64_t q = 0; q < pixels; q += kPassPixels) {
      const int64_t count = std::min(kPassPixels, pixels - q);
      for (int64_t col = 0; col < cols; col += PackedFilter::kBlockCols) {
        const int64_t width = std::min(PackedFilter::kBlockCols, cols - col);
        const int64_t vectors = (width + 15) / 16;
        const int64_t tile = FilterGradRows(vectors);
        for (int64_t t = 0; t < static_cast<int64_t>(taps.size()); ++t) {
          for (int64_t c = 0; c < g.big_c; c += tile) {
            const int64_t tile_rows = std::min(tile, g.big_c - c);
            FilterGradFor(vectors, tile_rows)(
                padded.data(), origins.data() + q, count, taps[t] + c, rows + q * cols + col,
                cols, dfilter + (t * g.big_c + c) * cols + col, cols, TailMask(width));
          }
        }
      }
    }
    image += images;
  }
}

#else  // !__AVX512F__

bool DirectConvAvailable() { return false; }

// Callers check DirectConvAvailable() first; reaching these is a bug in the caller.
void DirectConv(const ConvGeometry&, const float*, const PackedFilter&, int64_t, int64_t,
                float*, const RowsCallback&) {
  std::abort();
}

void DirectFilterGrad(const ConvGeometry&, const float*, const float*, int64_t, int64_t,
                      float*) {
  std::abort();
}

#endif

}  // namespace pyae
