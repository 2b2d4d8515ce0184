// What every vdpbf16ps tile shares (conv_bf16.cc's GEMM tile, direct_bf16.cc's gather tile):
// the vectors covering a column block, and the inner loop of pairs of bf16 values broadcast
// against a pair-packed filter. Included after bf16_target.h, so it compiles for the
// AVX512-BF16 target of the file that includes it.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "conv_bf16.h"

namespace pyae {
namespace avx512bf16 {

// The first `lanes` (0 to 16) lanes of a vector.
inline __mmask16 LaneMask(int64_t lanes) {
  return static_cast<__mmask16>(lanes >= 16 ? 0xFFFFu : (1u << lanes) - 1);
}

// The 16-lane vectors that cover a column block `width` columns wide, and the lanes of the
// last one that hold columns (the tiles store only those).
struct BlockVectors {
  int64_t count;
  __mmask16 last;
};

inline BlockVectors VectorsFor(int64_t width) {
  const int64_t count = (width + 15) / 16;
  return {count, LaneMask(width - (count - 1) * 16)};
}

// acc[r][j] += sum over k in [0, pairs) of the pair rows[r][2k, 2k + 2) times vector j of the
// filter's pair row k (`pair_stride` bf16 values from one pair row to the next).
template <int kRows, int kVectors>
inline void AccumulatePairs(const Bf16* const* rows, const Bf16* filter, int64_t pairs,
                            int64_t pair_stride, __m512 (&acc)[kRows][kVectors]) {
  for (int64_t k = 0; k < pairs; ++k, filter += pair_stride) {
    __m512i w[kVectors];
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) w[j] = _mm512_loadu_si512(filter + 32 * j);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      int32_t pair;
      std::memcpy(&pair, rows[r] + 2 * k, sizeof(pair));
      const __m512i broadcast = _mm512_set1_epi32(pair);
#pragma GCC unroll 4
      for (int j = 0; j < kVectors; ++j) {
        acc[r][j] = _mm512_dpbf16_ps(acc[r][j], (__m512bh)broadcast, (__m512bh)w[j]);
      }
    }
  }
}

}  // namespace avx512bf16
}  // namespace pyae
