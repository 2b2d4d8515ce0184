// The vector the per-path float32 kernels compute with (direct_conv.cc, output_conv.cc): one
// register's floats, loaded from and stored to float32 or bfloat16, the masked loads and stores
// of a partial vector, and the few operations the kernels need. Included after isa_target.h,
// so it compiles for the path of the file that includes it, into pyae::PYAE_ISA_NS; that file
// includes <immintrin.h> (on the vector paths) and bf16.h before the pragma.
//
// The generic path has the arithmetic on an 8-float array the compiler vectorises for the
// baseline, and no masked forms (only the output op's kernels run there).
#pragma once

#include <cstdint>

#if defined(PYAE_ISA_AVX512) || defined(PYAE_ISA_AVX2)
#include <immintrin.h>
#endif

#include "bf16.h"

namespace pyae {
namespace PYAE_ISA_NS {

#if defined(PYAE_ISA_AVX512)
struct Simd {
  using Vec = __m512;
  using Mask = __mmask16;
  static constexpr int kLanes = 16;
  static Mask FirstLanes(int64_t lanes) {
    return lanes >= kLanes ? static_cast<Mask>(0xFFFF) : static_cast<Mask>((1u << lanes) - 1);
  }
  static Vec Zero() { return _mm512_setzero_ps(); }
  static Vec Broadcast(float value) { return _mm512_set1_ps(value); }
  static Vec Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  // The maskz forms: the plain conversions start from _mm512_undefined, which GCC 12 warns
  // about.
  static Vec Load(const Bf16* p) {
    const __m512i wide = _mm512_maskz_cvtepu16_epi32(
        0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, wide, 16));
  }
  // Rounded to nearest even; a NaN stays a quiet NaN (as RoundToBf16).
  static void Store(Bf16* p, Vec v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i odd =
        _mm512_and_si512(_mm512_maskz_srli_epi32(0xFFFF, bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    rounded = _mm512_mask_mov_epi32(rounded, nan,
                                    _mm512_or_si512(bits, _mm512_set1_epi32(0x400000)));
    _mm256_storeu_si256(
        reinterpret_cast<__m256i*>(p),
        _mm512_maskz_cvtepi32_epi16(0xFFFF, _mm512_maskz_srli_epi32(0xFFFF, rounded, 16)));
  }
  // A masked access costs what a plain one does: `full` is not needed.
  static Vec LoadPart(Mask mask, bool, const float* p) { return _mm512_maskz_loadu_ps(mask, p); }
  static void StorePart(float* p, Mask mask, bool, Vec v) { _mm512_mask_storeu_ps(p, mask, v); }
  static Vec Fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  // Halves folded by shuffles (_mm512_reduce_add_ps starts from _mm512_undefined too).
  static float Sum(Vec v) {
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, 0x4E));
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(0xFFFF, v, v, 0xB1));
    __m128 quarter = _mm512_maskz_extractf32x4_ps(0xF, v, 0);
    quarter = _mm_add_ps(quarter, _mm_movehl_ps(quarter, quarter));
    quarter = _mm_add_ss(quarter, _mm_movehdup_ps(quarter));
    return _mm_cvtss_f32(quarter);
  }
  static Vec LeakyRelu(Vec u, Vec slope) {
    const Mask negative = _mm512_cmp_ps_mask(u, _mm512_setzero_ps(), _CMP_LE_OQ);
    return _mm512_mask_mul_ps(u, negative, u, slope);
  }
};
#elif defined(PYAE_ISA_AVX2)
struct Simd {
  using Vec = __m256;
  using Mask = __m256i;  // AVX2's masked moves take a vector of lane masks
  static constexpr int kLanes = 8;
  static Mask FirstLanes(int64_t lanes) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(lanes < 8 ? lanes : 8)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Vec Zero() { return _mm256_setzero_ps(); }
  static Vec Broadcast(float value) { return _mm256_set1_ps(value); }
  static Vec Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec Load(const Bf16* p) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  // Rounded to nearest even; a NaN stays a quiet NaN (as RoundToBf16).
  static void Store(Bf16* p, Vec v) {
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
  // vmaskmovps is slow on some CPUs (AMD Zen 2/3 stores): used for partial vectors only.
  static Vec LoadPart(Mask mask, bool full, const float* p) {
    return full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask);
  }
  static void StorePart(float* p, Mask mask, bool full, Vec v) {
    if (full) {
      _mm256_storeu_ps(p, v);
    } else {
      _mm256_maskstore_ps(p, mask, v);
    }
  }
  static Vec Fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static float Sum(Vec v) {
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    half = _mm_add_ss(half, _mm_movehdup_ps(half));
    return _mm_cvtss_f32(half);
  }
  static Vec LeakyRelu(Vec u, Vec slope) {
    const Vec negative = _mm256_cmp_ps(u, _mm256_setzero_ps(), _CMP_LE_OQ);
    return _mm256_blendv_ps(u, _mm256_mul_ps(u, slope), negative);
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
  static Vec Load(const float* p) {
    Vec v;
    for (int i = 0; i < kLanes; ++i) v.lane[i] = p[i];
    return v;
  }
  static void Store(float* p, Vec v) {
    for (int i = 0; i < kLanes; ++i) p[i] = v.lane[i];
  }
  static Vec Load(const Bf16* p) {
    Vec v;
    for (int i = 0; i < kLanes; ++i) v.lane[i] = WidenBf16(p[i]);
    return v;
  }
  static void Store(Bf16* p, Vec v) {
    for (int i = 0; i < kLanes; ++i) p[i] = RoundToBf16(v.lane[i]);
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
};
#endif

}  // namespace PYAE_ISA_NS
}  // namespace pyae
