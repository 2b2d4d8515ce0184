// The AVX512-BF16 convolutions (conv_bf16.h): bf16 im2col tiles times a pair-packed filter on
// vdpbf16ps, float32 accumulators.
#include "conv_bf16.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "im2col.h"

#include "bf16_target.h"  // after every other include

#include "bf16_pair_tile.h"  // compiled for this target: after the pragma
#include "copy_channels.h"

namespace pyae {
namespace avx512bf16 {

void PairPacked::Reset(int64_t rows, int64_t cols) {
  rows_ = rows;
  cols_ = cols;
  offsets_.clear();
  int64_t size = 0;
  for (int64_t b = 0; b < num_blocks(); ++b) {
    offsets_.push_back(size);
    size += pairs() * block_stride(b) * 2;
  }
  data_.assign(size, 0);
}

namespace {

// `lanes` (0 to 16) bf16 values at p, zeros after them.
inline __m256i LoadBf16(const Bf16* p, int64_t lanes) {
  return _mm256_maskz_loadu_epi16(LaneMask(lanes), p);
}

// c[kRows, kVectors * 16] (+)= a[kRows, 2 * pairs] x one column block of b (`pair_stride`
// bf16 values from one pair row to the next). The last vector stores `last` lanes.
template <int kRows, int kVectors>
void GemmTile(int64_t pairs, const Bf16* a, int64_t lda, const Bf16* b, int64_t pair_stride,
              float* c, int64_t ldc, __mmask16 last, bool accumulate) {
  __m512 acc[kRows][kVectors];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) {
      const __mmask16 mask = j + 1 == kVectors ? last : 0xFFFF;
      acc[r][j] = accumulate ? _mm512_maskz_loadu_ps(mask, c + r * ldc + 16 * j)
                             : _mm512_setzero_ps();
    }
  }
  const Bf16* rows[kRows];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) rows[r] = a + r * lda;
  AccumulatePairs<kRows, kVectors>(rows, b, pairs, pair_stride, acc);
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) {
      const __mmask16 mask = j + 1 == kVectors ? last : 0xFFFF;
      _mm512_mask_storeu_ps(c + r * ldc + 16 * j, mask, acc[r][j]);
    }
  }
}

using TileFn = void (*)(int64_t, const Bf16*, int64_t, const Bf16*, int64_t, float*, int64_t,
                        __mmask16, bool);

// 6 rows x 4 vectors: 24 accumulators, 4 filter vectors and a broadcast of the 32 registers.
constexpr int64_t kTileRows = 6;

template <int kVectors>
TileFn TileFor(int64_t rows) {
  switch (rows) {
    case 1: return GemmTile<1, kVectors>;
    case 2: return GemmTile<2, kVectors>;
    case 3: return GemmTile<3, kVectors>;
    case 4: return GemmTile<4, kVectors>;
    case 5: return GemmTile<5, kVectors>;
    default: return GemmTile<6, kVectors>;
  }
}

TileFn TileFor(int64_t vectors, int64_t rows) {
  switch (vectors) {
    case 1: return TileFor<1>(rows);
    case 2: return TileFor<2>(rows);
    case 3: return TileFor<3>(rows);
    default: return TileFor<4>(rows);
  }
}

}  // namespace

void GemmBf16(int64_t m, const Bf16* a, int64_t lda, const PairPacked& b, float* c, int64_t ldc,
              bool accumulate) {
  for (int64_t block = 0; block < b.num_blocks(); ++block) {
    const BlockVectors vectors = VectorsFor(b.block_width(block));
    const TileFn full = TileFor(vectors.count, kTileRows);
    for (int64_t r = 0; r < m; r += kTileRows) {
      const int64_t rows = std::min(kTileRows, m - r);
      const TileFn tile = rows == kTileRows ? full : TileFor(vectors.count, rows);
      tile(b.pairs(), a + r * lda, lda, b.block(block), b.block_stride(block) * 2,
           c + r * ldc + b.block_col(block), ldc, vectors.last, accumulate);
    }
  }
}

void Im2ColBf16(const ConvGeometry& g, const Bf16* big, int64_t first, int64_t rows,
                int64_t ld, Bf16* cols) {
  const int64_t channels = g.big_c;
  const int64_t patch = g.patch_size();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t s = first + r;
    const int64_t n = s / g.small_pixels();
    const int64_t p = s - n * g.small_pixels();
    const int64_t oh = p / g.small_w, ow = p - (p / g.small_w) * g.small_w;
    const Bf16* image = big + n * g.big_pixels() * channels;
    Bf16* row = cols + r * ld;
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t ih = oh * g.stride_h - g.pad_top + kh;
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const int64_t iw = ow * g.stride_w - g.pad_left + kw;
        Bf16* to = row + (kh * g.kernel_w + kw) * channels;
        if (ih < 0 || ih >= g.big_h || iw < 0 || iw >= g.big_w) {
          std::memset(to, 0, sizeof(Bf16) * channels);
        } else {
          CopyChannels(image + (ih * g.big_w + iw) * channels, to, channels);
        }
      }
    }
    for (int64_t k = patch; k < ld; ++k) row[k] = 0;
  }
}

