// Compiles what follows, up to isa_target_end.h's twin bf16_target_end.h, with AVX-512 and
// AVX512-BF16 (vdpbf16ps, vcvtneps2bf16). As isa_target.h: a pragma, not -m flags, so the
// standard library's templates stay baseline; include every header before this one.
// Deliberately no include guard: each bf16 source includes it once.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,bmi,bmi2,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,bmi,bmi2,f16c")
#endif
