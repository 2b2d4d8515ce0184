// Compiles what follows, up to isa_target_end.h, for the path the build defines:
// PYAE_ISA_AVX512, PYAE_ISA_AVX2 or neither (generic), in namespace pyae::PYAE_ISA_NS.
//
// A target pragma, not -m flags on the command line: with flags, the standard library's inline
// functions and templates (std::vector, std::function...) would be compiled for AVX-512 in one
// object and for the baseline in another, and the linker keeps one copy of each, possibly the
// AVX-512 one, which the generic path would then run on a CPU without it. Templates defined
// before the pragma keep the baseline; only the code after it gets the wider instructions.
// So every header (the standard ones included) must be included before this one.
// Deliberately no include guard: each ISA-sensitive source includes it once.

#if !defined(PYAE_ISA_NS)
#error "PYAE_ISA_NS must name the path's namespace (set by CMakeLists.txt)"
#endif

#if defined(PYAE_ISA_AVX512) || defined(PYAE_ISA_AVX2)
#if defined(__clang__)
#if defined(PYAE_ISA_AVX512)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi,bmi2,f16c"))), apply_to = function)
#else
#pragma clang attribute push(__attribute__((target("avx2,fma,bmi,bmi2,f16c"))), apply_to = function)
#endif
#elif defined(__GNUC__)
#pragma GCC push_options
#if defined(PYAE_ISA_AVX512)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi,bmi2,f16c")
#else
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
#endif
#endif
#endif
