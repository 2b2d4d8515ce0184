// The output op's bf16 kernels on AVX512-BF16 (output_conv.h), for the shapes
// OutputApplies accepts (the tutorial's two output layers among them); output_dispatch.cc runs
// the float32-compute kernels (output_conv.cc) for the others.
//
// With 1-4 output channels a conv that reduces over the input channels per output value has
// almost no work per register (output_conv.cc: one horizontal sum per output value). Here each
// input pixel's contributions to every tap and output channel, N = kh * kw * out values, are one
// row of a GEMM [pixels, in] x [in, N] on vdpbf16ps (the kernel rounded to bf16, as Keras'
// layer casts it under mixed_bfloat16), and the rows are added into float32 output rows: for
// one kernel row a pixel's kw * out values land next to each other, so each is one masked
// vector add. Pixels whose spans overlap are added in separate passes. The backward rounds
// dpre = dy * f'(y) to bf16 (as Keras' bf16 conv gradients receive it) into rows with the
// output channels padded to an even count: a pixel's taps in one kernel row are then whole
// pairs, so dx is the gather GEMM [pixels, kh * kw * out_pad] x [.., in], and dkernel is
// reduced over pixel pairs: (dpre of pixels w, w + 1) broadcast against their x interleaved
// channel by channel. dbias sums the float32 dpre of each output row once, rows in float64.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "conv_bf16.h"
#include "output_conv.h"

#include "bf16_target.h"  // after every other include

#include "bf16_pair_tile.h"     // compiled for this target: after the pragma
#include "output_activation.h"  // likewise