int64_t TileRows(int64_t row_length) {
  constexpr int64_t kTileValues = 128 * 1024;  // 256 KiB of bf16
  return std::max<int64_t>(32, kTileValues / std::max<int64_t>(1, row_length));
}

namespace {

int64_t RoundUpEven(int64_t n) { return (n + 1) / 2 * 2; }

}  // namespace

void ConvImages(const ConvGeometry& g, const Bf16* big, const PairPacked& filter, int64_t first,
                int64_t end, ConvScratch* scratch, float* small) {
  if (DirectConvApplies(g)) {
    DirectConvImages(g, big, filter, first, end, scratch, small);
    return;
  }
  const int64_t ld = RoundUpEven(g.patch_size());
  const int64_t tile = TileRows(ld);
  scratch->cols.Reserve(tile * ld);
  const int64_t stop = end * g.small_pixels();
  for (int64_t s = first * g.small_pixels(); s < stop; s += tile) {
    const int64_t rows = std::min(tile, stop - s);
    Im2ColBf16(g, big, s, rows, ld, scratch->cols.data());
    GemmBf16(rows, scratch->cols.data(), ld, filter, small + s * g.small_c, g.small_c, false);
  }
}

void ConvTransposeImages(const ConvGeometry& g, const Bf16* small, const PairPacked& filter_t,
                         int64_t first, int64_t end, ConvScratch* scratch, float* big) {
  if (DirectTransposeApplies(g)) {
    DirectConvTransposeImages(g, small, filter_t, first, end, scratch, big);
    return;
  }
  const int64_t patch = g.patch_size();
  std::memset(big + first * g.big_pixels() * g.big_c, 0,
              sizeof(float) * (end - first) * g.big_pixels() * g.big_c);
  // An odd channel count needs its rows copied with a zero after each.
  const bool odd = g.small_c % 2 != 0;
  const int64_t lda = RoundUpEven(g.small_c);
  const int64_t tile = TileRows(patch);
  scratch->floats.resize(tile * patch);
  if (odd) scratch->rows.Reserve(tile * lda);
  const int64_t stop = end * g.small_pixels();
  for (int64_t s = first * g.small_pixels(); s < stop; s += tile) {
    const int64_t rows = std::min(tile, stop - s);
    const Bf16* a = small + s * g.small_c;
    if (odd) {
      Bf16* copy = scratch->rows.data();
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(copy + r * lda, a + r * g.small_c, sizeof(Bf16) * g.small_c);
        copy[r * lda + g.small_c] = 0;
      }
      a = copy;
    }
    GemmBf16(rows, a, lda, filter_t, scratch->floats.data(), patch, false);
    Col2ImAdd(g, scratch->floats.data(), s, rows, big);
  }
}

void PackFilter(const ConvGeometry& g, const float* filter, PairPacked* packed) {
  const int64_t cols = g.small_c;
  packed->Fill(g.patch_size(), cols, [&](int64_t r, int64_t c) { return filter[r * cols + c]; });
}

void PackFilterTransposed(const ConvGeometry& g, const float* filter, PairPacked* packed) {
  if (DirectTransposeApplies(g)) {
    PackTapFilter(g, filter, packed);
    return;
  }
  const int64_t cols = g.small_c;
  packed->Fill(cols, g.patch_size(), [&](int64_t r, int64_t c) { return filter[c * cols + r]; });
}

void ToBf16(const float* in, int64_t n, Bf16* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(in + i)));
  }
  if (i < n) {
    const __mmask16 mask = LaneMask(n - i);
    _mm256_mask_storeu_epi16(out + i, mask,
                             (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, in + i)));
  }
}

void ToFloat(const Bf16* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t lanes = std::min<int64_t>(16, n - i);
    const __mmask16 mask = LaneMask(lanes);
    // maskz forms: the plain ones start from _mm512_undefined, which GCC 12 warns about.
    const __m512i wide = _mm512_maskz_slli_epi32(
        0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, LoadBf16(in + i, lanes)), 16);
    _mm512_mask_storeu_ps(out + i, mask, _mm512_castsi512_ps(wide));
  }
}

}  // namespace avx512bf16
}  // namespace pyae

#include "bf16_target_end.h"
