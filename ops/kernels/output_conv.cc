// The output op's kernels (output_conv.h), compiled once per path into pyae::PYAE_ISA_NS
// (isa_target.h): AVX-512 and AVX2 vectors over the input channels, the generic path the same
// loops on an 8-float array the compiler vectorises for the baseline.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "output_conv.h"

#if defined(PYAE_ISA_AVX512) || defined(PYAE_ISA_AVX2)
#include <immintrin.h>
#endif

#include "isa_target.h"  // after every other include

namespace pyae {
namespace PYAE_ISA_NS {
namespace {

inline float FromBits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline uint32_t ToBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// One value to and from its storage type: float32 as it is, bfloat16 rounded to nearest even
// (a NaN stays a quiet NaN).
inline float ToFloat(float value) { return value; }
inline float ToFloat(OutputBf16 value) { return FromBits(static_cast<uint32_t>(value) << 16); }
inline void FromFloat(float value, float* to) { *to = value; }
inline void FromFloat(float value, OutputBf16* to) {
  const uint32_t bits = ToBits(value);
  if (std::isnan(value)) {
    *to = static_cast<OutputBf16>((bits >> 16) | 0x40);
    return;
  }
  *to = static_cast<OutputBf16>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

// The vector the channels are computed in: a register's floats, loaded from and stored to
// float32 or bfloat16, and the horizontal sum.
#if defined(PYAE_ISA_AVX512)
struct Simd {
  using Vec = __m512;
  static constexpr int kLanes = 16;
  static Vec Zero() { return _mm512_setzero_ps(); }
  static Vec Broadcast(float value) { return _mm512_set1_ps(value); }
  static Vec Fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  // Halves folded by shuffles: _mm512_reduce_add_ps and the plain conversions start from
  // _mm512_undefined, which GCC 12 warns about (hence the maskz forms below too).
  static float Sum(Vec v) {
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, 0x4E));
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, 0xB1));
    __m128 quarter = _mm512_maskz_extractf32x4_ps(0xF, v, 0);
    quarter = _mm_add_ps(quarter, _mm_movehl_ps(quarter, quarter));
    quarter = _mm_add_ss(quarter, _mm_movehdup_ps(quarter));
    return _mm_cvtss_f32(quarter);
  }
  static Vec Load(const float* p) { return _mm512_loadu_ps(p); }
  static Vec Load(const OutputBf16* p) {
    const __m512i wide = _mm512_maskz_cvtepu16_epi32(
        0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, wide, 16));
  }
  static void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static void Store(OutputBf16* p, Vec v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i odd =
        _mm512_and_si512(_mm512_maskz_srli_epi32(0xFFFF, bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    rounded = _mm512_mask_mov_epi32(rounded, nan,
                                    _mm512_or_si512(bits, _mm512_set1_epi32(0x400000)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_maskz_cvtepi32_epi16(0xFFFF, _mm512_maskz_srli_epi32(0xFFFF, rounded, 16)));
  }
};
#elif defined(PYAE_ISA_AVX2)
struct Simd {
  using Vec = __m256;
  static constexpr int kLanes = 8;
  static Vec Zero() { return _mm256_setzero_ps(); }
  static Vec Broadcast(float value) { return _mm256_set1_ps(value); }
  static Vec Fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static float Sum(Vec v) {
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    half = _mm_add_ss(half, _mm_movehdup_ps(half));
    return _mm_cvtss_f32(half);
  }
  static Vec Load(const float* p) { return _mm256_loadu_ps(p); }
  static Vec Load(const OutputBf16* p) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static void Store(OutputBf16* p, Vec v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF)));
    const __m256i quiet = _mm256_or_si256(bits, _mm256_set1_epi32(0x400000));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m256i upper = _mm256_srli_epi32(_mm256_blendv_epi8(rounded, quiet, nan), 16);
    // packus works within 128-bit lanes: gather the two lanes' halves into the low 128 bits.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(upper, upper), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
};
#else
struct Simd {
  struct Vec {
    float lane[8];
  };
  static constexpr int kLanes = 8;
  static Vec Zero() { return Broadcast(0.0f); }
  static Vec Broadcast(float value) {
    Vec v;
    for (float& lane : v.lane) lane = value;
    return v;
  }
  static Vec Fmadd(Vec a, Vec b, Vec c) {
    for (int i = 0; i < kLanes; ++i) c.lane[i] += a.lane[i] * b.lane[i];
    return c;
  }
  static Vec Add(Vec a, Vec b) {
    for (int i = 0; i < kLanes; ++i) a.lane[i] += b.lane[i];
    return a;
  }
  static float Sum(Vec v) {
    float sum = 0.0f;
    for (float lane : v.lane) sum += lane;
    return sum;
  }
  template <typename T>
  static Vec Load(const T* p) {
    Vec v;
    for (int i = 0; i < kLanes; ++i) v.lane[i] = ToFloat(p[i]);
    return v;
  }
  template <typename T>
  static void Store(T* p, Vec v) {
    for (int i = 0; i < kLanes; ++i) FromFloat(v.lane[i], p + i);
  }
};
#endif

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

