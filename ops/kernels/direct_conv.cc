#include "direct_conv.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <utility>

#include "bf16.h"
#include "scratch.h"

#if defined(PYAE_ISA_AVX512) || defined(PYAE_ISA_AVX2)
#include <immintrin.h>
#define PYAE_DIRECT_KERNELS 1
#endif

#include "isa_target.h"  // after every other include

#include "isa_simd.h"  // compiled for this path: after the pragma

namespace pyae {
namespace PYAE_ISA_NS {

PackedFilter::PackedFilter(const float* matrix, int64_t rows, int64_t cols)
    : rows_(rows), cols_(cols) {
  if (IsPacked()) {
    block_offset_ = {0};
    data_ = matrix;
  } else {
    Pack(matrix);
  }
}

PackedFilter::PackedFilter(std::vector<float> matrix, int64_t rows, int64_t cols)
    : rows_(rows), cols_(cols) {
  if (IsPacked()) {
    block_offset_ = {0};
    packed_ = std::move(matrix);
    data_ = packed_.data();
  } else {
    Pack(matrix.data());
  }
}

void PackedFilter::Pack(const float* matrix) {
  int64_t size = 0;
  for (int64_t b = 0; b < num_blocks(); ++b) {
    block_offset_.push_back(size);
    size += rows_ * block_stride(b);
  }
  packed_.assign(size, 0.0f);
  for (int64_t b = 0; b < num_blocks(); ++b) {
    float* to = packed_.data() + block_offset_[b];
    for (int64_t r = 0; r < rows_; ++r) {
      std::memcpy(to + r * block_stride(b), matrix + r * cols_ + block_col(b),
                  sizeof(float) * block_width(b));
    }
  }
  data_ = packed_.data();
}

int64_t PackedFilter::block_width(int64_t b) const {
  return std::min(kBlockCols, cols_ - block_col(b));
}

#if defined(PYAE_DIRECT_KERNELS)

bool DirectConvAvailable() { return true; }

namespace {

// Vectors per register tile (isa_simd.h has the vector type).
#if defined(PYAE_ISA_AVX512)
// 32 zmm registers of 16 floats: a tile covers a whole column block (up to 4 vectors), with
// its filter row in registers.
constexpr int kTileVectors = 4;
constexpr int kGradTileVectors = 4;
#else
// 16 ymm registers of 8 floats. A conv tile covers 32 columns (4 vectors) of a block for 3
// pixels: 12 accumulators, a broadcast and the filter row (three vectors in registers, the
// fourth read by the FMA from L1), so a 64-column block is two column tiles. Against the
// 6 x 16 GEMM micro-kernel shape it loads 7 values per 12 FMAs instead of 8 and reads each
// patch half as often: forward and dx measured 5-18% faster on Zen 4. The filter gradient
// keeps 6 x 16 tiles (6 filter rows x 2 vectors of small-image row), which measured faster
// there than 3 x 32.
constexpr int kTileVectors = 4;
constexpr int kGradTileVectors = 2;
#endif

using Vec = Simd::Vec;
using Mask = Simd::Mask;

// Columns one register tile covers.
constexpr int64_t kTileCols = Simd::kLanes * kTileVectors;
constexpr int64_t kGradTileCols = Simd::kLanes * kGradTileVectors;

// The last vector of a run of `cols` columns (1 to kTileCols): its lane mask, and whether it
// is full.
struct LastVector {
  Mask mask;
  bool full;
};

int64_t VectorsFor(int64_t cols) { return (cols + Simd::kLanes - 1) / Simd::kLanes; }

LastVector LastVectorOf(int64_t cols) {
  const int64_t lanes = cols - (VectorsFor(cols) - 1) * Simd::kLanes;
  return {Simd::FirstLanes(lanes), lanes == Simd::kLanes};
}

// Small-image pixels per chunk: their rows and the patches they read (or the filter
// gradient's padded copy) stay in L2.
constexpr int64_t kChunkPixels = 512;
// The filter gradient's pass: its small rows (up to 64 channels) and the lines its tiles read
// of each pixel's patch stay in L1 while every filter tile reads them. 64 pixels, not 128:
// a tile reads a line of each pixel's patch as well as its small row, and at 128 those left
// L1 (AVX2, dW alone, 2 threads: 0.93-0.96x the time at Fashion enc2-enc4, Cartoon enc4-enc5).
constexpr int64_t kGradPassPixels = 64;

// NHWC images copied into a zero-bordered buffer, so that every tap of every tile reads
// memory without a bounds check. Either whole images or a band of one image's rows: a big
// image is copied a band at a time, so the copy stays in L2 while the tiles read it.
struct PaddedShape {
  int64_t height, width, channels;  // the image's
  int64_t pad_top, pad_left;        // zeros before it
  int64_t padded_height, padded_width;
};

class PaddedImages {
 public:
  PaddedImages(const PaddedShape& shape, int64_t max_floats) : shape_(shape) {
    buffer_.Reserve(max_floats);
  }

  int64_t image_floats() const { return rows_ * row_floats(); }
  int64_t row_floats() const { return shape_.padded_width * shape_.channels; }
  const float* data() const { return buffer_.data(); }

  // Padded rows [row_begin, row_end) of `count` images from first_image.
  void Fill(const float* images, int64_t first_image, int64_t count, int64_t row_begin,
            int64_t row_end) {
    const PaddedShape& s = shape_;
    const int64_t c = s.channels;
    rows_ = row_end - row_begin;
    for (int64_t i = 0; i < count; ++i) {
      const float* image = images + (first_image + i) * s.height * s.width * c;
      float* padded = buffer_.data() + i * image_floats();
      for (int64_t h = row_begin; h < row_end; ++h) {
        float* row = padded + (h - row_begin) * row_floats();
        const int64_t ih = h - s.pad_top;
        if (ih < 0 || ih >= s.height) {
          std::memset(row, 0, sizeof(float) * row_floats());
          continue;
        }
        std::memset(row, 0, sizeof(float) * s.pad_left * c);
        std::memcpy(row + s.pad_left * c, image + ih * s.width * c, sizeof(float) * s.width * c);
        std::memset(row + (s.pad_left + s.width) * c, 0,
                    sizeof(float) * (s.padded_width - s.pad_left - s.width) * c);
      }
    }
  }

