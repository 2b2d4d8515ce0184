// One pixel's channels copied into a patch row (im2col.cc's float32 one, conv_bf16.cc's bf16
// one). A memcpy call per tap costs as much as the copy itself at these channel counts; a copy
// of compile-time size is a few vector moves.
//
// Internal linkage, so each source that includes it compiles its own copy with the
// instructions in force where it is included (conv_bf16.cc: after its target pragma, so the
// moves are AVX-512 ones), and the linker never mixes one source's copy into another.
#pragma once

#include <cstdint>
#include <cstring>

namespace pyae {
namespace {

template <typename T, int64_t kChannels>
inline void CopyFixed(const T* from, T* to) {
  std::memcpy(to, from, sizeof(T) * kChannels);
}

template <typename T>
inline void CopyChannels(const T* __restrict from, T* __restrict to, int64_t channels) {
  switch (channels) {
    case 1: CopyFixed<T, 1>(from, to); return;
    case 3: CopyFixed<T, 3>(from, to); return;
    case 16: CopyFixed<T, 16>(from, to); return;
    case 32: CopyFixed<T, 32>(from, to); return;
    case 64: CopyFixed<T, 64>(from, to); return;
    case 128: CopyFixed<T, 128>(from, to); return;
    default: std::memcpy(to, from, sizeof(T) * channels);
  }
}

}  // namespace
}  // namespace pyae
