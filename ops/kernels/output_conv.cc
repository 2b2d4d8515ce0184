// The output op's kernels (output_conv.h), compiled once per path into pyae::PYAE_ISA_NS
// (isa_target.h): vectors over the input channels (isa_simd.h: AVX-512, AVX2, or on the generic
// path an 8-float array the compiler vectorises for the baseline).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "bf16.h"
#include "output_conv.h"

#if defined(PYAE_ISA_AVX512) || defined(PYAE_ISA_AVX2)
#include <immintrin.h>
#endif

#include "isa_target.h"  // after every other include

#include "isa_simd.h"  // compiled for this path: after the pragma
#include "output_activation.h"  // likewise

namespace pyae {
namespace PYAE_ISA_NS {
namespace {

// One value to and from its storage type (bf16.h's conversions), for the templates.
inline float ToFloat(float value) { return value; }
inline float ToFloat(Bf16 value) { return WidenBf16(value); }
inline void FromFloat(float value, float* to) { *to = value; }
inline void FromFloat(float value, Bf16* to) { *to = RoundToBf16(value); }

using Vec = Simd::Vec;
constexpr int kLanes = Simd::kLanes;

// The first `count` (< kLanes or all) channels at p, the rest zero.
template <typename T>
Vec LoadChannels(const T* p, int64_t count) {
  if (count >= kLanes) return Simd::Load(p);
  float part[kLanes] = {};
  for (int64_t i = 0; i < count; ++i) part[i] = ToFloat(p[i]);
  return Simd::Load(part);
}

template <typename T>
void StoreChannels(T* p, int64_t count, Vec v) {
  if (count >= kLanes) {
    Simd::Store(p, v);
    return;
  }
  float part[kLanes];
  Simd::Store(part, v);
  for (int64_t i = 0; i < count; ++i) FromFloat(part[i], p + i);
}


// Output pixels per register block: the forward keeps kForwardPixels x (up to 4) out channels
// of accumulators, the backward kBackwardPixels pixels' x and dx vectors, in registers.
#if defined(PYAE_ISA_AVX512)
constexpr int kForwardPixels = 4;
constexpr int kBackwardPixels = 8;
#elif defined(PYAE_ISA_AVX2)
constexpr int kForwardPixels = 3;
constexpr int kBackwardPixels = 4;
#else
constexpr int kForwardPixels = 2;
constexpr int kBackwardPixels = 2;
#endif

// One kernel tap along an axis and the offset it pairs: the input row an output row gathers
// from, or the output row an input row scatters to.
struct Tap {
  int32_t k;
  int32_t at;
};

// For every position along one axis, its taps (position i's are taps[begin[i]] ..
// taps[begin[i + 1]]).
struct AxisTaps {
  std::vector<int32_t> begin;
  std::vector<Tap> taps;
  const Tap* first(int64_t i) const { return taps.data() + begin[i]; }
  const Tap* last(int64_t i) const { return taps.data() + begin[i + 1]; }
};

// Output row q takes input row p through tap k where q = p * stride - pad + k.
AxisTaps OutputTaps(int64_t big, int64_t small, int64_t kernel, int64_t stride, int64_t pad) {
  AxisTaps axis;
  for (int64_t q = 0; q < big; ++q) {
    axis.begin.push_back(static_cast<int32_t>(axis.taps.size()));
    for (int64_t k = 0; k < kernel; ++k) {
      const int64_t shifted = q + pad - k;
      if (shifted >= 0 && shifted % stride == 0 && shifted / stride < small) {
        axis.taps.push_back({static_cast<int32_t>(k), static_cast<int32_t>(shifted / stride)});
      }
    }
  }
  axis.begin.push_back(static_cast<int32_t>(axis.taps.size()));
  return axis;
}

AxisTaps InputTaps(int64_t big, int64_t small, int64_t kernel, int64_t stride, int64_t pad) {
  AxisTaps axis;
  for (int64_t p = 0; p < small; ++p) {
    axis.begin.push_back(static_cast<int32_t>(axis.taps.size()));
    for (int64_t k = 0; k < kernel; ++k) {
      const int64_t q = p * stride - pad + k;
      if (q >= 0 && q < big) axis.taps.push_back({static_cast<int32_t>(k), static_cast<int32_t>(q)});
    }
  }
  axis.begin.push_back(static_cast<int32_t>(axis.taps.size()));
  return axis;
}

// Along w the kernels read zero-padded rows, so every column tap is valid at every pixel and
// the inner loops have no edge cases. Output column q = m * stride + phase gathers input column
// m + shift through tap k, shift = (phase + pad - k) / stride, for the k that divide evenly.
struct ColumnTap {
  int32_t k;
  int32_t shift;
};

struct ColumnPhases {
  std::vector<std::vector<ColumnTap>> taps;  // per phase
  int64_t margin_left = 0, margin_right = 0;  // zero pixels the shifts reach beyond the row
};

ColumnPhases MakeColumnPhases(const ConvGeometry& g) {
  ColumnPhases phases;
  phases.taps.resize(g.stride_w);
  for (int64_t phase = 0; phase < g.stride_w; ++phase) {
    for (int64_t k = 0; k < g.kernel_w; ++k) {
      const int64_t shifted = phase + g.pad_left - k;
      if (shifted % g.stride_w != 0) continue;
      const int64_t shift = shifted / g.stride_w;
      phases.taps[phase].push_back({static_cast<int32_t>(k), static_cast<int32_t>(shift)});
      phases.margin_left = std::max(phases.margin_left, -shift);
      phases.margin_right = std::max(phases.margin_right, shift);
    }
  }
  return phases;
}

// Channels padded to whole vectors.
inline int64_t PaddedChannels(int64_t channels) { return (channels + kLanes - 1) / kLanes * kLanes; }

// The kernel re-laid out with each (tap, out) row of in-channels padded to whole vectors.
struct PaddedKernel {
  PaddedKernel(const float* kernel, int64_t rows, int64_t channels)
      : stride(PaddedChannels(channels)), values(rows * stride, 0.0f) {
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(kernel + r * channels, kernel + (r + 1) * channels, values.data() + r * stride);
    }
  }
  const float* row(int64_t r) const { return values.data() + r * stride; }
  int64_t stride;
  std::vector<float> values;
};

// Rows of an image in float32, channels padded to whole vectors and `margin_left` /
// `margin_right` zero pixels on either side: pixel w of row r is at(r) + (w + margin_left) *
// channels. float32 rows that need no padding are read in place.
struct PaddedRows {
  template <typename T>
  void Fill(const T* image, int64_t width, int64_t in, int64_t first, int64_t last, int64_t left,
            int64_t right) {
    first_row = first;
    margin_left = left;
    channels = PaddedChannels(in);
    row_values = (width + left + right) * channels;
    if (std::is_same_v<T, float> && channels == in && left == 0 && right == 0) {
      rows = reinterpret_cast<const float*>(image) + first * row_values;
      return;
    }
    values.resize((last - first) * row_values);
    for (int64_t r = first; r < last; ++r) {
      float* to = values.data() + (r - first) * row_values;
      std::fill(to, to + left * channels, 0.0f);
      for (int64_t w = 0; w < width; ++w) {
        const T* from = image + (r * width + w) * in;
        float* pixel = to + (w + left) * channels;
        for (int64_t c = 0; c < in; ++c) pixel[c] = ToFloat(from[c]);
        std::fill(pixel + in, pixel + channels, 0.0f);
      }
      std::fill(to + (width + left) * channels, to + row_values, 0.0f);
    }
    rows = values.data();
  }
  const float* at(int64_t row) const { return rows + (row - first_row) * row_values; }
  int64_t first_row = 0, margin_left = 0, channels = 0, row_values = 0;
  const float* rows = nullptr;
  std::vector<float> values;
};

// A float32 row stored as T, whole vectors where they fit.
template <typename T>
void StoreRow(const float* from, int64_t count, T* to) {
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) Simd::Store(to + i, Simd::Load(from + i));
  if (i < count) StoreChannels(to + i, count - i, LoadChannels(from + i, count - i));
}

// What every task of one call shares.
struct Setup {
  Setup(const OutputConvParams& params, const float* kernel)
      : g(params.geometry),
        activation(params.activation),
        out(g.big_c),
        in(g.small_c),
        weights(kernel, g.kernel_h * g.kernel_w * g.big_c, g.small_c) {}
  const ConvGeometry& g;
  OutputActivation activation;
  int64_t out, in;
  PaddedKernel weights;
};

// --- forward --------------------------------------------------------------------------------

// Pre-activations of kPixels output pixels of one phase (columns (m + i) * stride + phase) for
// out channels [o0, o0 + kOut) of one output row: kernel rows in registers per tap and vector,
// one accumulator per pixel and out channel, one horizontal sum each at the end.
template <int kPixels, int kOut>
void ForwardBlock(const Setup& s, const PaddedRows& x_rows, const Tap* rows_first,
                  const Tap* rows_last, const std::vector<ColumnTap>& cols, const float* bias,
                  int64_t m, int64_t phase, int64_t o0, float* z_row) {
  Vec acc[kPixels][kOut];
  for (auto& pixel : acc) {
    for (Vec& v : pixel) v = Simd::Zero();
  }
  const int64_t channels = x_rows.channels;
  for (const Tap* row = rows_first; row != rows_last; ++row) {
    const float* x_row = x_rows.at(row->at) + (m + x_rows.margin_left) * channels;
    for (const ColumnTap& col : cols) {
      const float* x_first = x_row + col.shift * channels;
      const float* w = s.weights.row((row->k * s.g.kernel_w + col.k) * s.out + o0);
      for (int64_t c = 0; c < channels; c += kLanes) {
        Vec wv[kOut];
        for (int j = 0; j < kOut; ++j) wv[j] = Simd::Load(w + j * s.weights.stride + c);
        for (int i = 0; i < kPixels; ++i) {
          const Vec xv = Simd::Load(x_first + i * channels + c);
          for (int j = 0; j < kOut; ++j) acc[i][j] = Simd::Fmadd(xv, wv[j], acc[i][j]);
        }
      }
    }
  }
  for (int i = 0; i < kPixels; ++i) {
    float* z = z_row + ((m + i) * s.g.stride_w + phase) * s.out + o0;
    for (int j = 0; j < kOut; ++j) z[j] = Simd::Sum(acc[i][j]) + bias[o0 + j];
  }
}

template <int kOut>
void ForwardPhase(const Setup& s, const PaddedRows& x_rows, const Tap* rows_first,
                  const Tap* rows_last, const std::vector<ColumnTap>& cols, const float* bias,
                  int64_t phase, int64_t o0, float* z_row) {
  int64_t m = 0;
  for (; m + kForwardPixels <= s.g.small_w; m += kForwardPixels) {
    ForwardBlock<kForwardPixels, kOut>(s, x_rows, rows_first, rows_last, cols, bias, m, phase,
                                       o0, z_row);
  }
  for (; m < s.g.small_w; ++m) {
    ForwardBlock<1, kOut>(s, x_rows, rows_first, rows_last, cols, bias, m, phase, o0, z_row);
  }
}

constexpr int64_t kForwardBandRows = 8;  // output rows per task: their input rows padded once

template <typename T>
void Forward(const OutputConvParams& params, const Runtime& runtime, const T* x,
             const float* kernel, const float* bias, T* y) {
  const Setup s(params, kernel);
  const ConvGeometry& g = s.g;
  const AxisTaps rows = OutputTaps(g.big_h, g.small_h, g.kernel_h, g.stride_h, g.pad_top);
  const ColumnPhases phases = MakeColumnPhases(g);
  const int64_t bands = (g.big_h + kForwardBandRows - 1) / kForwardBandRows;
  runtime.run_tasks(g.batch * bands, [&](int64_t task) {
    const int64_t n = task / bands;
    const int64_t first = task % bands * kForwardBandRows;
    const int64_t last = std::min(g.big_h, first + kForwardBandRows);
    // The band's input rows, padded (the taps of an output row are in increasing input rows
    // for increasing output rows).
    int64_t x_first = g.small_h, x_last = 0;
    for (int64_t qh = first; qh < last; ++qh) {
      for (const Tap* row = rows.first(qh); row != rows.last(qh); ++row) {
        x_first = std::min<int64_t>(x_first, row->at);
        x_last = std::max<int64_t>(x_last, row->at + 1);
      }
    }
    PaddedRows x_rows;
    x_rows.Fill(x + n * g.small_pixels() * s.in, g.small_w, s.in, std::min(x_first, x_last),
                x_last, phases.margin_left, phases.margin_right);
    std::vector<float> z_row(g.big_w * s.out);
    for (int64_t qh = first; qh < last; ++qh) {
      for (int64_t phase = 0; phase < g.stride_w; ++phase) {
        for (int64_t o0 = 0; o0 < s.out; o0 += 4) {
          const auto& cols = phases.taps[phase];
          switch (std::min<int64_t>(4, s.out - o0)) {
            case 1: ForwardPhase<1>(s, x_rows, rows.first(qh), rows.last(qh), cols, bias, phase, o0, z_row.data()); break;
            case 2: ForwardPhase<2>(s, x_rows, rows.first(qh), rows.last(qh), cols, bias, phase, o0, z_row.data()); break;
            case 3: ForwardPhase<3>(s, x_rows, rows.first(qh), rows.last(qh), cols, bias, phase, o0, z_row.data()); break;
            default: ForwardPhase<4>(s, x_rows, rows.first(qh), rows.last(qh), cols, bias, phase, o0, z_row.data()); break;
          }
        }
      }
      Activate(z_row.data(), z_row.size(), s.activation);
      StoreRow(z_row.data(), z_row.size(), y + ((n * g.big_h + qh) * g.big_w) * s.out);
    }
  });
}

// --- backward -------------------------------------------------------------------------------

// One task's partial sums of dkernel (rows of the padded kernel layout) and dbias.
struct Partials {
  std::vector<float> dkernel;
  std::vector<double> dbias;
};

// dy * f'(y) of output rows [first, last) of one image, float32, zero-padded along w by
// `margin_left` / `margin_right` pixels so every column tap of every input pixel is valid:
// pixel q of row r at (r - first) * row_values + (q + margin_left) * out.
struct PreActivationRows {
  template <typename T>
  void Fill(const Setup& s, const T* dy_image, const T* y_image, int64_t first_row,
            int64_t last_row, int64_t left, int64_t right) {
    first = first_row;
    margin_left = left;
    row_values = (s.g.big_w + left + right) * s.out;
    values.resize((last_row - first_row) * row_values);
    const int64_t width = s.g.big_w * s.out;
    for (int64_t r = first_row; r < last_row; ++r) {
      const T* dy = dy_image + r * width;
      const T* y = y_image + r * width;
      float* row = values.data() + (r - first_row) * row_values;
      std::fill(row, row + left * s.out, 0.0f);
      std::fill(row + left * s.out + width, row + row_values, 0.0f);
      float* to = row + left * s.out;
      if (s.activation == OutputActivation::kLinear) {
        for (int64_t i = 0; i < width; ++i) to[i] = ToFloat(dy[i]);
      } else {
        for (int64_t i = 0; i < width; ++i) {
          const float value = ToFloat(y[i]);
          to[i] = ToFloat(dy[i]) * value * (1.0f - value);
        }
      }
    }
  }
  const float* at(int64_t row) const {
    return values.data() + (row - first) * row_values;
  }
  int64_t first = 0, margin_left = 0, row_values = 0;
  std::vector<float> values;
};

// dx of kPixels input pixels (columns pw .. pw + kPixels - 1 of one row) for the vector of
// channels at c, and their terms of dkernel: per tap and out channel the kernel vector is
// loaded once and each pixel's dpre broadcast against it (dx) and against its x (dkernel).
template <int kPixels, typename T>
void BackwardBlock(const Setup& s, const PaddedRows& x_rows, const PreActivationRows& dpre,
                   const Tap* rows_first, const Tap* rows_last, int64_t ph, int64_t pw,
                   int64_t c, float* dkernel, T* dx_row) {
  const ConvGeometry& g = s.g;
  const int64_t channels = x_rows.channels;
  const float* x_first = x_rows.at(ph) + (pw + x_rows.margin_left) * channels + c;
  Vec xv[kPixels], dxv[kPixels];
  for (int i = 0; i < kPixels; ++i) {
    xv[i] = Simd::Load(x_first + i * channels);
    dxv[i] = Simd::Zero();
  }
  const int64_t pixel_step = g.stride_w * s.out;  // between consecutive pixels' output pixels
  for (const Tap* row = rows_first; row != rows_last; ++row) {
    const float* dpre_row = dpre.at(row->at);
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      // Output column of pixel pw through tap kw, in the padded row.
      const float* d = dpre_row + (pw * g.stride_w - g.pad_left + kw + dpre.margin_left) * s.out;
      const int64_t first = (row->k * g.kernel_w + kw) * s.out;
      for (int64_t o = 0; o < s.out; ++o) {
        const Vec w = Simd::Load(s.weights.row(first + o) + c);
        // Two partial sums of the pixels' dkernel terms: half the FMA dependency chain.
        Vec grad[2] = {Simd::Zero(), Simd::Zero()};
        for (int i = 0; i < kPixels; ++i) {
          const Vec dv = Simd::Broadcast(d[i * pixel_step + o]);
          dxv[i] = Simd::Fmadd(dv, w, dxv[i]);
          grad[i % 2] = Simd::Fmadd(dv, xv[i], grad[i % 2]);
        }
        float* to = dkernel + (first + o) * s.weights.stride + c;
        Simd::Store(to, Simd::Add(Simd::Load(to), Simd::Add(grad[0], grad[1])));
      }
    }
  }
  if (dx_row == nullptr) return;
  for (int i = 0; i < kPixels; ++i) {
    StoreChannels(dx_row + (pw + i) * s.in + c, s.in - c, dxv[i]);
  }
}