 private:
  PaddedShape shape_;
  Scratch buffer_;
  int64_t rows_ = 0;  // padded rows per image in the buffer
};

// The big image padded so that every tap of every small pixel lands inside (rows/columns the
// conv never reads are left out: TensorFlow's SAME pads the odd pixel at the end).
PaddedShape PaddedBig(const ConvGeometry& g) {
  return {g.big_h,
          g.big_w,
          g.big_c,
          g.pad_top,
          g.pad_left,
          std::max(g.big_h + g.pad_top, (g.small_h - 1) * g.stride_h + g.kernel_h),
          std::max(g.big_w + g.pad_left, (g.small_w - 1) * g.stride_w + g.kernel_w)};
}

// A piece of the small images computed in one go: whole images when they are small, else a
// band of one image's rows; about kChunkPixels small pixels either way.
struct Chunk {
  int64_t image, images;  // first image and how many
  int64_t row, rows;      // small rows of each image
  int64_t pixels(const ConvGeometry& g) const { return images * rows * g.small_w; }
  // Offset of its first small pixel in the batch.
  int64_t first_pixel(const ConvGeometry& g) const {
    return image * g.small_pixels() + row * g.small_w;
  }
  // The padded big rows its patches read.
  int64_t padded_begin(const ConvGeometry& g) const { return row * g.stride_h; }
  int64_t padded_end(const ConvGeometry& g) const {
    return (row + rows - 1) * g.stride_h + g.kernel_h;
  }
};

// How a chunk's patches are addressed from its base pointer: images and rows apart, and the
// offset of padded coordinate (0, 0). The padded copy starts there; the images themselves
// start pad_top rows and pad_left pixels later, so their origin is negative.
struct PatchLayout {
  int64_t image_floats, row_floats, origin;
};

PatchLayout LayoutInPlace(const ConvGeometry& g) {
  const int64_t row_floats = g.big_w * g.big_c;
  return {g.big_h * row_floats, row_floats, -(g.pad_top * row_floats + g.pad_left * g.big_c)};
}

// Offset of each small pixel's patch origin (tap 0, channel 0) from the chunk's base.
void PatchOrigins(const ConvGeometry& g, const PatchLayout& layout, const Chunk& chunk,
                  std::vector<int64_t>* origins) {
  origins->clear();
  for (int64_t i = 0; i < chunk.images; ++i) {
    for (int64_t oh = 0; oh < chunk.rows; ++oh) {
      const int64_t row =
          layout.origin + i * layout.image_floats + oh * g.stride_h * layout.row_floats;
      for (int64_t ow = 0; ow < g.small_w; ++ow) {
        origins->push_back(row + ow * g.stride_w * g.big_c);
      }
    }
  }
}

// Small images in chunks of about kChunkPixels pixels: runs of whole images, or bands of rows
// when one image has more pixels than that.
int64_t ImagesPerChunk(const ConvGeometry& g) {
  return std::max<int64_t>(1, kChunkPixels / std::max<int64_t>(1, g.small_pixels()));
}

std::vector<Chunk> Chunks(const ConvGeometry& g, int64_t first, int64_t end) {
  std::vector<Chunk> chunks;
  if (g.small_pixels() > kChunkPixels) {
    const int64_t band = std::max<int64_t>(1, kChunkPixels / g.small_w);
    for (int64_t image = first; image < end; ++image) {
      for (int64_t row = 0; row < g.small_h; row += band) {
        chunks.push_back({image, 1, row, std::min(band, g.small_h - row)});
      }
    }
    return chunks;
  }
  const int64_t per_chunk = ImagesPerChunk(g);
  for (int64_t image = first; image < end; image += per_chunk) {
    chunks.push_back({image, std::min(per_chunk, end - image), 0, g.small_h});
  }
  return chunks;
}

// The padded buffer's size for the largest of `chunks`.
int64_t PaddedFloats(const ConvGeometry& g, const PaddedShape& shape,
                     const std::vector<Chunk>& chunks) {
  int64_t floats = 0;
  for (const Chunk& chunk : chunks) {
    const int64_t rows = chunk.padded_end(g) - chunk.padded_begin(g);
    floats = std::max(floats, chunk.images * rows * shape.padded_width * shape.channels);
  }
  return floats;
}

// Copies the padded rows `chunk` reads into `padded`.
void FillChunk(const ConvGeometry& g, const float* big, const Chunk& chunk,
               PaddedImages* padded) {
  padded->Fill(big, chunk.image, chunk.images, chunk.padded_begin(g), chunk.padded_end(g));
}

// The part of the big images a chunk's patches read: one contiguous range of whole rows.
std::pair<const float*, const float*> ChunkSource(const ConvGeometry& g, const float* big,
                                                  const Chunk& chunk) {
  const int64_t row_floats = g.big_w * g.big_c;
  const float* image = big + chunk.image * g.big_h * row_floats;
  const int64_t first = std::max<int64_t>(0, chunk.padded_begin(g) - g.pad_top);
  const int64_t last = std::max(first, std::min<int64_t>(g.big_h, chunk.padded_end(g) - g.pad_top));
  return {image + first * row_floats,
          image + ((chunk.images - 1) * g.big_h + last) * row_floats};
}

// The first padded row a chunk reads, in the big images themselves (padded row p is image row
// p - pad_top; row p itself is inside the image, which LayoutInPlace's origin accounts for).
const float* ChunkBase(const ConvGeometry& g, const float* big, const Chunk& chunk) {
  const int64_t row_floats = g.big_w * g.big_c;
  return big + chunk.image * g.big_h * row_floats + chunk.padded_begin(g) * row_floats;
}

// Brings the next chunk's images into L2 a few cache lines per tile while this chunk
// computes, so that its tiles read from L2 instead of waiting on L3.
class Prefetcher {
 public:
  void Start(std::pair<const float*, const float*> range, int64_t steps) {
    cursor_ = reinterpret_cast<const char*>(range.first);
    end_ = reinterpret_cast<const char*>(range.second);
    const int64_t lines = (end_ - cursor_ + 63) / 64;
    per_step_ = (lines + steps - 1) / std::max<int64_t>(1, steps);
  }
  void Step() {
    for (int64_t i = 0; i < per_step_ && cursor_ < end_; ++i, cursor_ += 64) {
      _mm_prefetch(cursor_, _MM_HINT_T1);
    }
  }