namespace pyae {
namespace avx512bf16 {
namespace {

// The widest shape the kernels take: a pixel's channels in one vector of 32 bf16, a kernel
// row's span of out channels in one vector of 16 floats, the forward's N in one packed block.
constexpr int64_t kMaxIn = 32;
constexpr int64_t kMaxSpan = 16;

// Output rows per forward task: their input rows' contributions are computed once, except
// the one or two rows a band shares with the next.
constexpr int64_t kForwardBandRows = 32;
// dkernel rows (taps x out channels) accumulated in registers at once: 12 x 2 vectors.
constexpr int kGradGroup = 12;

inline int64_t PaddedOut(int64_t out) { return out + out % 2; }

// Zero pixels the taps reach beyond an output row on either side.
int64_t MarginRight(const ConvGeometry& g) {
  return std::max<int64_t>(0, (g.small_w - 1) * g.stride_w - g.pad_left + g.kernel_w - g.big_w);
}

// Input rows [first, last) whose taps reach output rows [q_first, q_last).
void InputRowsFor(const ConvGeometry& g, int64_t q_first, int64_t q_last, int64_t* first,
                  int64_t* last) {
  const int64_t lowest = q_first + g.pad_top - (g.kernel_h - 1);
  *first = lowest <= 0 ? 0 : (lowest + g.stride_h - 1) / g.stride_h;
  *last = std::min(g.small_h, (q_last - 1 + g.pad_top) / g.stride_h + 1);
}

// Calls fn(std::integral_constant<int, V>) for V = vectors (1-4).
template <typename Fn>
void WithVectors(int64_t vectors, Fn fn) {
  switch (vectors) {
    case 1: fn(std::integral_constant<int, 1>()); break;
    case 2: fn(std::integral_constant<int, 2>()); break;
    case 3: fn(std::integral_constant<int, 3>()); break;
    default: fn(std::integral_constant<int, 4>()); break;
  }
}

// --- forward --------------------------------------------------------------------------------

// contrib[w, 0 .. 16 kVectors) = x pixel w's channels x the packed filter, kRows pixels at a
// time (at most 24 accumulators with the filter row and a broadcast in registers).
template <int kVectors>
void ContributionRow(const Bf16* x_row, int64_t width, int64_t in, const PairPacked& filter,
                     float* contrib) {
  // (AccumulatePairs unrolls at most 8 rows: beyond, the accumulators would live in memory)
  constexpr int kRows = kVectors <= 2 ? 8 : 6;
  constexpr int64_t kLd = 16 * kVectors;
  const int64_t pair_stride = 2 * filter.block_stride(0);
  const int64_t pairs = in / 2;
  auto tile = [&](auto rows_constant, int64_t w) {
    constexpr int kTile = decltype(rows_constant)::value;
    __m512 acc[kTile][kVectors];
    const Bf16* rows[kTile];
#pragma GCC unroll 16
    for (int r = 0; r < kTile; ++r) {
      rows[r] = x_row + (w + r) * in;
#pragma GCC unroll 16
      for (int j = 0; j < kVectors; ++j) acc[r][j] = _mm512_setzero_ps();
    }
    AccumulatePairs<kTile, kVectors>(rows, filter.block(0), pairs, pair_stride, acc);
#pragma GCC unroll 16
    for (int r = 0; r < kTile; ++r) {
#pragma GCC unroll 16
      for (int j = 0; j < kVectors; ++j) {
        _mm512_storeu_ps(contrib + (w + r) * kLd + 16 * j, acc[r][j]);
      }
    }
  };
  int64_t w = 0;
  for (; w + kRows <= width; w += kRows) tile(std::integral_constant<int, kRows>(), w);
  for (; w + 4 <= width; w += 4) tile(std::integral_constant<int, 4>(), w);
  for (; w < width; ++w) tile(std::integral_constant<int, 1>(), w);
}

// The vector a kernel row's span of kw * out floats is added with: 4, 8 or 16 floats.
int64_t SpanVector(const ConvGeometry& g) {
  const int64_t span = g.kernel_w * g.big_c;
  return span <= 4 ? 4 : span <= 8 ? 8 : 16;
}

// Copies of the output rows: pixel w's span is added into copy w % SpanCopies, so pixels of
// one copy are a whole vector apart. Spans that share no value can still share a vector's
// bytes, and a masked load that overlaps a masked store still in flight waits for it
// (measured: most of the forward's time went to such adds when neighbours shared one row).
int64_t SpanCopies(const ConvGeometry& g) {
  const int64_t step = g.stride_w * g.big_c;
  return (SpanVector(g) + step - 1) / step;
}

// Adds kernel row kh's span of every pixel's contributions into output row `row` (margins
// included, so pixel w's span starts at w * stride_w pixels) of copy w % copies (`copy_values`
// floats apart), kVector floats at a time.
template <int kVector>
void AddSpans(const ConvGeometry& g, const float* contrib, int64_t ld, int64_t kh,
              int64_t copies, int64_t copy_values, float* row) {
  const int64_t out = g.big_c;
  const int64_t span = g.kernel_w * out;
  const __mmask16 mask = LaneMask(span);
  for (int64_t w = 0, copy = 0; w < g.small_w; ++w, copy = copy + 1 == copies ? 0 : copy + 1) {
    float* to = row + copy * copy_values + w * g.stride_w * out;
    const float* from = contrib + w * ld + kh * span;
    if constexpr (kVector == 4) {
      const __m128 add = _mm_maskz_loadu_ps(static_cast<__mmask8>(mask), from);
      _mm_mask_storeu_ps(to, static_cast<__mmask8>(mask),
                         _mm_add_ps(_mm_maskz_loadu_ps(static_cast<__mmask8>(mask), to), add));
    } else if constexpr (kVector == 8) {
      const __m256 add = _mm256_maskz_loadu_ps(static_cast<__mmask8>(mask), from);
      _mm256_mask_storeu_ps(
          to, static_cast<__mmask8>(mask),
          _mm256_add_ps(_mm256_maskz_loadu_ps(static_cast<__mmask8>(mask), to), add));
    } else {
      const __m512 add = _mm512_maskz_loadu_ps(mask, from);
      _mm512_mask_storeu_ps(to, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, to), add));
    }
  }
}

void AddSpans(const ConvGeometry& g, const float* contrib, int64_t ld, int64_t kh,
              int64_t copies, int64_t copy_values, float* row) {
  switch (SpanVector(g)) {
    case 4: AddSpans<4>(g, contrib, ld, kh, copies, copy_values, row); break;
    case 8: AddSpans<8>(g, contrib, ld, kh, copies, copy_values, row); break;
    default: AddSpans<16>(g, contrib, ld, kh, copies, copy_values, row); break;
  }
}

template <int kVectors>
void ForwardImpl(const OutputConvParams& params, const Runtime& runtime, const Bf16* x,
                 const float* kernel, const float* bias, Bf16* y) {
  const ConvGeometry& g = params.geometry;
  const int64_t in = g.small_c, out = g.big_c;
  const int64_t taps = g.kernel_h * g.kernel_w * out;
  PairPacked filter;  // [in, taps]: column (kh, kw, o) is the kernel's row
  filter.Fill(in, taps, [&](int64_t c, int64_t j) { return kernel[j * in + c]; });
  const int64_t row_values = (g.pad_left + g.big_w + MarginRight(g)) * out;
  const int64_t bands = (g.big_h + kForwardBandRows - 1) / kForwardBandRows;
  const int64_t copies = SpanCopies(g);
  runtime.run_tasks(g.batch * bands, [&](int64_t task) {
    const int64_t n = task / bands;
    const int64_t q_first = task % bands * kForwardBandRows;
    const int64_t q_last = std::min(g.big_h, q_first + kForwardBandRows);
    // The band's output rows, SpanCopies copies of them (the first starts at the bias).
    const int64_t copy_values = (q_last - q_first) * row_values;
    std::vector<float> rows(copies * copy_values, 0.0f);
    for (int64_t i = 0; i < copy_values; i += out) {
      for (int64_t o = 0; o < out; ++o) rows[i + o] = bias[o];  // (a memmove call per pixel)
    }
    std::vector<float> contrib(g.small_w * 16 * kVectors);
    int64_t p_first, p_last;
    InputRowsFor(g, q_first, q_last, &p_first, &p_last);
    for (int64_t p = p_first; p < p_last; ++p) {
      ContributionRow<kVectors>(x + (n * g.small_h + p) * g.small_w * in, g.small_w, in, filter,
                                contrib.data());
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        const int64_t q = p * g.stride_h - g.pad_top + kh;
        if (q < q_first || q >= q_last) continue;
        AddSpans(g, contrib.data(), 16 * kVectors, kh, copies, copy_values,
                 rows.data() + (q - q_first) * row_values);
      }
    }
    for (int64_t c = 1; c < copies; ++c) {
      const float* copy = rows.data() + c * copy_values;
      for (int64_t i = 0; i < copy_values; ++i) rows[i] += copy[i];
    }
    for (int64_t q = q_first; q < q_last; ++q) {
      float* z = rows.data() + (q - q_first) * row_values + g.pad_left * out;
      Activate(z, g.big_w * out, params.activation);
      ToBf16(z, g.big_w * out, y + (n * g.big_h + q) * g.big_w * out);
    }
  });
}

