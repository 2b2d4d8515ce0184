// The output op's activation over a row of float32 pre-activations, shared by its float32
// kernels (output_conv.cc, per path) and its AVX512-BF16 ones (output_bf16.cc).
//
// Internal linkage, and included after the including file's target pragma (its headers before
// it), so each source compiles its own copy with its own instructions: a plain loop the
// compiler vectorises for that target, and the linker never mixes one source's copy into
// another (as copy_channels.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "output_conv.h"

namespace pyae {
namespace {

// exp(x) to ~2 ulp for float32 (Cephes' expf: x = n ln2 + r, a degree-6 polynomial in r,
// 2^n from the exponent bits), in plain arithmetic so that a loop over it vectorises.
inline float Exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t scale_bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  return p * scale;
}

// The activation over a row of pre-activations, in place.
inline void Activate(float* z, int64_t count, OutputActivation activation) {
  if (activation != OutputActivation::kSigmoid) return;
  for (int64_t i = 0; i < count; ++i) {
    const float value = z[i];
    const float sigmoid = 1.0f / (1.0f + Exp(-value));
    z[i] = value == value ? sigmoid : value;  // NaN stays NaN (the clamp would drop it)
  }
}

}  // namespace
}  // namespace pyae