 private:
  const char* cursor_ = nullptr;
  const char* end_ = nullptr;
  int64_t per_step_ = 0;
};

// One slice of the patch (a run of consecutive floats within one kernel row: kernel_w
// taps x channels are contiguous in both the image and the filter) sized so that its
// filter rows stay in L1 while every tile of a chunk reads them.
struct PatchSlice {
  int64_t offset;         // from a patch origin
  int64_t filter_row;     // first filter row
  int64_t length;
};

// The epilogue's per-channel vectors for one column block.
// Plain floats, no vector members: these live in a std::vector, and with __m512 members the
// compiler's aligned stores into its elements faulted (the storage was not 64-byte aligned).
struct BlockEpilogue {
  const float* scale;
  const float* shift;
  float slope;
};

// Where a tile's columns lie: filter rows `filter_stride` apart (the column block's padded
// width), and the tile's first column within the block.
struct TileColumns {
  int64_t filter_stride;
  int64_t col;
  LastVector last;
};

// out[at[r]][0, kLanes * kVectors) (+)= sum over the slices of patch values x filter rows, for
// kRows pixels whose patches start at `origin`. `filter` and `out` point at the tile's first
// column; the epilogue's scale and shift are the block's.
template <int kRows, int kVectors>
void ConvTile(const float* padded, const int64_t* origin, const PatchSlice* slices,
              int64_t num_slices, const float* filter, bool accumulate, float* out,
              const int64_t* at, const TileColumns& columns, BlockEpilogue* epilogue) {
  constexpr int kLanes = Simd::kLanes;
  const int64_t stride = columns.filter_stride;
  const Mask last_mask = columns.last.mask;
  const bool last_full = columns.last.full;
  Vec acc[kRows][kVectors];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    const float* row = out + at[r];
#pragma GCC unroll 4
    for (int j = 0; j + 1 < kVectors; ++j) {
      acc[r][j] = accumulate ? Simd::Load(row + kLanes * j) : Simd::Zero();
    }
    acc[r][kVectors - 1] = accumulate
                               ? Simd::LoadPart(last_mask, last_full, row + kLanes * (kVectors - 1))
                               : Simd::Zero();
  }
  for (int64_t i = 0; i < num_slices; ++i) {
    const float* a[kRows];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) a[r] = padded + (origin[r] + slices[i].offset);
    const float* w = filter + slices[i].filter_row * stride;
    for (int64_t k = 0; k < slices[i].length; ++k, w += stride) {
      Vec wv[kVectors];
#pragma GCC unroll 4
      for (int j = 0; j < kVectors; ++j) wv[j] = Simd::Load(w + kLanes * j);
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        const Vec b = Simd::Broadcast(a[r][k]);
#pragma GCC unroll 4
        for (int j = 0; j < kVectors; ++j) acc[r][j] = Simd::Fmadd(b, wv[j], acc[r][j]);
      }
    }
  }
  if (epilogue != nullptr) {
    Vec scale[kVectors], shift[kVectors];
    const float* block_scale = epilogue->scale + columns.col;
    const float* block_shift = epilogue->shift + columns.col;
#pragma GCC unroll 4
    for (int j = 0; j + 1 < kVectors; ++j) {
      scale[j] = Simd::Load(block_scale + kLanes * j);
      shift[j] = Simd::Load(block_shift + kLanes * j);
    }
    scale[kVectors - 1] =
        Simd::LoadPart(last_mask, last_full, block_scale + kLanes * (kVectors - 1));
    shift[kVectors - 1] =
        Simd::LoadPart(last_mask, last_full, block_shift + kLanes * (kVectors - 1));
    const Vec slope = Simd::Broadcast(epilogue->slope);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
      for (int j = 0; j < kVectors; ++j) {
        acc[r][j] = Simd::LeakyRelu(Simd::Fmadd(acc[r][j], scale[j], shift[j]), slope);
      }
    }
  }
  // Fully unrolled, so the accumulators never need an address and stay in registers.
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    float* row = out + at[r];
#pragma GCC unroll 4
    for (int j = 0; j + 1 < kVectors; ++j) Simd::Store(row + kLanes * j, acc[r][j]);
    Simd::StorePart(row + kLanes * (kVectors - 1), last_mask, last_full, acc[r][kVectors - 1]);
  }
}

// The kernel taps of a small pixel that land inside the big image rather than in its zero
// padding: kernel rows [kh_begin, kh_end) and columns [kw_begin, kw_end). Pixels at the
// border skip the rest, as a conv over the unpadded image would (a 7x7 image at kernel 3
// spends 18% of its multiplies on padding otherwise).
struct ValidTaps {
  int64_t kh_begin, kh_end, kw_begin, kw_end;
};

// The valid taps as groups of slices (runs of consecutive floats within one kernel row:
// taps x channels are contiguous in both the image and the filter), each group's
// filter rows (at most kL1FilterBytes) read by every tile from L1; a small filter is one
// group, so its tiles never reload their accumulators.
using SliceGroups = std::vector<std::vector<PatchSlice>>;

SliceGroups PatchSlices(const ConvGeometry& g, const ValidTaps& taps, int64_t row_floats,
                        int64_t filter_stride) {
  constexpr int64_t kL1FilterBytes = 24 * 1024;
  const int64_t span = g.kernel_w * g.big_c;
  const int64_t first = taps.kw_begin * g.big_c;
  const int64_t length_in_row = (taps.kw_end - taps.kw_begin) * g.big_c;
  const int64_t max_length = std::max<int64_t>(
      1, kL1FilterBytes / static_cast<int64_t>(sizeof(float) * filter_stride));
  SliceGroups groups(1);
  int64_t group_length = 0;
  for (int64_t kh = taps.kh_begin; kh < taps.kh_end; ++kh) {
    for (int64_t s = first; s < first + length_in_row;) {
      if (group_length == max_length) {
        groups.emplace_back();
        group_length = 0;
      }
      const int64_t length = std::min(max_length - group_length, first + length_in_row - s);
      groups.back().push_back({kh * row_floats + s, kh * span + s, length});
      group_length += length;
      s += length;
    }
  }
  return groups;
}

// ConvTile for the first `rows` (1 to kRows) of a tile: a class's last tile is often short
// (the corner pixels of a chunk are a handful), and a full tile would multiply the missing
// rows too.
template <int kRows, int kVectors>
void ConvTileRows(int64_t rows, const float* padded, const int64_t* origin,
                  const PatchSlice* slices, int64_t num_slices, const float* filter,
                  bool accumulate, float* out, const int64_t* at, const TileColumns& columns,
                  BlockEpilogue* epilogue) {
  if constexpr (kRows > 1) {
    if (rows < kRows) {
      ConvTileRows<kRows - 1, kVectors>(rows, padded, origin, slices, num_slices, filter,
                                        accumulate, out, at, columns, epilogue);
      return;
    }
  }
  ConvTile<kRows, kVectors>(padded, origin, slices, num_slices, filter, accumulate, out, at,
                            columns, epilogue);
}

