// The AVX512-BF16 convolutions without im2col or col2im (conv_bf16.h): a tile of output pixels
// reads its patches straight from a zero-bordered bf16 copy of the input, each pixel's pair of
// channels broadcast as one 32-bit value, against the pair-packed filter on vdpbf16ps. The
// reduction runs over channels, which NHWC keeps next to each other, so an even channel count
// gives the pairs vdpbf16ps wants without copying patches (the im2col route writes 2.25-9x the
// input's bytes and the col2im route scatters float32 patches back). The transposed conv
// gathers: each output pixel of one stride phase reads the same taps at fixed offsets.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "conv_bf16.h"

#include "bf16_target.h"  // after every other include

#include "bf16_pair_tile.h"  // compiled for this target: after the pragma

namespace pyae {
namespace avx512bf16 {
namespace {

// Output pixels computed together: their small images (or bands of one) stay in L2.
constexpr int64_t kChunkPixels = 512;
// 6 pixels x 4 vectors: 24 accumulators, 4 filter vectors and a broadcast of 32 registers.
constexpr int64_t kTileRows = 6;

// Float outputs (z, the forward's) bypass the caches where a whole aligned vector is stored:
// nothing reads z before the whole batch's statistics are known, by when a Cartoon block's
// (33-67 MB) has left the caches anyway, and a cached store first reads every line it writes
// (bench/RESULTS.md: the forward's gathers at 32 channels 0.86x the time at Cartoon dec4).
// The bf16 outputs (dx) measured the same either way and keep plain stores.
inline void StoreVector(float* p, __mmask16 mask, __m512 v) {
  if (mask == 0xFFFF && (reinterpret_cast<uintptr_t>(p) & 63) == 0) {
    _mm512_stream_ps(p, v);
  } else {
    _mm512_mask_storeu_ps(p, mask, v);
  }
}

inline void StoreVector(Bf16* p, __mmask16 mask, __m512 v) {
  _mm256_mask_storeu_epi16(p, mask, (__m256i)_mm512_cvtneps_pbh(v));
}

// out[at[r]][0, 16 kVectors) = sum over the slices of patch pairs x filter pair rows, for the
// kRows pixels whose patches start at base + origin[r]. `filter` is one column block
// (`pair_stride` bf16 values from one pair row to the next); the last vector stores `last`.
// With `moments`, the tile's column sums are added to moments[0, 16 kVectors) and its sums of
// squares to moments[squares, ...), from the float32 values before any rounding.
template <int kRows, int kVectors, typename Out>
void GatherTile(const Bf16* base, const int64_t* origin, const Bf16Slice* slices,
                int64_t num_slices, const Bf16* filter, int64_t pair_stride, Out* out,
                const int64_t* at, __mmask16 last, float* moments, int64_t squares) {
  __m512 acc[kRows][kVectors];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  for (int64_t s = 0; s < num_slices; ++s) {
    const Bf16* rows[kRows];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) rows[r] = base + origin[r] + slices[s].offset;
    AccumulatePairs<kRows, kVectors>(rows, filter + slices[s].pair * pair_stride,
                                     slices[s].pairs, pair_stride, acc);
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) {
      StoreVector(out + at[r] + 16 * j, j + 1 == kVectors ? last : 0xFFFF, acc[r][j]);
    }
  }
  if (moments == nullptr) return;
#pragma GCC unroll 4
  for (int j = 0; j < kVectors; ++j) {
    __m512 sum = acc[0][j], sum_sq = _mm512_mul_ps(acc[0][j], acc[0][j]);
#pragma GCC unroll 8
    for (int r = 1; r < kRows; ++r) {
      sum = _mm512_add_ps(sum, acc[r][j]);
      sum_sq = _mm512_fmadd_ps(acc[r][j], acc[r][j], sum_sq);
    }
    const __mmask16 mask = j + 1 == kVectors ? last : 0xFFFF;
    float* at_sum = moments + 16 * j;
    float* at_sq = at_sum + squares;
    _mm512_mask_storeu_ps(at_sum, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at_sum), sum));
    _mm512_mask_storeu_ps(at_sq, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at_sq), sum_sq));
  }
}