// --- backward -------------------------------------------------------------------------------

// dpre of one output row: float32 [big_w * out] (dbias sums these), and rounded to bf16 with
// the out channels padded to out_pad and `pad_left` / MarginRight zero pixels either side.
struct DpreRow {
  int64_t image = -1, q = -1;  // which row it holds
  std::vector<float> values, y_values;
  std::vector<Bf16> padded;
};

// dy * f'(y) for a row of `count` values, from y (the forward's output), in float32; `scratch`
// holds y's.
void PreActivation(const Bf16* dy, const Bf16* y, int64_t count, OutputActivation activation,
                   float* dpre, std::vector<float>* scratch) {
  ToFloat(dy, count, dpre);
  if (activation != OutputActivation::kSigmoid) return;
  scratch->resize(count);
  float* y_values = scratch->data();
  ToFloat(y, count, y_values);
  for (int64_t i = 0; i < count; ++i) dpre[i] *= y_values[i] * (1.0f - y_values[i]);
}

// The float32 row `from` [pixels * out] as bf16 pixels of out_pad values (the pad zero).
void PadChannels(const float* from, int64_t pixels, int64_t out, int64_t out_pad, Bf16* to) {
  if (out == out_pad) {
    ToBf16(from, pixels * out, to);
    return;
  }
  if (16 % out_pad == 0) {  // vpexpandd: 16 / out_pad pixels per vector
    __mmask16 expand = 0;
    for (int l = 0; l < 16; ++l) expand |= static_cast<__mmask16>((l % out_pad < out) << l);
    const int64_t per_vector = 16 / out_pad;
    for (int64_t p = 0; p < pixels; p += per_vector) {
      const int64_t count = std::min(per_vector, pixels - p);
      const __m512 packed = _mm512_maskz_loadu_ps(LaneMask(count * out), from + p * out);
      const __m512 spread = _mm512_maskz_expand_ps(expand, packed);
      _mm256_mask_storeu_epi16(to + p * out_pad, LaneMask(count * out_pad),
                               (__m256i)_mm512_cvtneps_pbh(spread));
    }
    return;
  }
  for (int64_t p = 0; p < pixels; ++p) {
    for (int64_t o = 0; o < out_pad; ++o) {
      to[p * out_pad + o] = o < out ? RoundToBf16(from[p * out + o]) : 0;
    }
  }
}

