// The bf16 fused op's per-value batch-norm loops (fused_bf16.cc): the forward's epilogue, the
// backward's sums and dz, on 16 channels at a time read straight from bf16 and rounded to bf16
// as they are stored. Row by row through helper calls and float buffers they took as long as
// a block's filter gradient at Fashion's 14x14 layers (five passes over each row per value).
//
// Include after bf16_target.h (compiled for AVX512-BF16) and bn_loops.h (kRunRows,
// ChannelTerms), inside no namespace. Internal linkage, as bn_loops.h.
#pragma once

namespace pyae {
namespace avx512bf16 {
namespace {

// 16 bf16 values (the lanes of `mask`; zeros elsewhere) widened to float32: a bf16 is the
// upper half of the float with the same bits.
inline __m512 LoadBf16Lanes(const Bf16* p, __mmask16 mask) {
  // maskz forms: the plain ones start from _mm512_undefined, which GCC 12 warns about.
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_maskz_loadu_epi16(mask, p));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, wide, 16));
}

// Rounded to bf16 (nearest even, as ToBf16) into the lanes of `mask`.
inline void StoreLanes(Bf16* p, __mmask16 mask, __m512 v) {
  _mm256_mask_storeu_epi16(p, mask, (__m256i)_mm512_cvtneps_pbh(v));
}

// The same bf16 values, kept as float32 (for float32 consumers of a bf16 tensor).
inline void StoreLanes(float* p, __mmask16 mask, __m512 v) {
  const __m512i wide =
      _mm512_maskz_cvtepu16_epi32(0xFFFF, (__m256i)_mm512_cvtneps_pbh(v));
  _mm512_mask_storeu_ps(p, mask, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, wide, 16)));
}

inline __m512 LoadLanes(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }

inline __mmask16 ChannelMask(int64_t channels, int64_t c) {
  const int64_t lanes = std::min<int64_t>(16, channels - c);
  return static_cast<__mmask16>((1u << lanes) - 1);
}

// y = bf16(leaky_relu(z * scale + shift)) for `rows` rows.
inline void ApplyEpilogue(const float* z, int64_t rows, int64_t channels, const float* scale,
                          const float* shift, float slope, Bf16* y) {
  const __m512 slope_v = _mm512_set1_ps(slope);
  for (int64_t r = 0; r < rows; ++r, z += channels, y += channels) {
    for (int64_t c = 0; c < channels; c += 16) {
      const __mmask16 mask = ChannelMask(channels, c);
      const __m512 v = _mm512_fmadd_ps(LoadLanes(z + c, mask), LoadLanes(scale + c, mask),
                                       LoadLanes(shift + c, mask));
      const __mmask16 negative = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NGT_UQ);
      StoreLanes(y + c, mask, _mm512_mask_mul_ps(v, negative, v, slope_v));
    }
  }
}

// du and xhat of 16 channels from y and dy (bf16), and either y's inverse (z null) or the
// recomputed z: du = dy * leaky_relu'(u), xhat = (leaky_relu^-1(y) - beta) / gamma or
// (z - mean) * rstd.
struct Preactivation {
  const Bf16* y;
  const Bf16* dy;
  const float* z;  // null: xhat from y
  const float* beta;
  const float* mean;
  const ChannelTerms* terms;
  float slope;

  // Channels [c, c + 16) (the lanes of `mask`) of row `row`.
  void Lanes(int64_t row, int64_t channels, int64_t c, __mmask16 mask, __m512* du,
             __m512* xhat) const {
    const int64_t at = row * channels + c;
    const __m512 y_v = LoadBf16Lanes(y + at, mask);
    const __m512 dy_v = LoadBf16Lanes(dy + at, mask);
    // Not y > 0 (NaN included) takes the negative slope, as the scalar rule y > 0 ? 1 : slope.
    const __mmask16 negative = _mm512_cmp_ps_mask(y_v, _mm512_setzero_ps(), _CMP_NGT_UQ);
    *du = _mm512_mask_mul_ps(dy_v, negative, dy_v, _mm512_set1_ps(slope));
    if (z == nullptr) {
      const __m512 u = _mm512_mask_mul_ps(y_v, negative, y_v, _mm512_set1_ps(1.0f / slope));
      *xhat = _mm512_mul_ps(_mm512_sub_ps(u, LoadLanes(beta + c, mask)),
                            LoadLanes(terms->inv_gamma.data() + c, mask));
      return;
    }
    *xhat = _mm512_mul_ps(_mm512_sub_ps(LoadLanes(z + at, mask), LoadLanes(mean + c, mask)),
                          LoadLanes(terms->rstd.data() + c, mask));
  }
};

// sum_du[c] += sum of du, sum_du_xhat[c] += sum of du * xhat over `rows` rows from first_row:
// float sums over runs of kRunRows rows, the runs summed in double (as bn_loops.h).
inline void AccumulateGradSums(const Preactivation& pre, int64_t first_row, int64_t rows,
                               int64_t channels, double* sum_du, double* sum_du_xhat) {
  std::vector<float> runs(2 * channels);
  float* run_du = runs.data();
  float* run_du_xhat = run_du + channels;
  const int64_t last_row = first_row + rows;
  for (int64_t r0 = first_row; r0 < last_row; r0 += kRunRows) {
    std::fill(runs.begin(), runs.end(), 0.0f);
    for (int64_t r = r0; r < std::min(last_row, r0 + kRunRows); ++r) {
      for (int64_t c = 0; c < channels; c += 16) {
        const __mmask16 mask = ChannelMask(channels, c);
        __m512 du, xhat;
        pre.Lanes(r, channels, c, mask, &du, &xhat);
        _mm512_mask_storeu_ps(run_du + c, mask, _mm512_add_ps(LoadLanes(run_du + c, mask), du));
        _mm512_mask_storeu_ps(run_du_xhat + c, mask,
                              _mm512_fmadd_ps(du, xhat, LoadLanes(run_du_xhat + c, mask)));
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      sum_du[c] += run_du[c];
      sum_du_xhat[c] += run_du_xhat[c];
    }
  }
}

// dz = dz_du * du + dz_bias + dz_xhat * xhat of `rows` rows from first_row into dz (row 0 is
// first_row), rounded to bf16 (kept as float32 where Out is float).
template <typename Out>
void ComputeDz(const Preactivation& pre, int64_t first_row, int64_t rows, int64_t channels,
               Out* dz) {
  const ChannelTerms& terms = *pre.terms;
  for (int64_t r = 0; r < rows; ++r, dz += channels) {
    for (int64_t c = 0; c < channels; c += 16) {
      const __mmask16 mask = ChannelMask(channels, c);
      __m512 du, xhat;
      pre.Lanes(first_row + r, channels, c, mask, &du, &xhat);
      const __m512 bias_and_xhat = _mm512_fmadd_ps(LoadLanes(terms.dz_xhat.data() + c, mask), xhat,
                                                   LoadLanes(terms.dz_bias.data() + c, mask));
      StoreLanes(dz + c, mask,
                 _mm512_fmadd_ps(LoadLanes(terms.dz_du.data() + c, mask), du, bias_and_xhat));
    }
  }
}

}  // namespace
}  // namespace avx512bf16
}  // namespace pyae