template <typename Out>
using GatherFn = void (*)(const Bf16*, const int64_t*, const Bf16Slice*, int64_t, const Bf16*,
                          int64_t, Out*, const int64_t*, __mmask16, float*, int64_t);

template <int kVectors, typename Out>
GatherFn<Out> GatherFor(int64_t rows) {
  switch (rows) {
    case 1: return GatherTile<1, kVectors, Out>;
    case 2: return GatherTile<2, kVectors, Out>;
    case 3: return GatherTile<3, kVectors, Out>;
    case 4: return GatherTile<4, kVectors, Out>;
    case 5: return GatherTile<5, kVectors, Out>;
    default: return GatherTile<6, kVectors, Out>;
  }
}

template <typename Out>
GatherFn<Out> GatherFor(int64_t vectors, int64_t rows) {
  switch (vectors) {
    case 1: return GatherFor<1, Out>(rows);
    case 2: return GatherFor<2, Out>(rows);
    case 3: return GatherFor<3, Out>(rows);
    default: return GatherFor<4, Out>(rows);
  }
}

// Tiles per run of the moments' float sums (about 64 rows, as the float32 kernels sum).
constexpr int64_t kTilesPerRun = 10;

// Every pixel of `pixels` against every column block of `filter`: out + at[i] is pixel i's
// output row. `moments` (optional) takes the output's per-channel sums.
template <typename Out>
void GatherPixels(const Bf16* base, const Bf16Pixels& pixels, const std::vector<Bf16Slice>& slices,
                  const PairPacked& filter, Out* out, TileMoments* moments) {
  const int64_t count = static_cast<int64_t>(pixels.origins.size());
  for (int64_t b = 0; b < filter.num_blocks(); ++b) {
    const BlockVectors vectors = VectorsFor(filter.block_width(b));
    const GatherFn<Out> full = GatherFor<Out>(vectors.count, kTileRows);
    float* run = moments != nullptr ? moments->run() + filter.block_col(b) : nullptr;
    const int64_t squares = moments != nullptr ? moments->channels() : 0;
    for (int64_t m = 0, tiles = 1; m < count; m += kTileRows, ++tiles) {
      const int64_t rows = std::min(kTileRows, count - m);
      (rows == kTileRows ? full : GatherFor<Out>(vectors.count, rows))(
          base, pixels.origins.data() + m, slices.data(), slices.size(), filter.block(b),
          filter.block_stride(b) * 2, out + filter.block_col(b), pixels.at.data() + m,
          vectors.last, run, squares);
      if (moments != nullptr && tiles % kTilesPerRun == 0) moments->Flush();
    }
    if (moments != nullptr) moments->Flush();
  }
}

// One image's rows [row_begin, row_end) in padded coordinates (padded row p is image row
// p - pad_top, padded column q image column q - pad_left), zero outside the image.
struct PaddedLayout {
  int64_t height, width, channels, pad_top, pad_left, padded_width;
  int64_t row_values() const { return padded_width * channels; }
};

void FillPadded(const PaddedLayout& l, const Bf16* image, int64_t row_begin, int64_t row_end,
                Bf16* out) {
  const int64_t c = l.channels;
  for (int64_t p = row_begin; p < row_end; ++p, out += l.row_values()) {
    const int64_t h = p - l.pad_top;
    if (h < 0 || h >= l.height) {
      std::memset(out, 0, sizeof(Bf16) * l.row_values());
      continue;
    }
    std::memset(out, 0, sizeof(Bf16) * l.pad_left * c);
    std::memcpy(out + l.pad_left * c, image + h * l.width * c, sizeof(Bf16) * l.width * c);
    std::memset(out + (l.pad_left + l.width) * c, 0,
                sizeof(Bf16) * (l.padded_width - l.pad_left - l.width) * c);
  }
}

