// Patch gathering (im2col) and its adjoint (col2im) for a run of small-image pixels.
// Pixels are numbered across the batch, s = n * small_pixels + p, so one run may span
// several images; row r of `cols` is the patch of pixel first + r.
#pragma once

#include <cstdint>

#include "conv_geometry.h"

namespace pyae {

// cols[rows, patch_size] <- patches of `big` (NHWC, whole batch); zero where padded.
void Im2Col(const ConvGeometry& g, const float* big, int64_t first, int64_t rows, float* cols);

// big += scatter of cols[rows, patch_size]. Callers own every image the run touches.
void Col2ImAdd(const ConvGeometry& g, const float* cols, int64_t first, int64_t rows,
               float* big);

}  // namespace pyae
