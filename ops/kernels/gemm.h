// Row-major single-precision GEMM, C = alpha * op(A) * op(B) + beta * C, on OpenBLAS.
// Kernels call it from their own worker threads, so OpenBLAS runs single-threaded.
#pragma once

#include <cstdint>

namespace pyae {

void Gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
          int64_t ldc);

}  // namespace pyae