// One kernel tap along an axis and the pixel it pairs: for an output position, the input
// pixel it gathers from; for an input position, the output pixel it scatters to.
struct Tap {
  int32_t k;
  int32_t at;
};

// For every position along one axis, its taps (a compressed list: taps of position i are
// taps[begin[i]] .. taps[begin[i + 1]]).
struct AxisTaps {
  std::vector<int32_t> begin;
  std::vector<Tap> taps;
  const Tap* first(int64_t i) const { return taps.data() + begin[i]; }
  const Tap* last(int64_t i) const { return taps.data() + begin[i + 1]; }
};

// Output position q takes input p through tap k where q = p * stride - pad + k.
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
      if (q >= 0 && q < big) {
        axis.taps.push_back({static_cast<int32_t>(k), static_cast<int32_t>(q)});
      }
    }
  }
  axis.begin.push_back(static_cast<int32_t>(axis.taps.size()));
  return axis;
}

// The kernel re-laid out with each (tap, out) row of in-channels padded to whole vectors, so
// every weight load is a full one.
struct PaddedKernel {
  PaddedKernel(const float* kernel, int64_t rows, int64_t channels)
      : stride((channels + kLanes - 1) / kLanes * kLanes), values(rows * stride, 0.0f) {
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(kernel + r * channels, kernel + (r + 1) * channels, values.data() + r * stride);
    }
  }
  const float* row(int64_t r) const { return values.data() + r * stride; }
  int64_t stride;
  std::vector<float> values;
};