// small = conv(big) over images [first, end): chunks of whole images, or bands of one image's
// small rows, each copied padded and gathered. Every kernel row's taps x channels are one
// slice, contiguous in the padded rows and in the filter.
template <typename Out>
void DirectConv(const ConvGeometry& g, const Bf16* big, const PairPacked& filter, int64_t first,
                int64_t end, ConvScratch* scratch, Out* small, TileMoments* moments) {
  const int64_t c = g.big_c;
  const PaddedLayout layout{g.big_h, g.big_w, c, g.pad_top, g.pad_left,
                            std::max(g.big_w + g.pad_left,
                                     (g.small_w - 1) * g.stride_w + g.kernel_w)};
  const int64_t row_values = layout.row_values();
  std::vector<Bf16Slice> slices;
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    slices.push_back({kh * row_values, kh * g.kernel_w * c / 2, g.kernel_w * c / 2});
  }
  // Whole images per chunk when they are small, else bands of `band` small rows.
  const int64_t images = std::max<int64_t>(1, kChunkPixels / std::max<int64_t>(1, g.small_pixels()));
  const int64_t band = images > 1 ? g.small_h
                                  : std::clamp<int64_t>(kChunkPixels / g.small_w, 1, g.small_h);
  const int64_t band_padded_rows = (band - 1) * g.stride_h + g.kernel_h;
  const int64_t image_values = band_padded_rows * row_values;
  scratch->padded.Reserve(images * image_values);
  Bf16Pixels& pixels = scratch->pixels;
  for (int64_t image = first; image < end; image += images) {
    const int64_t count = std::min(images, end - image);
    for (int64_t row = 0; row < g.small_h; row += band) {
      const int64_t rows = std::min(band, g.small_h - row);
      const int64_t padded_begin = row * g.stride_h;
      const int64_t padded_end = (row + rows - 1) * g.stride_h + g.kernel_h;
      pixels.origins.clear();
      pixels.at.clear();
      for (int64_t i = 0; i < count; ++i) {
        FillPadded(layout, big + (image + i) * g.big_pixels() * c, padded_begin, padded_end,
                   scratch->padded.data() + i * image_values);
        for (int64_t oh = row; oh < row + rows; ++oh) {
          for (int64_t ow = 0; ow < g.small_w; ++ow) {
            pixels.origins.push_back(i * image_values + (oh - row) * g.stride_h * row_values +
                                     ow * g.stride_w * c);
            pixels.at.push_back(((image + i) * g.small_pixels() + oh * g.small_w + ow) *
                                g.small_c);
          }
        }
      }
      GatherPixels(scratch->padded.data(), pixels, slices, filter, small, moments);
    }
  }
  _mm_sfence();  // the streamed stores are visible before the caller's threads read them
}

// The small image padded so that every tap of every big pixel lands inside: rows before it
// for the taps that reach above row 0, after it up to the last row a big pixel reads.
PaddedLayout PaddedSmall(const ConvGeometry& g) {
  auto before = [](int64_t kernel, int64_t pad, int64_t stride) {
    return std::max<int64_t>(0, (kernel - 1 - pad + stride - 1) / stride);
  };
  const int64_t left = before(g.kernel_w, g.pad_left, g.stride_w);
  const int64_t cols = (g.big_w - 1 + g.pad_left) / g.stride_w + 1;
  return {g.small_h, g.small_w, g.small_c, before(g.kernel_h, g.pad_top, g.stride_h), left,
          left + std::max(g.small_w, cols)};
}

int64_t PaddedSmallRows(const ConvGeometry& g, const PaddedLayout& layout) {
  const int64_t rows = (g.big_h - 1 + g.pad_top) / g.stride_h + 1;
  return layout.pad_top + std::max(g.small_h, rows);
}

// The big pixels of one stride phase ((ih + pad_top) % stride_h, (iw + pad_left) % stride_w):
// tap (kh, kw) of the phase reads the small pixel (kh - phase) / stride rows and columns before
// the pixel's origin, so one slice per tap (the small image's channels against the tap's
// filter rows) serves them all.
struct StridePhase {
  std::vector<Bf16Slice> slices;
  Bf16Pixels pixels;  // origins in one padded small image, `at` in one big image
};