// Brings the output rows of the pixels [begin, begin + kRows) of a list into L1 a tile ahead
// of the tile that stores them. Scattered rows (the strided transposed conv writes every
// other pixel of every other row, class after class) defeat the hardware's stream
// prefetchers, and a tile's stores would otherwise each wait for their line to arrive.
template <int kRows>
void PrefetchRows(const float* out, const std::vector<int64_t>& at, int64_t begin,
                  int64_t pixels, int64_t row_bytes) {
  const int64_t end = std::min<int64_t>(begin + kRows, pixels);
  for (int64_t q = begin; q < end; ++q) {
    const char* row = reinterpret_cast<const char*>(out + at[q]);
    for (int64_t b = 0; b < row_bytes; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
  }
}

// A run of `count` column tiles of one shape, kTileCols apart from column `first` of a block
// (all of a block's full tiles, or its one partial tile).
struct ColumnTiles {
  int64_t first, count;
  LastVector last;
};

// Tiles of kRows pixels from a list (patch origins from `padded`, output rows at `at` from
// `out`) against column tiles of one block of the filter (rows `filter_stride` apart), group
// after group of slices; each pixel tile runs every column tile while its patches are in L1.
// With `row_stride` > 0 the output rows are consecutive, at[m] + r * row_stride: the tile's
// offsets stay fixed and only its base moves (small patches feel the difference).
template <int kRows, int kVectors>
void ListTiles(const float* padded, const std::vector<int64_t>& origins,
               const std::vector<int64_t>& at, int64_t row_stride, const SliceGroups& groups,
               const float* filter, int64_t filter_stride, float* out, const ColumnTiles& tiles,
               BlockEpilogue* epilogue, Prefetcher* prefetch) {
  int64_t tile_origin[kRows], tile_at[kRows];
  for (int r = 0; r < kRows; ++r) tile_at[r] = r * row_stride;
  const int64_t pixels = origins.size();
  // The bytes of each output row the column tiles write, from their first column.
  const int64_t row_bytes =
      static_cast<int64_t>(sizeof(float)) *
      ((tiles.count - 1) * kTileCols + kVectors * Simd::kLanes);
  for (size_t i = 0; i < groups.size(); ++i) {
    for (int64_t m = 0; m < pixels; m += kRows) {
      const int64_t valid = std::min<int64_t>(kRows, pixels - m);
      if (row_stride == 0) PrefetchRows<kRows>(out + tiles.first, at, m + kRows, pixels, row_bytes);
      // A fixed count unrolls; entries past `valid` repeat the last pixel and go unused.
      for (int r = 0; r < kRows; ++r) {
        tile_origin[r] = origins[m + std::min<int64_t>(r, valid - 1)];
        if (row_stride == 0) tile_at[r] = at[m + std::min<int64_t>(r, valid - 1)];
      }
      float* tile_out = row_stride == 0 ? out : out + at[m];
      for (int64_t t = 0; t < tiles.count; ++t) {
        const int64_t col = tiles.first + t * kTileCols;
        ConvTileRows<kRows, kVectors>(valid, padded, tile_origin, groups[i].data(),
                                      groups[i].size(), filter + col, i > 0, tile_out + col,
                                      tile_at, TileColumns{filter_stride, col, tiles.last},
                                      i + 1 == groups.size() ? epilogue : nullptr);
      }
      if (prefetch != nullptr) prefetch->Step();
    }
  }
}

// The small pixels that share their valid taps, with those taps' slices per filter block.
struct TapClass {
  ValidTaps taps;
  std::vector<SliceGroups> groups;  // per column block of the filter
};

// One class's pixels in a chunk.
struct ClassPixels {
  std::vector<int64_t> origins;  // patch origins from the chunk's base
  std::vector<int64_t> at;       // output rows, from the chunk's first
  int64_t row_stride = 0;        // > 0 when `at` is consecutive rows
};

// A chunk's pixels sorted into the classes, and what that depends on: the chunk's image count
// and its rows' classes.
struct SortedChunk {
  std::vector<int64_t> key;
  std::vector<ClassPixels> of_class;
};

// Every class of the conv, each small pixel's class (`of_row[oh] * columns + of_col[ow]`),
// and the chunks sorted so far: a call sees few distinct ones (a band at the top, the middle
// ones, a band at the bottom, a shorter last band), each sorted once.
struct TapClasses {
  std::vector<TapClass> classes;
  std::vector<int64_t> of_row, of_col;
  int64_t columns = 0;
  std::deque<SortedChunk> sorted;  // a deque: references to earlier ones stay valid
};

template <typename Key>
std::vector<int64_t> Distinct(const std::vector<Key>& keys, std::vector<Key>* values) {
  std::vector<int64_t> index;
  for (const Key& key : keys) {
    const auto found = std::find(values->begin(), values->end(), key);
    index.push_back(found - values->begin());
    if (found == values->end()) values->push_back(key);
  }
  return index;
}

using TapRanges = std::vector<std::pair<int64_t, int64_t>>;

// Along one axis, for each of `count` small positions, the taps [begin, end) of a kernel
// placed at position * stride (padded coordinates) that land on the `size` image pixels.
TapRanges InsideTaps(int64_t count, int64_t stride, int64_t pad, int64_t size,
                     int64_t kernel) {
  TapRanges taps;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t origin = i * stride;
    const int64_t begin = std::min(kernel, std::max<int64_t>(0, pad - origin));
    taps.push_back({begin, std::max(begin, std::min(kernel, pad + size - origin))});
  }
  return taps;
}

// The classes, their slices laid out for images `row_floats` apart row to row.
TapClasses MakeTapClasses(const ConvGeometry& g, const PackedFilter& filter,
                          int64_t row_floats) {
  const TapRanges row_taps = InsideTaps(g.small_h, g.stride_h, g.pad_top, g.big_h, g.kernel_h);
  const TapRanges col_taps = InsideTaps(g.small_w, g.stride_w, g.pad_left, g.big_w, g.kernel_w);
  TapRanges rows, cols;
  TapClasses result;
  result.of_row = Distinct(row_taps, &rows);
  result.of_col = Distinct(col_taps, &cols);
  result.columns = cols.size();
  for (const auto& row : rows) {
    for (const auto& col : cols) {
      TapClass cls;
      cls.taps = {row.first, row.second, col.first, col.second};
      for (int64_t b = 0; b < filter.num_blocks(); ++b) {
        cls.groups.push_back(PatchSlices(g, cls.taps, row_floats, filter.block_stride(b)));
      }
      result.classes.push_back(std::move(cls));
    }
  }
  return result;
}

