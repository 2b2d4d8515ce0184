// bfloat16 as its bits, and its scalar conversions, for every path: the float32 kernels'
// bf16 loads and stores (output_conv.cc, compiled per ISA), the AVX512-BF16 kernels' packing
// (conv_bf16.h) and the op's contracts (fused_bf16.h, output_conv.h). Plain C++, so any
// target region may call it.
#pragma once

#include <cstdint>
#include <cstring>

namespace pyae {

// bfloat16 bits: the upper half of an IEEE float32 (TensorFlow's and ml_dtypes' layout).
using Bf16 = uint16_t;

// float32 -> bf16, rounded to nearest even (as TensorFlow's cast); NaN stays a quiet NaN.
inline Bf16 RoundToBf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<Bf16>((bits >> 16) | 0x40);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<Bf16>(bits >> 16);
}

// bf16 -> float32, exactly.
inline float WidenBf16(Bf16 value) {
  const uint32_t bits = static_cast<uint32_t>(value) << 16;
  float widened;
  std::memcpy(&widened, &bits, sizeof(widened));
  return widened;
}

}  // namespace pyae