std::vector<StridePhase> StridePhases(const ConvGeometry& g, const PaddedLayout& layout) {
  const int64_t row_values = layout.row_values();
  std::vector<StridePhase> phases;
  for (int64_t phase_h = 0; phase_h < g.stride_h; ++phase_h) {
    for (int64_t phase_w = 0; phase_w < g.stride_w; ++phase_w) {
      StridePhase& phase = phases.emplace_back();
      for (int64_t kh = phase_h; kh < g.kernel_h; kh += g.stride_h) {
        for (int64_t kw = phase_w; kw < g.kernel_w; kw += g.stride_w) {
          phase.slices.push_back({-((kh - phase_h) / g.stride_h) * row_values -
                                      ((kw - phase_w) / g.stride_w) * g.small_c,
                                  (kh * g.kernel_w + kw) * g.small_c / 2, g.small_c / 2});
        }
      }
      for (int64_t ih = 0; ih < g.big_h; ++ih) {
        if ((ih + g.pad_top) % g.stride_h != phase_h) continue;
        const int64_t oh = (ih + g.pad_top - phase_h) / g.stride_h + layout.pad_top;
        for (int64_t iw = 0; iw < g.big_w; ++iw) {
          if ((iw + g.pad_left) % g.stride_w != phase_w) continue;
          const int64_t ow = (iw + g.pad_left - phase_w) / g.stride_w + layout.pad_left;
          phase.pixels.origins.push_back(oh * row_values + ow * g.small_c);
          phase.pixels.at.push_back((ih * g.big_w + iw) * g.big_c);
        }
      }
    }
  }
  return phases;
}

// big = conv^T(small) over images [first, end), an image at a time: every big pixel is
// written once (a phase without taps writes zeros).
template <typename Out>
void DirectConvTranspose(const ConvGeometry& g, const Bf16* small, const PairPacked& filter,
                         int64_t first, int64_t end, ConvScratch* scratch, Out* big,
                         TileMoments* moments) {
  const PaddedLayout layout = PaddedSmall(g);
  const int64_t padded_rows = PaddedSmallRows(g, layout);
  scratch->padded.Reserve(padded_rows * layout.row_values());
  const std::vector<StridePhase> phases = StridePhases(g, layout);
  for (int64_t image = first; image < end; ++image) {
    FillPadded(layout, small + image * g.small_pixels() * g.small_c, 0, padded_rows,
               scratch->padded.data());
    for (const StridePhase& phase : phases) {
      GatherPixels(scratch->padded.data(), phase.pixels, phase.slices, filter,
                   big + image * g.big_pixels() * g.big_c, moments);
    }
  }
  _mm_sfence();  // the streamed stores are visible before the caller's threads read them
}

