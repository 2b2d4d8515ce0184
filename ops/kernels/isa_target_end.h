// Ends the region that isa_target.h began.
#if defined(PYAE_ISA_AVX512) || defined(PYAE_ISA_AVX2)
#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
#endif