template <typename T>
void BackwardRows(const Setup& s, const AxisTaps& rows, const T* dy, const T* y, const T* x,
                  int64_t first, int64_t last, T* dx, Partials* partials) {
  const ConvGeometry& g = s.g;
  // Zero pixels the column taps reach beyond the output row on either side.
  const int64_t margin_left = g.pad_left;
  const int64_t margin_right =
      std::max<int64_t>(0, (g.small_w - 1) * g.stride_w - g.pad_left + g.kernel_w - g.big_w);
  PaddedRows x_rows;
  PreActivationRows dpre;
  for (int64_t r = first; r < last; ++r) {
    const int64_t n = r / g.small_h, ph = r % g.small_h;
    // The output rows this input row scatters to, and the ones whose dbias it sums
    // ([ph * stride, (ph + 1) * stride): the input rows share the output rows out exactly).
    const int64_t owned_first = ph * g.stride_h;
    const int64_t owned_last = std::min(g.big_h, owned_first + g.stride_h);
    int64_t first_row = owned_first, last_row = owned_last;
    if (rows.first(ph) != rows.last(ph)) {
      first_row = std::min<int64_t>(first_row, rows.first(ph)->at);
      last_row = std::max<int64_t>(last_row, (rows.last(ph) - 1)->at + 1);
    }
    const int64_t image_values = g.big_pixels() * s.out;
    dpre.Fill(s, dy + n * image_values, y + n * image_values, first_row, last_row, margin_left,
              margin_right);
    for (int64_t q = owned_first; q < owned_last; ++q) {
      const float* d = dpre.at(q) + margin_left * s.out;
      for (int64_t o = 0; o < s.out; ++o) {
        float sum = 0.0f;  // one row's sum in float32, the rows' in float64
        for (int64_t qw = 0; qw < g.big_w; ++qw) sum += d[qw * s.out + o];
        partials->dbias[o] += sum;
      }
    }
    x_rows.Fill(x + n * g.small_pixels() * s.in, g.small_w, s.in, ph, ph + 1, 0, 0);
    T* dx_row = dx == nullptr ? nullptr : dx + r * g.small_w * s.in;
    for (int64_t c = 0; c < x_rows.channels; c += kLanes) {
      int64_t pw = 0;
      for (; pw + kBackwardPixels <= g.small_w; pw += kBackwardPixels) {
        BackwardBlock<kBackwardPixels>(s, x_rows, dpre, rows.first(ph), rows.last(ph), ph, pw, c,
                                       partials->dkernel.data(), dx_row);
      }
      for (; pw < g.small_w; ++pw) {
        BackwardBlock<1>(s, x_rows, dpre, rows.first(ph), rows.last(ph), ph, pw, c,
                         partials->dkernel.data(), dx_row);
      }
    }
  }
}