// --- the filter gradient: dfilter[tap * big_c + ci, co] += sum over small pixels of
// big(pixel's tap, ci) x small(pixel, co). Its reduction runs over pixels, which NHWC does not
// keep in pairs, so each band is copied once with the same pixel of two images interleaved
// (images 2i and 2i + 1 of a chunk; an odd chunk's last image is paired with zeros). Every
// small pixel is then one pair of the reduction whatever the width, and a tap reads the two
// big pixels at one offset; pairing horizontally adjacent pixels instead wasted one pixel in
// eight at Fashion's 7-wide rows (an odd row's last pixel paired with zero) and copied each big
// pixel twice. The small side (every fused block's 64 channels) fills the vectors, each
// (tap, big channel) row is a broadcast, so the tiles run full at big_c 32 too, and the result
// comes out in the kernel's own layout.
// Lane 2i of the result is a's lane i, lane 2i + 1 b's (16 bf16 of each).
inline __m512i InterleaveBf16(__m256i a, __m256i b) {
  alignas(64) static constexpr int16_t kOrder[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5,
                                                     37, 6, 38, 7, 39, 8, 40, 9, 41, 10, 42,
                                                     11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  return _mm512_permutex2var_epi16(_mm512_castsi256_si512(a), _mm512_load_si512(kOrder),
                                   _mm512_castsi256_si512(b));
}

// The value pairs of `channels` channels of two pixels (null: zeros) into out[2 * channels].
inline void StorePairs(const Bf16* first, const Bf16* second, int64_t channels, Bf16* out) {
  for (int64_t c = 0; c < channels; c += 16, out += 32) {
    const int64_t lanes = std::min<int64_t>(16, channels - c);
    const __mmask16 mask = LaneMask(lanes);
    const __m256i a = first != nullptr ? _mm256_maskz_loadu_epi16(mask, first + c)
                                       : _mm256_setzero_si256();
    const __m256i b = second != nullptr ? _mm256_maskz_loadu_epi16(mask, second + c)
                                        : _mm256_setzero_si256();
    const __mmask32 pairs = lanes >= 16 ? 0xFFFFFFFFu : (1u << (2 * lanes)) - 1;
    _mm512_mask_storeu_epi16(out, pairs, InterleaveBf16(a, b));
  }
}

// The bands' layout: the padded big columns a small row's taps read, each value a pair of two
// images' values, and the small pixel pairs, their channels rounded up to whole vectors (zeros
// after small_c).
struct PairBands {
  int64_t columns;       // padded big columns a small row's taps read
  int64_t row_values;    // bf16 values per padded big row
  int64_t small_values;  // bf16 values per small pixel pair
};

PairBands BandsFor(const ConvGeometry& g) {
  const int64_t columns = (g.small_w - 1) * g.stride_w + g.kernel_w;
  return {columns, columns * g.big_c * 2, (g.small_c + 15) / 16 * 16 * 2};
}

// Padded big rows [row_begin, row_end) of images `first` and `second` (null: zeros),
// interleaved: value pair (p, q, c) is (first(p, q, c), second(p, q, c)) in padded
// coordinates, zero outside the image. A row's pixels inside the image are one run of
// channels in both images, interleaved in one pass.
void FillBigPairs(const ConvGeometry& g, const PairBands& bands, const Bf16* first,
                  const Bf16* second, int64_t row_begin, int64_t row_end, Bf16* out) {
  const int64_t c = g.big_c;
  const int64_t inside_begin = std::min(bands.columns, g.pad_left);
  const int64_t inside_end = std::min(bands.columns, g.pad_left + g.big_w);
  for (int64_t p = row_begin; p < row_end; ++p, out += bands.row_values) {
    const int64_t h = p - g.pad_top;
    if (h < 0 || h >= g.big_h || inside_end <= inside_begin) {
      std::memset(out, 0, sizeof(Bf16) * bands.row_values);
      continue;
    }
    std::memset(out, 0, sizeof(Bf16) * inside_begin * c * 2);
    const int64_t row_start = (h * g.big_w + inside_begin - g.pad_left) * c;
    StorePairs(first + row_start, second != nullptr ? second + row_start : nullptr,
               (inside_end - inside_begin) * c, out + inside_begin * c * 2);
    std::memset(out + inside_end * c * 2, 0,
                sizeof(Bf16) * (bands.columns - inside_end) * c * 2);
  }
}

// Small rows [row_begin, row_end) of images `first` and `second` (null: zeros) as value pairs
// per pixel and channel: bands.small_values values per pixel, zero past small_c.
Bf16* FillSmallPairs(const ConvGeometry& g, const PairBands& bands, const Bf16* first,
                     const Bf16* second, int64_t row_begin, int64_t row_end, Bf16* out) {
  const int64_t tail = bands.small_values - 2 * g.small_c;
  for (int64_t pixel = row_begin * g.small_w; pixel < row_end * g.small_w; ++pixel) {
    const int64_t at = pixel * g.small_c;
    StorePairs(first + at, second != nullptr ? second + at : nullptr, g.small_c, out);
    std::memset(out + 2 * g.small_c, 0, sizeof(Bf16) * tail);
    out += bands.small_values;
  }
  return out;
}

// out[r * ld, + 16 kVectors) += sum over the pixel pairs k of the big pair of row r (at
// big + origin[k] + row_offset[r]) times the kVectors small vectors of pair k (at
// small + k * small_stride); the last vector stores `last`.
template <int kRows, int kVectors>
void PairTile(const Bf16* big, const int64_t* origin, const int64_t* row_offset,
              const Bf16* small, int64_t small_stride, int64_t pairs, float* out, int64_t ld,
              __mmask16 last) {
  __m512 acc[kRows][kVectors];
#pragma GCC unroll 12
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) {
      acc[r][j] = _mm512_maskz_loadu_ps(j + 1 == kVectors ? last : 0xFFFF, out + r * ld + 16 * j);
    }
  }
  for (int64_t k = 0; k < pairs; ++k, small += small_stride) {
    const Bf16* base = big + origin[k];
    __m512i w[kVectors];
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) w[j] = _mm512_loadu_si512(small + 32 * j);
#pragma GCC unroll 12
    for (int r = 0; r < kRows; ++r) {
      int32_t pair;
      std::memcpy(&pair, base + row_offset[r], sizeof(pair));
      const __m512bh broadcast = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
      for (int j = 0; j < kVectors; ++j) {
        acc[r][j] = _mm512_dpbf16_ps(acc[r][j], broadcast, (__m512bh)w[j]);
      }
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) {
      _mm512_mask_storeu_ps(out + r * ld + 16 * j, j + 1 == kVectors ? last : 0xFFFF, acc[r][j]);
    }
  }
}