// Per-channel float32 sums of a row of pixels x channels values, added into sums (float64).
// Lane l of vector v holds channel (16 v + l) % channels; the pattern repeats every `period`
// vectors, so `period` accumulators keep every lane on one channel.
void AddChannelSums(const float* row, int64_t pixels, int64_t channels, double* sums) {
  const int64_t period = channels / std::gcd<int64_t>(16, channels);
  const int64_t count = pixels * channels;
  __m512 acc[kMaxSpan];
  for (int64_t a = 0; a < period; ++a) acc[a] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 * period <= count; i += 16 * period) {
    for (int64_t a = 0; a < period; ++a) {
      acc[a] = _mm512_add_ps(acc[a], _mm512_loadu_ps(row + i + 16 * a));
    }
  }
  float row_sums[kMaxSpan] = {};
  float lanes[16];
  int64_t channel = 0;  // of the next value (a wrapping count: no division per value)
  for (int64_t a = 0; a < period; ++a) {
    _mm512_storeu_ps(lanes, acc[a]);
    for (int l = 0; l < 16; ++l, channel = channel + 1 == channels ? 0 : channel + 1) {
      row_sums[channel] += lanes[l];
    }
  }
  // i is a multiple of 16 period, so of channels: the rest starts at channel 0.
  for (channel = 0; i < count; ++i, channel = channel + 1 == channels ? 0 : channel + 1) {
    row_sums[channel] += row[i];
  }
  for (int64_t c = 0; c < channels; ++c) sums[c] += row_sums[c];
}

class Backward {
 public:
  Backward(const OutputConvParams& params, const Bf16* dy, const Bf16* y, const Bf16* x,
           const float* kernel)
      : p_(params), g_(params.geometry), dy_(dy), y_(y), x_(x) {
    out_ = g_.big_c;
    out_pad_ = PaddedOut(out_);
    span_ = g_.kernel_w * out_pad_;
    taps_ = g_.kernel_h * span_;
    row_pixels_ = g_.pad_left + g_.big_w + MarginRight(g_);
    filter_.Fill(taps_, g_.small_c, [&](int64_t r, int64_t c) {
      const int64_t o = r % out_pad_;
      return o < out_ ? kernel[((r / out_pad_) * out_ + o) * g_.small_c + c] : 0.0f;
    });
    zero_row_.assign(row_pixels_ * out_pad_, 0);
  }

  int64_t taps() const { return taps_; }