// The chunk's pixels sorted into their classes (patch origins from its base, output rows
// from its first), sorted once per distinct chunk: small patches would spend a third of their
// time here otherwise.
const SortedChunk& SortChunk(const ConvGeometry& g, const PatchLayout& layout,
                             const Chunk& chunk, TapClasses* classes) {
  std::vector<int64_t> key = {chunk.images, chunk.rows};
  for (int64_t r = 0; r < chunk.rows; ++r) key.push_back(classes->of_row[chunk.row + r]);
  for (const SortedChunk& sorted : classes->sorted) {
    if (sorted.key == key) return sorted;
  }
  SortedChunk& sorted = classes->sorted.emplace_back();
  sorted.key = std::move(key);
  sorted.of_class.resize(classes->classes.size());
  std::vector<int64_t> origins;
  PatchOrigins(g, layout, chunk, &origins);
  int64_t pixel = 0;
  for (int64_t i = 0; i < chunk.images; ++i) {
    for (int64_t oh = chunk.row; oh < chunk.row + chunk.rows; ++oh) {
      for (int64_t ow = 0; ow < g.small_w; ++ow, ++pixel) {
        ClassPixels& cls =
            sorted.of_class[classes->of_row[oh] * classes->columns + classes->of_col[ow]];
        cls.origins.push_back(origins[pixel]);
        cls.at.push_back(pixel * g.small_c);
      }
    }
  }
  // `at` rises by at least one row per pixel, so equal ends mean no gaps.
  for (ClassPixels& cls : sorted.of_class) {
    const int64_t n = cls.at.size();
    const bool consecutive = n > 0 && cls.at.back() - cls.at.front() == (n - 1) * g.small_c;
    cls.row_stride = consecutive ? g.small_c : 0;
  }
  return sorted;
}

// The register tile for `vectors` x kLanes columns: 6-8 pixels, so 8-24 accumulators (AVX2:
// 3-8 pixels, 8-12 accumulators of its 16 registers) plus few enough patch pointers to stay
// in registers. Calls
// visit(TileShape<rows, vectors>{}).
template <int kRowsValue, int kVectorsValue>
struct TileShape {
  static constexpr int kRows = kRowsValue;
  static constexpr int kVectors = kVectorsValue;
};

template <typename Visit>
void WithTileShape(int64_t vectors, Visit visit) {
#if defined(PYAE_ISA_AVX512)
  switch (vectors) {
    case 1: return visit(TileShape<8, 1>{});
    case 2: return visit(TileShape<8, 2>{});
    case 3: return visit(TileShape<8, 3>{});
    default: return visit(TileShape<6, 4>{});
  }
#else
  switch (vectors) {
    case 1: return visit(TileShape<8, 1>{});
    case 2: return visit(TileShape<6, 2>{});
    case 3: return visit(TileShape<4, 3>{});
    default: return visit(TileShape<3, 4>{});
  }
#endif
}

// Calls visit(ColumnTiles, TileShape) for the column tiles of a block `width` columns wide:
// once for its full tiles, once for the partial one at its end.
template <typename Visit>
void ForEachColumnTiles(int64_t width, Visit visit) {
  const int64_t full = width / kTileCols;
  if (full > 0) {
    WithTileShape(kTileVectors, [&](auto tile) {
      visit(ColumnTiles{0, full, LastVectorOf(kTileCols)}, tile);
    });
  }
  const int64_t rest = width - full * kTileCols;
  if (rest > 0) {
    WithTileShape(VectorsFor(rest), [&](auto tile) {
      visit(ColumnTiles{full * kTileCols, 1, LastVectorOf(rest)}, tile);
    });
  }
}


// Conv^T's output: each big pixel gathers from the small pixels whose patches cover it.
// Along a big row, the pixels of one stride class (iw = first + m * stride_w) share their
// kernel taps, and consecutive m read consecutive small pixels: one tile kernel call covers
// kRows of them with every tap as a slice.
PaddedShape PaddedSmall(const ConvGeometry& g) {
  auto before = [](int64_t kernel, int64_t pad, int64_t stride) {
    return std::max<int64_t>(0, (kernel - 1 - pad + stride - 1) / stride);
  };
  const int64_t top = before(g.kernel_h, g.pad_top, g.stride_h);
  const int64_t left = before(g.kernel_w, g.pad_left, g.stride_w);
  const int64_t rows = (g.big_h - 1 + g.pad_top) / g.stride_h + 1;
  const int64_t cols = (g.big_w - 1 + g.pad_left) / g.stride_w + 1;
  return {g.small_h, g.small_w, g.small_c, top, left,
          top + std::max(g.small_h, rows), left + std::max(g.small_w, cols)};
}

// The big pixels of one stride class (row and column phases (ih + pad_top) % stride_h and
// (iw + pad_left) % stride_w) are reached by the same taps, each at a fixed offset from a
// per-pixel origin in the padded small image: one tile kernel call covers any kRows of them.
struct StrideClass {
  SliceGroups taps;  // one group
  std::vector<int64_t> origins;  // in the padded small image
  std::vector<int64_t> at;       // in the big image's rows
};

// A band of big rows [begin, end) and the padded small rows [small_begin, small_end) its
// taps read: only those are copied into the padded buffer for it, so the copy stays in L1/L2
// while the band's tiles read it (a whole padded image, 1.1 MB at 64x64x64, left L2 before
// its first band was done).
struct Band {
  int64_t begin, end;
  int64_t small_begin, small_end;
};

Band BandOf(const ConvGeometry& g, const PaddedShape& shape, int64_t begin, int64_t end) {
  // Big row ih's taps read padded small rows (ih + pad_top) / stride_h + pad_top (its origin,
  // the shape's pad_top) and up to (kernel_h - 1) / stride_h rows before it.
  const int64_t first_origin = (begin + g.pad_top) / g.stride_h + shape.pad_top;
  const int64_t last_origin = (end - 1 + g.pad_top) / g.stride_h + shape.pad_top;
  return {begin, end, std::max<int64_t>(0, first_origin - (g.kernel_h - 1) / g.stride_h),
          std::min(shape.padded_height, last_origin + 1)};
}

// The band's pixels of phases (phase_h, phase_w), origins from the band's first small row.
void MakeStrideClass(const ConvGeometry& g, const PaddedShape& shape, int64_t row_floats,
                     int64_t phase_h, int64_t phase_w, const Band& band, StrideClass* cls) {
  const int64_t row_begin = band.begin, row_end = band.end;
  cls->taps.assign(1, {});
  cls->origins.clear();
  cls->at.clear();
  for (int64_t kh = phase_h; kh < g.kernel_h; kh += g.stride_h) {
    for (int64_t kw = phase_w; kw < g.kernel_w; kw += g.stride_w) {
      // Tap (kh, kw) reads the small pixel (kh - phase) / stride rows/columns before the origin.
      cls->taps[0].push_back({-((kh - phase_h) / g.stride_h) * row_floats -
                               ((kw - phase_w) / g.stride_w) * g.small_c,
                           (kh * g.kernel_w + kw) * g.small_c, g.small_c});
    }
  }
  for (int64_t ih = row_begin; ih < row_end; ++ih) {
    if ((ih + g.pad_top) % g.stride_h != phase_h) continue;
    const int64_t oh = (ih + g.pad_top - phase_h) / g.stride_h + shape.pad_top - band.small_begin;
    for (int64_t iw = (phase_w - g.pad_left % g.stride_w + g.stride_w) % g.stride_w;
         iw < g.big_w; iw += g.stride_w) {
      const int64_t ow = (iw + g.pad_left - phase_w) / g.stride_w + shape.pad_left;
      cls->origins.push_back(oh * row_floats + ow * g.small_c);
      cls->at.push_back((ih * g.big_w + iw) * g.big_c);
    }
  }
}