using PairTileFn = void (*)(const Bf16*, const int64_t*, const int64_t*, const Bf16*, int64_t,
                            int64_t, float*, int64_t, __mmask16);

// Rows per tile: the accumulators (kRows x kVectors) fill 24 of the 32 registers.
constexpr int PairTileRows(int vectors) { return vectors >= 2 ? 24 / vectors : 12; }

template <int kVectors, int kRows = PairTileRows(kVectors)>
PairTileFn PairTileFor(int64_t rows) {
  if constexpr (kRows > 1) {
    if (rows < kRows) return PairTileFor<kVectors, kRows - 1>(rows);
  }
  return PairTile<kRows, kVectors>;
}

PairTileFn PairTileFor(int64_t vectors, int64_t rows) {
  switch (vectors) {
    case 1: return PairTileFor<1>(rows);
    case 2: return PairTileFor<2>(rows);
    case 3: return PairTileFor<3>(rows);
    default: return PairTileFor<4>(rows);
  }
}

// Pixel pairs per run of tiles: their small vectors (4 cache lines a pair at 64 channels)
// stay in L1 while every row tile reads them.
constexpr int64_t kPairsPerRun = 64;

// Every (tap, big channel) row and small channel block of the pairs [0, pairs), accumulated
// into dfilter; row_offsets[row] is the row's value pair past a pair's origin.
void PairRuns(const ConvGeometry& g, const PairBands& bands, const Bf16* big,
              const int64_t* origins, const std::vector<int64_t>& row_offsets, const Bf16* small,
              int64_t pairs, float* dfilter) {
  const int64_t patch = g.patch_size();
  for (int64_t k = 0; k < pairs; k += kPairsPerRun) {
    const int64_t run = std::min(kPairsPerRun, pairs - k);
    for (int64_t co = 0; co < g.small_c; co += 64) {
      const BlockVectors vectors = VectorsFor(std::min<int64_t>(64, g.small_c - co));
      const int64_t full_rows = PairTileRows(static_cast<int>(vectors.count));
      const PairTileFn full = PairTileFor(vectors.count, full_rows);
      for (int64_t row = 0; row < patch; row += full_rows) {
        const int64_t rows = std::min(full_rows, patch - row);
        (rows == full_rows ? full : PairTileFor(vectors.count, rows))(
            big, origins + k, row_offsets.data() + row, small + k * bands.small_values + 2 * co,
            bands.small_values, run, dfilter + row * g.small_c + co, g.small_c, vectors.last);
      }
    }
  }
}

// Small pixel pairs per chunk: a chunk's bands (about 250 KB at 64 big channels) stay in L2.
constexpr int64_t kChunkPairs = 256;