template <typename T>
void Backward(const OutputConvParams& params, const Runtime& runtime, const T* dy, const T* y,
              const T* x, const float* kernel, T* dx, float* dkernel, float* dbias) {
  const Setup s(params, kernel);
  const ConvGeometry& g = s.g;
  const AxisTaps rows = InputTaps(g.big_h, g.small_h, g.kernel_h, g.stride_h, g.pad_top);
  // Tasks of whole input rows, a few per thread (each keeps its own dkernel partial sums).
  const int64_t input_rows = g.batch * g.small_h;
  const int64_t num_tasks = std::min<int64_t>(input_rows, 8 * std::max(1, runtime.num_threads));
  const int64_t kernel_rows = g.kernel_h * g.kernel_w * s.out;
  std::vector<Partials> partials(num_tasks);
  runtime.run_tasks(num_tasks, [&](int64_t task) {
    Partials& mine = partials[task];
    mine.dkernel.assign(kernel_rows * s.weights.stride, 0.0f);
    mine.dbias.assign(s.out, 0.0);
    BackwardRows(s, rows, dy, y, x, input_rows * task / num_tasks,
                 input_rows * (task + 1) / num_tasks, dx, &mine);
  });
  for (int64_t r = 0; r < kernel_rows; ++r) {
    for (int64_t c = 0; c < s.in; ++c) {
      float sum = 0.0f;
      for (const Partials& part : partials) sum += part.dkernel[r * s.weights.stride + c];
      dkernel[r * s.in + c] = sum;
    }
  }
  for (int64_t o = 0; o < s.out; ++o) {
    double sum = 0.0;
    for (const Partials& part : partials) sum += part.dbias[o];
    dbias[o] = static_cast<float>(sum);
  }
}

}  // namespace

const OutputConvKernels& OutputKernels() {
  static const OutputConvKernels kernels = {
      &Forward<float>, &Forward<Bf16>, &Backward<float>, &Backward<Bf16>};
  return kernels;
}

}  // namespace PYAE_ISA_NS
}  // namespace pyae

#include "isa_target_end.h"