// Per column block epilogues for a filter; empty when there is no epilogue.
std::vector<BlockEpilogue> BlockEpilogues(const PackedFilter& filter,
                                          const TileEpilogue* epilogue) {
  std::vector<BlockEpilogue> blocks;
  if (epilogue == nullptr) return blocks;
  for (int64_t b = 0; b < filter.num_blocks(); ++b) {
    blocks.push_back({epilogue->scale + filter.block_col(b), epilogue->shift + filter.block_col(b),
                      epilogue->negative_slope});
  }
  return blocks;
}

BlockEpilogue* BlockEpilogueAt(std::vector<BlockEpilogue>& blocks, int64_t b) {
  return blocks.empty() ? nullptr : &blocks[b];
}

// dfilter rows [row, row + kRows) (channels of one tap) += sum over `count` pixels of patch
// value x small row: pixel q's patch at big + origin[q] + offset, its row at small +
// small_at[q] when kListed, else at small + q * dfilter_stride (every pixel of a run: the rows
// are consecutive, and a pointer that steps costs less than one more load per pixel).
template <int kRows, int kVectors, bool kFull, bool kListed>
void FilterGradTile(const float* big, const int64_t* origin, const int64_t* small_at,
                    int64_t count, int64_t offset, const float* small, float* dfilter,
                    int64_t dfilter_stride, LastVector last) {
  constexpr int kLanes = Simd::kLanes;
  last.full = kFull;  // a constant, so AVX2's choice of load is made outside the pixel loop
  Vec acc[kRows][kVectors];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) acc[r][j] = Simd::Zero();
  }
  for (int64_t q = 0; q < count; ++q) {
    const float* a = big + origin[q] + offset;
    const float* s = kListed ? small + small_at[q] : small + q * dfilter_stride;
    Vec sv[kVectors];
#pragma GCC unroll 4
    for (int j = 0; j + 1 < kVectors; ++j) sv[j] = Simd::Load(s + kLanes * j);
    sv[kVectors - 1] = Simd::LoadPart(last.mask, last.full, s + kLanes * (kVectors - 1));
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const Vec b = Simd::Broadcast(a[r]);
#pragma GCC unroll 4
      for (int j = 0; j < kVectors; ++j) acc[r][j] = Simd::Fmadd(b, sv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    float* row = dfilter + r * dfilter_stride;
#pragma GCC unroll 4
    for (int j = 0; j + 1 < kVectors; ++j) {
      Simd::Store(row + kLanes * j, Simd::Add(Simd::Load(row + kLanes * j), acc[r][j]));
    }
    float* tail = row + kLanes * (kVectors - 1);
    Simd::StorePart(tail, last.mask, last.full,
                    Simd::Add(Simd::LoadPart(last.mask, last.full, tail), acc[r][kVectors - 1]));
  }
}

using FilterGradFn = void (*)(const float*, const int64_t*, const int64_t*, int64_t, int64_t,
                              const float*, float*, int64_t, LastVector);

template <int kVectors, bool kFull, bool kListed>
FilterGradFn FilterGradFor(int64_t rows) {
  switch (rows) {
    case 1: return FilterGradTile<1, kVectors, kFull, kListed>;
    case 2: return FilterGradTile<2, kVectors, kFull, kListed>;
    case 3: return FilterGradTile<3, kVectors, kFull, kListed>;
    case 4: return FilterGradTile<4, kVectors, kFull, kListed>;
    case 5: return FilterGradTile<5, kVectors, kFull, kListed>;
    case 6: return FilterGradTile<6, kVectors, kFull, kListed>;
    case 7: return FilterGradTile<7, kVectors, kFull, kListed>;
    default: return FilterGradTile<8, kVectors, kFull, kListed>;
  }
}

// `full`: whether the tile's last vector is full. AVX-512's masked loads cost what plain
// ones do, so only AVX2 keeps a variant for each. `listed`: whether the pixels' small rows
// come from a list (FilterGradTile's kListed).
FilterGradFn FilterGradFor(int64_t vectors, int64_t rows, bool full, bool listed) {
#if defined(PYAE_ISA_AVX512)
  (void)full;
  if (listed) {
    switch (vectors) {
      case 1: return FilterGradFor<1, false, true>(rows);
      case 2: return FilterGradFor<2, false, true>(rows);
      case 3: return FilterGradFor<3, false, true>(rows);
      default: return FilterGradFor<4, false, true>(rows);
    }
  }
  switch (vectors) {
    case 1: return FilterGradFor<1, false, false>(rows);
    case 2: return FilterGradFor<2, false, false>(rows);
    case 3: return FilterGradFor<3, false, false>(rows);
    default: return FilterGradFor<4, false, false>(rows);
  }
#else
  if (listed) {
    if (full) {
      return vectors == 1 ? FilterGradFor<1, true, true>(rows) : FilterGradFor<2, true, true>(rows);
    }
    return vectors == 1 ? FilterGradFor<1, false, true>(rows) : FilterGradFor<2, false, true>(rows);
  }
  if (full) {
    return vectors == 1 ? FilterGradFor<1, true, false>(rows) : FilterGradFor<2, true, false>(rows);
  }
  return vectors == 1 ? FilterGradFor<1, false, false>(rows) : FilterGradFor<2, false, false>(rows);
#endif
}

// Filter rows per filter-gradient tile: 8-24 accumulators (AVX2: 8-12), plus a row of the
// small image and a broadcast.
int64_t FilterGradRows(int64_t vectors) {
  return vectors == kGradTileVectors && vectors > 1 ? 6 : 8;
}

// Input channels from which the filter gradient reads the images in place, a tap at a time:
// below, a tap's channels are too few filter rows to fill a tile. Only at unit stride: there
// the padding is a border all round (18% of the taps at 7x7). A strided conv's SAME padding is
// one row and column at the end, and in place its tiles ran 7-15% slower (Fashion enc2,
// Cartoon enc4: a tile reads one line per pixel, every other pixel of rows a power of two
// apart, which crowd into few L1 sets; the padded copy's rows are not).
constexpr int64_t kMinInPlaceChannels = 16;