// dfilter += the filter gradient of images [first, end): chunks of whole image pairs, or
// bands of one pair's small rows, each copied pair-interleaved.
void DirectFilterGrad(const ConvGeometry& g, const Bf16* big, const Bf16* small, int64_t first,
                      int64_t end, ConvScratch* scratch, float* dfilter) {
  const PairBands bands = BandsFor(g);
  const int64_t image_pairs = std::max<int64_t>(1, kChunkPairs / g.small_pixels());
  const int64_t band = image_pairs > 1 ? g.small_h
                                       : std::clamp<int64_t>(kChunkPairs / g.small_w, 1,
                                                             g.small_h);
  const int64_t band_values = ((band - 1) * g.stride_h + g.kernel_h) * bands.row_values;
  scratch->padded.Reserve(image_pairs * band_values);
  scratch->rows.Reserve(image_pairs * band * g.small_w * bands.small_values);
  std::vector<int64_t> row_offsets;  // per patch row (tap, ci)
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      for (int64_t c = 0; c < g.big_c; ++c) {
        row_offsets.push_back(kh * bands.row_values + (kw * g.big_c + c) * 2);
      }
    }
  }
  const int64_t big_values = g.big_pixels() * g.big_c;
  const int64_t small_values = g.small_pixels() * g.small_c;
  std::vector<int64_t>& origins = scratch->pixels.origins;
  for (int64_t image = first; image < end; image += 2 * image_pairs) {
    const int64_t count = std::min(image_pairs, (end - image + 1) / 2);
    for (int64_t row = 0; row < g.small_h; row += band) {
      const int64_t rows = std::min(band, g.small_h - row);
      origins.clear();
      Bf16* small_pairs = scratch->rows.data();
      for (int64_t i = 0; i < count; ++i) {
        const int64_t a = image + 2 * i;
        const bool paired = a + 1 < end;
        FillBigPairs(g, bands, big + a * big_values, paired ? big + (a + 1) * big_values : nullptr,
                     row * g.stride_h, (row + rows - 1) * g.stride_h + g.kernel_h,
                     scratch->padded.data() + i * band_values);
        small_pairs = FillSmallPairs(g, bands, small + a * small_values,
                                     paired ? small + (a + 1) * small_values : nullptr, row,
                                     row + rows, small_pairs);
        for (int64_t oh = 0; oh < rows; ++oh) {
          for (int64_t ow = 0; ow < g.small_w; ++ow) {
            origins.push_back(i * band_values + oh * g.stride_h * bands.row_values +
                              ow * g.stride_w * g.big_c * 2);
          }
        }
      }
      PairRuns(g, bands, scratch->padded.data(), origins.data(), row_offsets,
               scratch->rows.data(), static_cast<int64_t>(origins.size()), dfilter);
    }
  }
}

}  // namespace

bool DirectConvApplies(const ConvGeometry& g) { return g.big_c % 2 == 0; }

bool DirectTransposeApplies(const ConvGeometry& g) { return g.small_c % 2 == 0; }

void DirectConvImages(const ConvGeometry& g, const Bf16* big, const PairPacked& filter,
                      int64_t first, int64_t end, ConvScratch* scratch, float* small,
                      TileMoments* moments) {
  DirectConv(g, big, filter, first, end, scratch, small, moments);
}

void DirectConvImages(const ConvGeometry& g, const Bf16* big, const PairPacked& filter,
                      int64_t first, int64_t end, ConvScratch* scratch, Bf16* small,
                      TileMoments* moments) {
  DirectConv(g, big, filter, first, end, scratch, small, moments);
}

void DirectConvTransposeImages(const ConvGeometry& g, const Bf16* small,
                               const PairPacked& filter, int64_t first, int64_t end,
                               ConvScratch* scratch, float* big, TileMoments* moments) {
  DirectConvTranspose(g, small, filter, first, end, scratch, big, moments);
}

void DirectConvTransposeImages(const ConvGeometry& g, const Bf16* small,
                               const PairPacked& filter, int64_t first, int64_t end,
                               ConvScratch* scratch, Bf16* big, TileMoments* moments) {
  DirectConvTranspose(g, small, filter, first, end, scratch, big, moments);
}

void FilterGradImages(const ConvGeometry& g, const Bf16* big, const Bf16* small, int64_t first,
                      int64_t end, ConvScratch* scratch, float* dfilter) {
  DirectFilterGrad(g, big, small, first, end, scratch, dfilter);
}

TileMoments::TileMoments(int64_t channels, double* sum, double* sum_sq)
    : channels_(channels), run_(2 * channels, 0.0f), sum_(sum), sum_sq_(sum_sq) {}

void TileMoments::Flush() {
  for (int64_t c = 0; c < channels_; ++c) {
    sum_[c] += run_[c];
    sum_sq_[c] += run_[channels_ + c];
  }
  std::fill(run_.begin(), run_.end(), 0.0f);
}

void PackTapFilter(const ConvGeometry& g, const float* filter, PairPacked* packed) {
  // Row tap * small_c + co, column ci: the filter matrix's row tap * big_c + ci, column co.
  const int64_t taps = g.kernel_h * g.kernel_w;
  packed->Fill(taps * g.small_c, g.big_c, [&](int64_t r, int64_t c) {
    const int64_t tap = r / g.small_c, co = r - tap * g.small_c;
    return filter[(tap * g.big_c + c) * g.small_c + co];
  });
}

}  // namespace avx512bf16
}  // namespace pyae

#include "bf16_target_end.h"