  // dx (unless null), and the partial dkernel [taps][kMaxIn] and dbias of input rows
  // [first, last).
  template <int kVectors>
  void Rows(int64_t first, int64_t last, Bf16* dx, float* dkernel, double* dbias) const {
    std::vector<DpreRow> cache(g_.kernel_h);
    std::vector<Bf16> pairs(((g_.small_w + 1) / 2) * taps_ * 2);
    std::vector<const Bf16*> rows(g_.kernel_h);
    for (int64_t r = first; r < last; ++r) {
      const int64_t n = r / g_.small_h, ph = r % g_.small_h;
      // dbias: the output rows this input row owns ([ph * stride, (ph + 1) * stride): the
      // input rows share the output rows out exactly). First, so that the rows the taps read
      // stay in the cache below.
      for (int64_t q = ph * g_.stride_h; q < std::min(g_.big_h, (ph + 1) * g_.stride_h); ++q) {
        AddChannelSums(Row(n, q, &cache)->values.data(), g_.big_w, out_, dbias);
      }
      for (int64_t kh = 0; kh < g_.kernel_h; ++kh) {  // distinct q, so distinct cache slots
        const int64_t q = ph * g_.stride_h - g_.pad_top + kh;
        rows[kh] = q < 0 || q >= g_.big_h ? zero_row_.data() : Row(n, q, &cache)->padded.data();
      }
      const Bf16* x_row = x_ + r * g_.small_w * g_.small_c;
      if (dx != nullptr) DxRow<kVectors>(rows.data(), dx + r * g_.small_w * g_.small_c);
      PixelPairs(rows.data(), pairs.data());
      DkernelRow<kVectors>(x_row, pairs.data(), dkernel);
    }
  }

 private:
  // Output row q of image n, from the cache (slot q % kernel_h) or computed into it.
  const DpreRow* Row(int64_t n, int64_t q, std::vector<DpreRow>* cache) const {
    DpreRow& row = (*cache)[q % g_.kernel_h];
    if (row.image == n && row.q == q) return &row;
    row.image = n;
    row.q = q;
    const int64_t count = g_.big_w * out_;
    row.values.resize(count);
    if (row.padded.empty()) row.padded.assign(row_pixels_ * out_pad_, 0);  // margins stay 0
    const int64_t at = (n * g_.big_h + q) * count;
    PreActivation(dy_ + at, y_ + at, count, p_.activation, row.values.data(), &row.y_values);
    PadChannels(row.values.data(), g_.big_w, out_, out_pad_,
                row.padded.data() + g_.pad_left * out_pad_);
    return &row;
  }

  // dx of one input row: pixel w's taps in kernel row kh are the span_ values of rows[kh]
  // from pixel w * stride_w (margin included), whole pairs.
  template <int kVectors>
  void DxRow(const Bf16* const* rows, Bf16* dx_row) const {
    const int64_t in = g_.small_c;
    const int64_t pair_stride = 2 * filter_.block_stride(0);
    const __mmask16 last = LaneMask(in - 16 * (kVectors - 1));
    auto tile = [&](auto rows_constant, int64_t w) {
      constexpr int kTile = decltype(rows_constant)::value;
      __m512 acc[kTile][kVectors];
#pragma GCC unroll 16
      for (int t = 0; t < kTile; ++t) {
#pragma GCC unroll 16
        for (int j = 0; j < kVectors; ++j) acc[t][j] = _mm512_setzero_ps();
      }
      for (int64_t kh = 0; kh < g_.kernel_h; ++kh) {
        const Bf16* starts[kTile];
#pragma GCC unroll 16
        for (int t = 0; t < kTile; ++t) starts[t] = rows[kh] + (w + t) * g_.stride_w * out_pad_;
        AccumulatePairs<kTile, kVectors>(starts, filter_.block(0) + kh * (span_ / 2) * pair_stride,
                                         span_ / 2, pair_stride, acc);
      }
#pragma GCC unroll 16
      for (int t = 0; t < kTile; ++t) {
#pragma GCC unroll 16
        for (int j = 0; j < kVectors; ++j) {
          _mm256_mask_storeu_epi16(dx_row + (w + t) * in + 16 * j,
                                   j + 1 == kVectors ? last : 0xFFFF,
                                   (__m256i)_mm512_cvtneps_pbh(acc[t][j]));
        }
      }
    };
    constexpr int kRows = 8;
    int64_t w = 0;
    for (; w + kRows <= g_.small_w; w += kRows) tile(std::integral_constant<int, kRows>(), w);
    for (; w + 4 <= g_.small_w; w += 4) tile(std::integral_constant<int, 4>(), w);
    for (; w < g_.small_w; ++w) tile(std::integral_constant<int, 1>(), w);
  }