// The filter rows each tap (in place) or each kernel row (padded copy) covers.
std::vector<FilterGradPlan::Segment> GradSegments(const ConvGeometry& g, bool in_place,
                                                  int64_t row_floats) {
  std::vector<FilterGradPlan::Segment> segments;
  const int64_t span = g.kernel_w * g.big_c;
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    if (!in_place) {
      segments.push_back({kh * row_floats, kh * span, span, 0});
      continue;
    }
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      segments.push_back(
          {kh * row_floats + kw * g.big_c, kh * span + kw * g.big_c, g.big_c, kh * g.kernel_w + kw});
    }
  }
  return segments;
}

// A chunk's pixel lists: per tap, the pixels whose tap lands inside the image (in place), or
// every pixel (padded copy).
std::vector<FilterGradPlan::PixelList> GradPixelLists(const ConvGeometry& g, bool in_place,
                                                      const PatchLayout& layout,
                                                      const Chunk& chunk) {
  const TapRanges row_taps = InsideTaps(g.small_h, g.stride_h, g.pad_top, g.big_h, g.kernel_h);
  const TapRanges col_taps = InsideTaps(g.small_w, g.stride_w, g.pad_left, g.big_w, g.kernel_w);
  std::vector<int64_t> origins;
  PatchOrigins(g, layout, chunk, &origins);
  const int64_t pixels = chunk.pixels(g);
  std::vector<FilterGradPlan::PixelList> lists(in_place ? g.kernel_h * g.kernel_w : 1);
  for (FilterGradPlan::PixelList& list : lists) {
    list.origins.reserve(pixels);
    list.small_at.reserve(pixels);
    list.pixel.reserve(pixels);
  }
  for (int64_t p = 0; p < pixels; ++p) {
    if (p % kGradPassPixels == 0) {
      for (FilterGradPlan::PixelList& list : lists) list.pass_begin.push_back(list.pixel.size());
    }
    const auto& rows = row_taps[chunk.row + (p / g.small_w) % chunk.rows];
    const auto& cols = col_taps[p % g.small_w];
    for (size_t l = 0; l < lists.size(); ++l) {
      const int64_t kh = l / g.kernel_w, kw = l % g.kernel_w;
      const bool inside =
          kh >= rows.first && kh < rows.second && kw >= cols.first && kw < cols.second;
      if (in_place && !inside) continue;
      lists[l].origins.push_back(origins[p]);
      lists[l].small_at.push_back(p * g.small_c);
      lists[l].pixel.push_back(p);
    }
  }
  for (FilterGradPlan::PixelList& list : lists) list.pass_begin.push_back(list.pixel.size());
  return lists;
}

// The entries of `list` in pass `pass`, which ends at chunk pixel `pass_end`: the plan's own
// bounds, or, where a shorter chunk ends the pass early, the first entry past its end.
std::pair<int64_t, int64_t> PassEntries(const FilterGradPlan::PixelList& list, int64_t pass,
                                        int64_t pass_end) {
  const int64_t begin = list.pass_begin[pass];
  int64_t end = list.pass_begin[pass + 1];
  if (end > begin && list.pixel[end - 1] >= pass_end) {
    end = std::lower_bound(list.pixel.begin() + begin, list.pixel.begin() + end, pass_end) -
          list.pixel.begin();
  }
  return {begin, end};
}

}  // namespace

int64_t DirectChunkImages(const ConvGeometry& g) { return ImagesPerChunk(g); }

void DirectConv(const ConvGeometry& g, const float* big, const PackedFilter& filter,
                int64_t first, int64_t end, float* small, const RowsCallback& on_rows,
                TileEpilogue* epilogue) {
  std::vector<BlockEpilogue> epilogues = BlockEpilogues(filter, epilogue);
  const std::vector<Chunk> chunks = Chunks(g, first, end);
  // No executed tap lands on padding, so the tiles read the images where they lie.
  TapClasses classes = MakeTapClasses(g, filter, g.big_w * g.big_c);
  Prefetcher prefetch;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const Chunk& chunk = chunks[c];
    const float* base = ChunkBase(g, big, chunk);
    const SortedChunk& sorted = SortChunk(g, LayoutInPlace(g), chunk, &classes);
    float* out = small + chunk.first_pixel(g) * g.small_c;
    const int64_t pixels = chunk.pixels(g);
    if (c + 1 < chunks.size()) {
      const int64_t groups = classes.classes[0].groups[0].size();
      const int64_t tiles = filter.num_blocks() * groups * (pixels / 6 + classes.classes.size());
      prefetch.Start(ChunkSource(g, big, chunks[c + 1]), tiles);
    } else {
      prefetch.Start({big, big}, 1);
    }
    for (int64_t b = 0; b < filter.num_blocks(); ++b) {
      ForEachColumnTiles(filter.block_width(b), [&](const ColumnTiles& tiles, auto tile) {
        using Tile = decltype(tile);
        for (size_t k = 0; k < classes.classes.size(); ++k) {
          const ClassPixels& pixels_of = sorted.of_class[k];
          ListTiles<Tile::kRows, Tile::kVectors>(
              base, pixels_of.origins, pixels_of.at, pixels_of.row_stride,
              classes.classes[k].groups[b], filter.block(b), filter.block_stride(b),
              out + filter.block_col(b), tiles, BlockEpilogueAt(epilogues, b), &prefetch);
        }
      });
    }
    on_rows(out, pixels);
  }
}

void DirectConvTranspose(const ConvGeometry& g, const float* small,
                         const PackedFilter& filter, int64_t first, int64_t end, float* big,
                         const RowsCallback& on_rows, TileEpilogue* epilogue) {
  std::vector<BlockEpilogue> epilogues = BlockEpilogues(filter, epilogue);
  const PaddedShape shape = PaddedSmall(g);
  const int64_t row_floats = shape.padded_width * shape.channels;
  // Bands of whole rows, about a pass of pixels each, so on_rows sees them while in cache.
  const int64_t band_rows = std::max<int64_t>(1, kChunkPixels / g.big_w);
  std::vector<Band> bands;
  int64_t band_floats = 0;
  for (int64_t row = 0; row < g.big_h; row += band_rows) {
    bands.push_back(BandOf(g, shape, row, std::min(g.big_h, row + band_rows)));
    band_floats = std::max(band_floats,
                           (bands.back().small_end - bands.back().small_begin) * row_floats);
  }
  PaddedImages padded(shape, band_floats);
  // Every band of every image is padded into the same buffer, so the classes of each band and
  // phase are the same for all images: made once, not per image (a small image has little
  // work to spread their cost over).
  std::vector<StrideClass> classes;
  for (const Band& band : bands) {
    for (int64_t phase_h = 0; phase_h < g.stride_h; ++phase_h) {
      for (int64_t phase_w = 0; phase_w < g.stride_w; ++phase_w) {
        MakeStrideClass(g, shape, row_floats, phase_h, phase_w, band, &classes.emplace_back());
      }
    }
  }
  for (int64_t image = first; image < end; ++image) {
    float* out = big + image * g.big_pixels() * g.big_c;
    const StrideClass* band_classes = classes.data();
    for (const Band& band : bands) {
      padded.Fill(small, image, 1, band.small_begin, band.small_end);
      for (int64_t phase = 0; phase < g.stride_h * g.stride_w; ++phase) {
        const StrideClass& cls = *band_classes++;
        for (int64_t b = 0; b < filter.num_blocks(); ++b) {
          ForEachColumnTiles(filter.block_width(b), [&](const ColumnTiles& tiles, auto tile) {
            using Tile = decltype(tile);
            ListTiles<Tile::kRows, Tile::kVectors>(
                padded.data(), cls.origins, cls.at, 0, cls.taps, filter.block(b),
                filter.block_stride(b), out + filter.block_col(b), tiles,
                BlockEpilogueAt(epilogues, b), nullptr);
          });
        }
      }
      on_rows(out + band.begin * g.big_w * g.big_c, (band.end - band.begin) * g.big_w);
    }
  }
}

