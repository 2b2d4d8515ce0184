#include "im2col.h"

#include <cstring>

#include "copy_channels.h"

namespace pyae {
namespace {

// Calls visit(patch_offset, big_offset) for each in-bounds kernel tap of small pixel s, and
// visit_pad(patch_offset) for each padded tap.
template <typename Visit, typename VisitPad>
inline void ForEachTap(const ConvGeometry& g, int64_t s, Visit visit, VisitPad visit_pad) {
  const int64_t n = s / g.small_pixels();
  const int64_t p = s - n * g.small_pixels();
  const int64_t oh = p / g.small_w;
  const int64_t ow = p - oh * g.small_w;
  const int64_t top = oh * g.stride_h - g.pad_top;
  const int64_t left = ow * g.stride_w - g.pad_left;
  const int64_t image_offset = n * g.big_pixels() * g.big_c;
  int64_t patch_offset = 0;
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    const int64_t ih = top + kh;
    for (int64_t kw = 0; kw < g.kernel_w; ++kw, patch_offset += g.big_c) {
      const int64_t iw = left + kw;
      if (ih < 0 || ih >= g.big_h || iw < 0 || iw >= g.big_w) {
        visit_pad(patch_offset);
      } else {
        visit(patch_offset, image_offset + (ih * g.big_w + iw) * g.big_c);
      }
    }
  }
}

}  // namespace

void Im2Col(const ConvGeometry& g, const float* big, int64_t first, int64_t rows, float* cols) {
  const int64_t patch = g.patch_size();
  const size_t channel_bytes = sizeof(float) * g.big_c;
  for (int64_t r = 0; r < rows; ++r) {
    float* row = cols + r * patch;
    ForEachTap(
        g, first + r,
        [&](int64_t at, int64_t src) { CopyChannels(big + src, row + at, g.big_c); },
        [&](int64_t at) { std::memset(row + at, 0, channel_bytes); });
  }
}

void Col2ImAdd(const ConvGeometry& g, const float* cols, int64_t first, int64_t rows,
               float* big) {
  const int64_t patch = g.patch_size();
  const int64_t channels = g.big_c;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = cols + r * patch;
    ForEachTap(
        g, first + r,
        [&](int64_t at, int64_t dst) {
          float* __restrict out = big + dst;
          const float* __restrict in = row + at;
          for (int64_t c = 0; c < channels; ++c) out[c] += in[c];
        },
        [](int64_t) {});
  }
}

}  // namespace pyae