  // pairs[wp][j] = (dpre tap j of pixel 2 wp, of pixel 2 wp + 1) for every tap j (kh, kw, o):
  // the broadcast operand of dkernel's reduction over pixel pairs (a missing odd pixel is 0).
  void PixelPairs(const Bf16* const* rows, Bf16* pairs) const {
    const __m512i interleave = InterleaveIndex(0);
    const __mmask32 span = static_cast<__mmask32>((1ull << span_) - 1);
    const __mmask32 both = static_cast<__mmask32>((1ull << (2 * span_)) - 1);
    for (int64_t wp = 0; 2 * wp < g_.small_w; ++wp) {
      const bool odd = 2 * wp + 1 < g_.small_w;
      for (int64_t kh = 0; kh < g_.kernel_h; ++kh) {
        const Bf16* first = rows[kh] + 2 * wp * g_.stride_w * out_pad_;
        const __m512i a = _mm512_maskz_loadu_epi16(span, first);
        const __m512i b =
            _mm512_maskz_loadu_epi16(odd ? span : 0, first + g_.stride_w * out_pad_);
        _mm512_mask_storeu_epi16(pairs + (wp * taps_ + kh * span_) * 2, both,
                                 _mm512_permutex2var_epi16(a, interleave, b));
      }
    }
  }

  // dkernel[j][c] += sum over pixel pairs of pairs[wp][j] . (x[2 wp][c], x[2 wp + 1][c]), in
  // groups of kGradGroup taps (kGradGroup x kVectors accumulators).
  template <int kVectors>
  void DkernelRow(const Bf16* x_row, const Bf16* pairs, float* dkernel) const {
    int64_t j = 0;
    for (; j + kGradGroup <= taps_; j += kGradGroup) {
      DkernelGroup<kGradGroup, kVectors>(x_row, pairs, j, dkernel);
    }
    // taps_ is even (out_pad is): the rest is 2-10 taps.
    switch (taps_ - j) {
      case 2: DkernelGroup<2, kVectors>(x_row, pairs, j, dkernel); break;
      case 4: DkernelGroup<4, kVectors>(x_row, pairs, j, dkernel); break;
      case 6: DkernelGroup<6, kVectors>(x_row, pairs, j, dkernel); break;
      case 8: DkernelGroup<8, kVectors>(x_row, pairs, j, dkernel); break;
      case 10: DkernelGroup<10, kVectors>(x_row, pairs, j, dkernel); break;
      default: break;
    }
  }

  template <int kTaps, int kVectors>
  void DkernelGroup(const Bf16* x_row, const Bf16* pairs, int64_t j0, float* dkernel) const {
    const int64_t in = g_.small_c, width = g_.small_w, taps = taps_;
    const __mmask32 channels = static_cast<__mmask32>((1ull << in) - 1);
    __m512i interleave[kVectors];
#pragma GCC unroll 16
    for (int v = 0; v < kVectors; ++v) interleave[v] = InterleaveIndex(16 * v);
    __m512 acc[kTaps][kVectors];
#pragma GCC unroll 16
    for (int t = 0; t < kTaps; ++t) {
#pragma GCC unroll 16
      for (int v = 0; v < kVectors; ++v) acc[t][v] = _mm512_setzero_ps();
    }
    for (int64_t wp = 0; 2 * wp < width; ++wp) {
      const bool odd = 2 * wp + 1 < width;
      const __m512i a = _mm512_maskz_loadu_epi16(channels, x_row + 2 * wp * in);
      const __m512i b = _mm512_maskz_loadu_epi16(odd ? channels : 0, x_row + (2 * wp + 1) * in);
      __m512i xv[kVectors];
#pragma GCC unroll 16
      for (int v = 0; v < kVectors; ++v) xv[v] = _mm512_permutex2var_epi16(a, interleave[v], b);
      const Bf16* tap_pairs = pairs + (wp * taps + j0) * 2;
#pragma GCC unroll 16
      for (int t = 0; t < kTaps; ++t) {
        int32_t pair;
        std::memcpy(&pair, tap_pairs + 2 * t, sizeof(pair));
        const __m512bh broadcast = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 16
        for (int v = 0; v < kVectors; ++v) {
          acc[t][v] = _mm512_dpbf16_ps(acc[t][v], broadcast, (__m512bh)xv[v]);
        }
      }
    }
#pragma GCC unroll 16
    for (int t = 0; t < kTaps; ++t) {
#pragma GCC unroll 16
      for (int v = 0; v < kVectors; ++v) {
        float* to = dkernel + (j0 + t) * kMaxIn + 16 * v;
        _mm512_storeu_ps(to, _mm512_add_ps(_mm512_loadu_ps(to), acc[t][v]));
      }
    }
  }