inline float Activate(float z, OutputActivation activation) {
  return activation == OutputActivation::kSigmoid ? 1.0f / (1.0f + std::exp(-z)) : z;
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

// y at one output pixel for out channels [o0, o0 + kOut): the dot products of its taps' input
// pixels with the kernel rows, channels in vectors, two accumulators per out channel (even and
// odd vectors) so the FMAs of one pixel do not wait on each other.
template <int kOut, typename T>
void ForwardPixel(const Setup& s, const T* x_image, const Tap* rows_first, const Tap* rows_last,
                  const Tap* cols_first, const Tap* cols_last, const float* bias, int64_t o0,
                  T* y_pixel) {
  Vec even[kOut], odd[kOut];
  for (int j = 0; j < kOut; ++j) even[j] = odd[j] = Simd::Zero();
  const int64_t in = s.in;
  for (const Tap* row = rows_first; row != rows_last; ++row) {
    for (const Tap* col = cols_first; col != cols_last; ++col) {
      const T* x_pixel = x_image + (row->at * s.g.small_w + col->at) * in;
      const float* w = s.weights.row((row->k * s.g.kernel_w + col->k) * s.out + o0);
      int64_t c = 0;
      for (; c + 2 * kLanes <= in; c += 2 * kLanes) {
        const Vec x0 = Simd::Load(x_pixel + c), x1 = Simd::Load(x_pixel + c + kLanes);
        for (int j = 0; j < kOut; ++j) {
          even[j] = Simd::Fmadd(x0, Simd::Load(w + j * s.weights.stride + c), even[j]);
          odd[j] = Simd::Fmadd(x1, Simd::Load(w + j * s.weights.stride + c + kLanes), odd[j]);
        }
      }
      for (; c < in; c += kLanes) {
        const Vec x0 = LoadChannels(x_pixel + c, in - c);
        for (int j = 0; j < kOut; ++j) {
          even[j] = Simd::Fmadd(x0, Simd::Load(w + j * s.weights.stride + c), even[j]);
        }
      }
    }
  }
  for (int j = 0; j < kOut; ++j) {
    const float z = Simd::Sum(Simd::Add(even[j], odd[j])) + bias[o0 + j];
    FromFloat(Activate(z, s.activation), y_pixel + o0 + j);
  }
}

template <int kOut, typename T>
void ForwardRow(const Setup& s, const AxisTaps& rows, const AxisTaps& cols, const T* x_image,
                const float* bias, int64_t qh, int64_t o0, T* y_row) {
  for (int64_t qw = 0; qw < s.g.big_w; ++qw) {
    ForwardPixel<kOut>(s, x_image, rows.first(qh), rows.last(qh), cols.first(qw), cols.last(qw),
                       bias, o0, y_row + qw * s.out);
  }
}

template <typename T>
void Forward(const OutputConvParams& params, const Runtime& runtime, const T* x,
             const float* kernel, const float* bias, T* y) {
  const Setup s(params, kernel);
  const ConvGeometry& g = s.g;
  const AxisTaps rows = OutputTaps(g.big_h, g.small_h, g.kernel_h, g.stride_h, g.pad_top);
  const AxisTaps cols = OutputTaps(g.big_w, g.small_w, g.kernel_w, g.stride_w, g.pad_left);
  // One task per output row of one image.
  runtime.run_tasks(g.batch * g.big_h, [&](int64_t task) {
    const int64_t n = task / g.big_h, qh = task % g.big_h;
    const T* x_image = x + n * g.small_pixels() * s.in;
    T* y_row = y + (n * g.big_h + qh) * g.big_w * s.out;
    for (int64_t o0 = 0; o0 < s.out; o0 += 4) {
      switch (std::min<int64_t>(4, s.out - o0)) {
        case 1: ForwardRow<1>(s, rows, cols, x_image, bias, qh, o0, y_row); break;
        case 2: ForwardRow<2>(s, rows, cols, x_image, bias, qh, o0, y_row); break;
        case 3: ForwardRow<3>(s, rows, cols, x_image, bias, qh, o0, y_row); break;
        default: ForwardRow<4>(s, rows, cols, x_image, bias, qh, o0, y_row); break;
      }
    }
  });
}

// --- backward -------------------------------------------------------------------------------

// One task's share of the backward: its input rows' dx, and partial sums of dkernel (rows of
// the padded kernel layout) and dbias.
struct Partials {
  std::vector<float> dkernel;
  std::vector<double> dbias;
};

// The pre-activation's gradient dy * f'(y) of output rows [first_row, last_row) of one image,
// [row][w][out] in float32.
template <typename T>
void PreActivationGrad(const Setup& s, const T* dy_image, const T* y_image, int64_t first_row,
                       int64_t last_row, float* dpre) {
  const int64_t count = (last_row - first_row) * s.g.big_w * s.out;
  const int64_t offset = first_row * s.g.big_w * s.out;
  if (s.activation == OutputActivation::kLinear) {
    for (int64_t i = 0; i < count; ++i) dpre[i] = ToFloat(dy_image[offset + i]);
    return;
  }
  for (int64_t i = 0; i < count; ++i) {
    const float y = ToFloat(y_image[offset + i]);
    dpre[i] = ToFloat(dy_image[offset + i]) * y * (1.0f - y);
  }
}

// dx of one input pixel's channels [c, c + count), and that pixel's terms of dkernel: each tap
// broadcasts the output pixel's dpre per out channel, against the kernel row (dx) and against x
// (dkernel).
template <typename T>
void BackwardPixelChannels(const Setup& s, const Tap* rows_first, const Tap* rows_last,
                           const Tap* cols_first, const Tap* cols_last, const float* dpre,
                           int64_t dpre_first_row, const T* x_pixel, int64_t c, int64_t count,
                           float* dkernel, T* dx_pixel) {
  const Vec xv = LoadChannels(x_pixel + c, count);
  Vec dxv = Simd::Zero();
  const int64_t stride = s.weights.stride;
  for (const Tap* row = rows_first; row != rows_last; ++row) {
    const float* dpre_row = dpre + (row->at - dpre_first_row) * s.g.big_w * s.out;
    for (const Tap* col = cols_first; col != cols_last; ++col) {
      const float* d = dpre_row + col->at * s.out;
      const int64_t first = (row->k * s.g.kernel_w + col->k) * s.out;
      for (int64_t o = 0; o < s.out; ++o) {
        const Vec dv = Simd::Broadcast(d[o]);
        dxv = Simd::Fmadd(dv, Simd::Load(s.weights.row(first + o) + c), dxv);
        float* grad = dkernel + (first + o) * stride + c;
        Simd::Store(grad, Simd::Fmadd(dv, xv, Simd::Load(grad)));
      }
    }
  }
  if (dx_pixel != nullptr) StoreChannels(dx_pixel + c, count, dxv);
}

template <typename T>
void BackwardRows(const Setup& s, const AxisTaps& rows, const AxisTaps& cols, const T* dy,
                  const T* y, const T* x, int64_t first, int64_t last, T* dx,
                  Partials* partials) {
  const ConvGeometry& g = s.g;
  std::vector<float> dpre;
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
    const int64_t row_values = g.big_w * s.out;
    dpre.resize((last_row - first_row) * row_values);
    const int64_t image_values = g.big_pixels() * s.out;
    PreActivationGrad(s, dy + n * image_values, y + n * image_values, first_row, last_row,
                      dpre.data());
    for (int64_t q = owned_first; q < owned_last; ++q) {
      const float* d = dpre.data() + (q - first_row) * row_values;
      for (int64_t i = 0; i < row_values; ++i) partials->dbias[i % s.out] += d[i];
    }
    const T* x_row = x + r * g.small_w * s.in;
    T* dx_row = dx == nullptr ? nullptr : dx + r * g.small_w * s.in;
    for (int64_t pw = 0; pw < g.small_w; ++pw) {
      for (int64_t c = 0; c < s.in; c += kLanes) {
        BackwardPixelChannels(s, rows.first(ph), rows.last(ph), cols.first(pw), cols.last(pw),
                              dpre.data(), first_row, x_row + pw * s.in, c, s.in - c,
                              partials->dkernel.data(),
                              dx_row == nullptr ? nullptr : dx_row + pw * s.in);
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
  const AxisTaps cols = InputTaps(g.big_w, g.small_w, g.kernel_w, g.stride_w, g.pad_left);
  // Tasks of whole input rows, a few per thread (each keeps its own dkernel partial sums).
  const int64_t input_rows = g.batch * g.small_h;
  const int64_t num_tasks = std::min<int64_t>(input_rows, 8 * std::max(1, runtime.num_threads));
  const int64_t kernel_rows = g.kernel_h * g.kernel_w * s.out;
  std::vector<Partials> partials(num_tasks);
  runtime.run_tasks(num_tasks, [&](int64_t task) {
    Partials& mine = partials[task];
    mine.dkernel.assign(kernel_rows * s.weights.stride, 0.0f);
    mine.dbias.assign(s.out, 0.0);
    BackwardRows(s, rows, cols, dy, y, x, input_rows * task / num_tasks,
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
      &Forward<float>, &Forward<OutputBf16>, &Backward<float>, &Backward<OutputBf16>};
  return kernels;
}

}  // namespace PYAE_ISA_NS
}  // namespace pyae

#include "isa_target_end.h"