FilterGradPlan MakeFilterGradPlan(const ConvGeometry& g) {
  FilterGradPlan plan;
  plan.in_place = g.big_c >= kMinInPlaceChannels && g.stride_h == 1 && g.stride_w == 1;
  const PaddedShape shape = PaddedBig(g);
  const int64_t row_floats = (plan.in_place ? g.big_w : shape.padded_width) * g.big_c;
  plan.segments = GradSegments(g, plan.in_place, row_floats);
  // The chunks Chunks() cuts (the first one of a task's, or each band of an image).
  std::vector<Chunk> shapes;
  if (g.small_pixels() > kChunkPixels) {
    plan.band_rows = std::max<int64_t>(1, kChunkPixels / g.small_w);
    for (int64_t row = 0; row < g.small_h; row += plan.band_rows) {
      shapes.push_back({0, 1, row, std::min(plan.band_rows, g.small_h - row)});
    }
  } else {
    shapes.push_back({0, ImagesPerChunk(g), 0, g.small_h});
  }
  for (const Chunk& chunk : shapes) {
    const int64_t padded_rows = chunk.padded_end(g) - chunk.padded_begin(g);
    const PatchLayout layout = plan.in_place
                                   ? LayoutInPlace(g)
                                   : PatchLayout{padded_rows * row_floats, row_floats, 0};
    plan.chunk_lists.push_back(GradPixelLists(g, plan.in_place, layout, chunk));
  }
  return plan;
}

void DirectFilterGrad(const ConvGeometry& g, const FilterGradPlan& plan, const float* big,
                      const float* small, int64_t first, int64_t end, float* dfilter) {
  const std::vector<Chunk> chunks = Chunks(g, first, end);
  const PaddedShape shape = PaddedBig(g);
  PaddedImages padded(shape, plan.in_place ? 0 : PaddedFloats(g, shape, chunks));
  const int64_t cols = g.small_c;
  std::vector<std::pair<int64_t, int64_t>> entries(plan.chunk_lists[0].size());
  Prefetcher prefetch;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const Chunk& chunk = chunks[c];
    const float* base = ChunkBase(g, big, chunk);
    if (!plan.in_place) {
      FillChunk(g, big, chunk, &padded);
      base = padded.data();
    }
    // In place, the tiles' scattered reads of a chunk not yet in cache would each wait on L3:
    // the next chunk is brought in while this one computes, as the forward does.
    const int64_t segment_steps = static_cast<int64_t>(plan.segments.size()) *
                                  ((chunk.pixels(g) + kGradPassPixels - 1) / kGradPassPixels) *
                                  ((cols + kGradTileCols - 1) / kGradTileCols);
    if (plan.in_place && c + 1 < chunks.size()) {
      prefetch.Start(ChunkSource(g, big, chunks[c + 1]), segment_steps);
    } else {
      prefetch.Start({big, big}, 1);
    }
    const auto& lists = plan.chunk_lists[plan.band_rows > 0 ? chunk.row / plan.band_rows : 0];
    const float* rows = small + chunk.first_pixel(g) * cols;
    const int64_t pixels = chunk.pixels(g);
    for (int64_t q = 0, pass = 0; q < pixels; q += kGradPassPixels, ++pass) {
      for (size_t l = 0; l < lists.size(); ++l) {
        entries[l] = PassEntries(lists[l], pass, std::min(q + kGradPassPixels, pixels));
      }
      for (int64_t col = 0; col < cols; col += kGradTileCols) {
        const int64_t width = std::min(kGradTileCols, cols - col);
        const int64_t vectors = VectorsFor(width);
        const int64_t tile = FilterGradRows(vectors);
        const LastVector last = LastVectorOf(width);
        for (const FilterGradPlan::Segment& segment : plan.segments) {
          const FilterGradPlan::PixelList& list = lists[segment.list];
          const auto [begin, stop] = entries[segment.list];
          prefetch.Step();
          if (stop == begin) continue;
          // Tiles of equal height (64 rows in 6 + 6 + ... + 4 would end on a thin tile).
          const int64_t tiles = (segment.length + tile - 1) / tile;
          for (int64_t t = 0, s = 0; t < tiles; ++t) {
            const int64_t height = (segment.length - s) / (tiles - t);
            // Padded, every pixel is listed: the rows from `begin` on are consecutive.
            FilterGradFor(vectors, height, last.full, plan.in_place)(
                base, list.origins.data() + begin, list.small_at.data() + begin, stop - begin,
                segment.offset + s, rows + col + (plan.in_place ? 0 : begin * cols),
                dfilter + (segment.filter_row + s) * cols + col, cols, last);
            s += height;
          }
        }
      }
    }
  }
}

#else  // the generic path: no direct kernels

bool DirectConvAvailable() { return false; }

int64_t DirectChunkImages(const ConvGeometry&) { return 1; }

// Callers check DirectConvAvailable() first; reaching these is a bug in the caller.
void DirectConv(const ConvGeometry&, const float*, const PackedFilter&, int64_t, int64_t,
                float*, const RowsCallback&, TileEpilogue*) {
  std::abort();
}

void DirectConvTranspose(const ConvGeometry&, const float*, const PackedFilter&, int64_t,
                         int64_t, float*, const RowsCallback&, TileEpilogue*) {
  std::abort();
}

FilterGradPlan MakeFilterGradPlan(const ConvGeometry&) { std::abort(); }

void DirectFilterGrad(const ConvGeometry&, const FilterGradPlan&, const float*, const float*,
                      int64_t, int64_t, float*) {
  std::abort();
}

#endif

}  // namespace PYAE_ISA_NS
}  // namespace pyae

#include "isa_target_end.h"