  // Lanes 2i and 2i + 1 take value first + i of a and of b (vpermt2w's index).
  static __m512i InterleaveIndex(int first) {
    alignas(64) int16_t index[32];
    for (int i = 0; i < 16; ++i) {
      index[2 * i] = static_cast<int16_t>(first + i);
      index[2 * i + 1] = static_cast<int16_t>(32 + first + i);
    }
    return _mm512_load_si512(index);
  }

  const OutputConvParams& p_;
  const ConvGeometry& g_;
  const Bf16 *dy_, *y_, *x_;
  int64_t out_, out_pad_, span_, taps_, row_pixels_;
  PairPacked filter_;
  std::vector<Bf16> zero_row_;
};

template <int kVectors>
void BackwardImpl(const OutputConvParams& params, const Runtime& runtime, const Bf16* dy,
                  const Bf16* y, const Bf16* x, const float* kernel, Bf16* dx, float* dkernel,
                  float* dbias) {
  const ConvGeometry& g = params.geometry;
  const Backward backward(params, dy, y, x, kernel);
  const int64_t input_rows = g.batch * g.small_h;
  const int64_t num_tasks = std::min<int64_t>(input_rows, 8 * std::max(1, runtime.num_threads));
  std::vector<std::vector<float>> dkernels(num_tasks);
  std::vector<std::vector<double>> dbiases(num_tasks);
  runtime.run_tasks(num_tasks, [&](int64_t task) {
    dkernels[task].assign(backward.taps() * kMaxIn, 0.0f);
    dbiases[task].assign(g.big_c, 0.0);
    backward.Rows<kVectors>(input_rows * task / num_tasks, input_rows * (task + 1) / num_tasks,
                            dx, dkernels[task].data(), dbiases[task].data());
  });
  const int64_t out = g.big_c, out_pad = PaddedOut(out), in = g.small_c;
  for (int64_t t = 0; t < g.kernel_h * g.kernel_w; ++t) {
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t c = 0; c < in; ++c) {
        float sum = 0.0f;
        for (const auto& part : dkernels) sum += part[(t * out_pad + o) * kMaxIn + c];
        dkernel[(t * out + o) * in + c] = sum;
      }
    }
  }
  for (int64_t o = 0; o < out; ++o) {
    double sum = 0.0;
    for (const auto& part : dbiases) sum += part[o];
    dbias[o] = static_cast<float>(sum);
  }
}

}  // namespace

bool OutputApplies(const ConvGeometry& g) {
  return g.small_c % 2 == 0 && g.small_c <= kMaxIn &&
         g.kernel_w * PaddedOut(g.big_c) <= kMaxSpan &&
         g.kernel_h * g.kernel_w * g.big_c <= PairPacked::kBlockCols;
}

void OutputForward(const OutputConvParams& params, const Runtime& runtime, const Bf16* x,
                   const float* kernel, const float* bias, Bf16* y) {
  const ConvGeometry& g = params.geometry;
  const int64_t vectors = (g.kernel_h * g.kernel_w * g.big_c + 15) / 16;
  WithVectors(vectors, [&](auto v) {
    ForwardImpl<decltype(v)::value>(params, runtime, x, kernel, bias, y);
  });
}

void OutputBackward(const OutputConvParams& params, const Runtime& runtime, const Bf16* dy,
                    const Bf16* y, const Bf16* x, const float* kernel, Bf16* dx, float* dkernel,
                    float* dbias) {
  if (params.geometry.small_c <= 16) {
    BackwardImpl<1>(params, runtime, dy, y, x, kernel, dx, dkernel, dbias);
  } else {
    BackwardImpl<2>(params, runtime, dy, y, x, kernel, dx, dkernel, dbias);
  }
}

}  // namespace avx512bf16
}  // namespace pyae

#include "bf16_target_end.h"
