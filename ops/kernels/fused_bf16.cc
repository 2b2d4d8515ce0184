// The fused op on bf16 activations (fused_bf16.h) with the AVX512-BF16 convolutions of
// conv_bf16.cc: statistics, affine terms and the backward's reductions in float32 / double.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bf16_isa.h"
#include "conv_bf16.h"
#include "fused_isa.h"
#include "scratch.h"

#include "bf16_target.h"  // after every other include

#include "bn_loops.h"  // compiled for this target: after the pragma
#include "bn_bf16_loops.h"

namespace pyae {
namespace avx512bf16 {
namespace {

// The filter in the layout each conv direction needs, packed (and rounded) once per call.
struct Filters {
  PairPacked as_is;       // [patch, small_c]: small = conv(big)
  PairPacked transposed;  // [small_c, patch]: big = conv^T(small)
};

// Image blocks of an even size where the batch allows, for the backward: the filter gradient
// pairs a block's images, and an odd block's last image is paired with zeros. Eight per
// thread: a thread that joins late then leaves a shorter last block to wait for.
ImageBlocks PairedBlocks(int64_t batch, const Runtime& runtime) {
  constexpr int64_t kBlocksPerThread = 8;
  const int64_t wanted = std::max<int64_t>(1, kBlocksPerThread * runtime.num_threads);
  const int64_t size = std::max<int64_t>(1, (batch + wanted - 1) / wanted);
  return BlocksOf(batch, size + size % 2);
}

// The filter gradient's per-thread partials: a task takes a free slot, adds its images'
// gradient to it and frees it. One slot per thread rather than per image block: at Fashion's
// 7x7 layers zeroing and summing eight blocks' partials (150 KB each) on one thread cost about
// a tenth of the filter gradient.
class FilterPartials {
 public:
  FilterPartials(int64_t slots, int64_t size)
      : slots_(std::max<int64_t>(1, slots)),
        size_(size),
        values_(slots_ * size, 0.0f),
        busy_(new std::atomic<bool>[slots_]()) {}

  // fn(partial) on a slot no other task holds meanwhile.
  template <typename Fn>
  void With(Fn fn) {
    for (int64_t slot = 0;; slot = (slot + 1) % slots_) {
      bool free = false;
      if (busy_[slot].load(std::memory_order_relaxed) ||
          !busy_[slot].compare_exchange_strong(free, true, std::memory_order_acquire)) {
        continue;
      }
      fn(values_.data() + slot * size_);
      busy_[slot].store(false, std::memory_order_release);
      return;
    }
  }

  void Sum(float* out) const { SumPartials(values_, slots_, size_, out); }

 private:
  const int64_t slots_, size_;
  std::vector<float> values_;
  std::unique_ptr<std::atomic<bool>[]> busy_;
};

// At most one task per thread runs at once.
int64_t SlotsFor(const ImageBlocks& blocks, const Runtime& runtime) {
  return std::min<int64_t>(blocks.count(), std::max(1, runtime.num_threads));
}

// True when z comes from a direct kernel, which can sum z's moments as it stores the tiles.
bool DirectZ(const ConvGeometry& g) {
  return g.transpose ? DirectTransposeApplies(g) : DirectConvApplies(g);
}

// z (float32, whole-batch layout) for images [first, end): the conv from x, or for a
// transposed op the adjoint from x. `moments` (only where DirectZ) takes z's sums.
void ComputeZ(const ConvGeometry& g, const Filters& filters, const Bf16* x, int64_t first,
              int64_t end, ConvScratch* scratch, float* z, TileMoments* moments = nullptr) {
  if (g.transpose && DirectTransposeApplies(g)) {
    DirectConvTransposeImages(g, x, filters.transposed, first, end, scratch, z, moments);
  } else if (g.transpose) {
    ConvTransposeImages(g, x, filters.transposed, first, end, scratch, z);
  } else if (DirectConvApplies(g)) {
    DirectConvImages(g, x, filters.as_is, first, end, scratch, z, moments);
  } else {
    ConvImages(g, x, filters.as_is, first, end, scratch, z);
  }
}

// z for the whole batch, in parallel over image blocks.
void ComputeAllZ(const ConvGeometry& g, const Runtime& runtime, const ImageBlocks& blocks,
                 const Filters& filters, const Bf16* x, float* z) {
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    ConvScratch scratch;
    ComputeZ(g, filters, x, blocks.begin(b), blocks.end(b), &scratch, z);
  });
}

void PackForward(const ConvGeometry& g, const float* kernel, Filters* filters) {
  if (g.transpose) {
    PackFilterTransposed(g, kernel, &filters->transposed);
  } else {
    PackFilter(g, kernel, &filters->as_is);
  }
}

// Below this many input channels (a model's first block: 1 or 3) a Conv2D's convs run on the
// float32 path's direct kernels (avx512, which every AVX512-BF16 CPU runs), x and dz converted
// to float32 a few images at a time: the pair kernels would reduce over patches of 9 or 27
// values, and measured slower than the float32 op there. Products of bf16 values are exact in
// float32, so z and dkernel are what vdpbf16ps would sum, up to the order of the additions.
// y, dy, and the statistics and epilogue stay as on the pair route.
constexpr int64_t kMinPairInputChannels = 4;

bool ConvInFloat(const ConvGeometry& g) {
  return !g.transpose && g.big_c < kMinPairInputChannels;
}

// The kernel rounded to bf16 (and back), as the pair kernels round it while packing.
std::vector<float> RoundedKernel(const ConvGeometry& g, const float* kernel) {
  const int64_t size = g.patch_size() * g.small_c;
  std::vector<Bf16> bits(size);
  std::vector<float> rounded(size);
  ToBf16(kernel, size, bits.data());
  ToFloat(bits.data(), size, rounded.data());
  return rounded;
}

// x's images [first, end) in float32, for the float32 convs.
ImagePieces FloatPieces(const Bf16* values, int64_t image_values) {
  return [values, image_values](int64_t first, int64_t end, float* piece) {
    ToFloat(values + first * image_values, (end - first) * image_values, piece);
  };
}

// z of a ConvInFloat op for the whole batch, and with mean_out/variance_out its statistics.
void FloatZ(const ConvGeometry& g, const Runtime& runtime, const float* kernel, const Bf16* x,
            float* z, float* mean_out = nullptr, float* variance_out = nullptr) {
  const std::vector<float> rounded = RoundedKernel(g, kernel);
  avx512::Kernels().z_of_pieces(g, runtime, rounded.data(),
                                FloatPieces(x, g.big_pixels() * g.big_c), z, mean_out,
                                variance_out);
}

// z and (training) the batch statistics into mean_out/variance_out, on the pair kernels.
void PairZ(const FusedParams& p, const Runtime& runtime, const Bf16* x, const float* kernel,
           float* z, float* mean_out, float* variance_out) {
  const ConvGeometry& g = p.geometry;
  const int64_t channels = g.z_channels();
  const int64_t pixels = g.z_pixels();
  Filters filters;
  PackForward(g, kernel, &filters);
  const ImageBlocks blocks = EqualBlocks(g.batch, runtime);
  // The direct kernels sum z's moments from their tiles; otherwise each task sums its block's
  // right after computing its z.
  std::vector<double> moments(blocks.count() * channels * 2, 0.0);
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    ConvScratch scratch;
    double* sum = moments.data() + b * channels * 2;
    if (p.training && DirectZ(g)) {
      TileMoments tile_moments(channels, sum, sum + channels);
      ComputeZ(g, filters, x, blocks.begin(b), blocks.end(b), &scratch, z, &tile_moments);
      return;
    }
    ComputeZ(g, filters, x, blocks.begin(b), blocks.end(b), &scratch, z);
    if (!p.training) return;
    AccumulateMoments(z + blocks.begin(b) * pixels * channels,
                      (blocks.end(b) - blocks.begin(b)) * pixels, channels, sum, sum + channels);
  });
  if (p.training) {
    StatisticsFromMoments(moments, blocks.count(), channels, static_cast<double>(g.batch * pixels),
                          mean_out, variance_out);
  }
}

std::string Forward(const FusedParams& p, const Runtime& runtime, const Bf16* x,
                    const float* kernel, const float* gamma, const float* beta,
                    const float* moving_mean, const float* moving_variance, Bf16* y,
                    float* mean_out, float* variance_out, const Bf16Workspace& workspace) {
  const ConvGeometry& g = p.geometry;
  std::string err = CheckParameters(p, kernel, gamma, beta);
  if (err.empty() && !p.training) err = CheckMovingStatistics(p, moving_mean, moving_variance);
  if (!err.empty()) return err;
  const int64_t channels = g.z_channels();
  const int64_t pixels = g.z_pixels();
  const ImageBlocks blocks = EqualBlocks(g.batch, runtime);
  float* z = workspace.z;
  if (z == nullptr) return "the bf16 forward needs a z workspace (Bf16Workspace::z)";
  if (ConvInFloat(g)) {
    FloatZ(g, runtime, kernel, x, z, p.training ? mean_out : nullptr,
           p.training ? variance_out : nullptr);
  } else {
    PairZ(p, runtime, x, kernel, z, mean_out, variance_out);
  }
  if (!p.training) {
    std::memcpy(mean_out, moving_mean, sizeof(float) * channels);
    std::memcpy(variance_out, moving_variance, sizeof(float) * channels);
  }
  std::vector<float> scale(channels), shift(channels);
  for (int64_t c = 0; c < channels; ++c) {
    scale[c] = gamma[c] / std::sqrt(variance_out[c] + p.epsilon);
    shift[c] = beta[c] - mean_out[c] * scale[c];
  }
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    const int64_t offset = blocks.begin(b) * pixels * channels;
    ApplyEpilogue(z + offset, (blocks.end(b) - blocks.begin(b)) * pixels, channels,
                  scale.data(), shift.data(), p.negative_slope, y + offset);
  });
  return "";
}

// dx and this block's dfilter for images [first, end), from dz computed here into the
// images' rows of `dz` (whole-batch layout).
void BackwardBlock(const ConvGeometry& g, const Preactivation& pre, const Bf16* x,
                   const Filters& dx_filters, int64_t first, int64_t end, Bf16* dz, Bf16* dx,
                   float* dfilter) {
  const int64_t channels = g.z_channels();
  const int64_t z_rows = (end - first) * g.z_pixels();
  ConvScratch scratch;
  ComputeDz(pre, first * g.z_pixels(), z_rows, channels, dz + first * g.z_pixels() * channels);
  // Transposed, z is the conv's big image; else x is.
  FilterGradImages(g, g.transpose ? dz : x, g.transpose ? x : dz, first, end, &scratch,
                   dfilter);
  if (dx == nullptr) return;
  // The direct kernels round dx to bf16 as they store it.
  if (g.transpose && DirectConvApplies(g)) {
    DirectConvImages(g, dz, dx_filters.as_is, first, end, &scratch, dx);
    return;
  }
  if (!g.transpose && DirectTransposeApplies(g)) {
    DirectConvTransposeImages(g, dz, dx_filters.transposed, first, end, &scratch, dx);
    return;
  }
  const int64_t x_values = (end - first) * g.x_pixels() * g.x_channels();
  Scratch dx_block(x_values);  // uninitialised: both convs write (or zero) every value
  float* dx_rows = dx_block.data() - first * g.x_pixels() * g.x_channels();
  if (g.transpose) {
    ConvImages(g, dz, dx_filters.as_is, first, end, &scratch, dx_rows);
  } else {
    ConvTransposeImages(g, dz, dx_filters.transposed, first, end, &scratch, dx_rows);
  }
  ToBf16(dx_block.data(), x_values, dx + first * g.x_pixels() * g.x_channels());
}

std::string Backward(const FusedParams& p, const Runtime& runtime, const Bf16* dy, const Bf16* x,
                     const float* kernel, const float* gamma, const float* beta, const Bf16* y,
                     const float* mean, const float* variance, Bf16* dx, float* dkernel,
                     float* dgamma, float* dbeta, const Bf16Workspace& workspace) {
  const ConvGeometry& g = p.geometry;
  std::string err = CheckParameters(p, kernel, gamma, beta);
  if (!err.empty()) return err;
  if (workspace.dz == nullptr) return "the bf16 backward needs a dz workspace (Bf16Workspace::dz)";
  const int64_t channels = g.z_channels();
  const int64_t pixels = g.z_pixels();
  ChannelTerms terms = MakeChannelTerms(gamma, variance, channels, p.epsilon);
  const ImageBlocks blocks = PairedBlocks(g.batch, runtime);
  float* z = nullptr;
  if (!Bf16BackwardInvertsY(gamma, beta, channels, p.negative_slope)) {
    z = workspace.z;
    if (z == nullptr) return "the bf16 backward recomputes z and needs a z workspace";
    if (ConvInFloat(g)) {
      FloatZ(g, runtime, kernel, x, z);
    } else {
      Filters forward;  // z again from x
      PackForward(g, kernel, &forward);
      ComputeAllZ(g, runtime, blocks, forward, x, z);
    }
  }
  const Preactivation pre{y, dy, z, beta, mean, &terms, p.negative_slope};
  std::vector<double> sums(blocks.count() * channels * 2, 0.0);
  // dx of a transposed op is a conv of dz; of a conv, the conv^T of dz. Its filter is packed
  // by the first task while the others sum, not by the caller between the two phases.
  Filters dx_filters;
  runtime.run_tasks(blocks.count() + 1, [&](int64_t task) {
    if (task == 0) {
      if (dx != nullptr && g.transpose) PackFilter(g, kernel, &dx_filters.as_is);
      if (dx != nullptr && !g.transpose) PackFilterTransposed(g, kernel, &dx_filters.transposed);
      return;
    }
    const int64_t b = task - 1;
    double* sum_du = sums.data() + b * channels * 2;
    AccumulateGradSums(pre, blocks.begin(b) * pixels, (blocks.end(b) - blocks.begin(b)) * pixels,
                       channels, sum_du, sum_du + channels);
  });
  SetGradTerms(sums, blocks.count(), channels, static_cast<double>(g.batch * pixels), p.training,
               gamma, &terms, dgamma, dbeta);
  if (ConvInFloat(g) && dx == nullptr) {  // a model's first block: dkernel alone
    const ImagePieces dz_pieces = [&](int64_t first, int64_t end, float* piece) {
      ComputeDz(pre, first * pixels, (end - first) * pixels, channels, piece);
    };
    avx512::Kernels().filter_grad_of_pieces(g, runtime, FloatPieces(x, g.big_pixels() * g.big_c),
                                            dz_pieces, dkernel);
    return "";
  }
  FilterPartials partials(SlotsFor(blocks, runtime), g.patch_size() * g.small_c);
  Bf16* dz = workspace.dz;  // every task writes its images' dz
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    partials.With([&](float* dfilter) {
      BackwardBlock(g, pre, x, dx_filters, blocks.begin(b), blocks.end(b), dz, dx, dfilter);
    });
  });
  partials.Sum(dkernel);
  return "";
}

void Conv(const ConvGeometry& g, const Runtime& runtime, const Bf16* big, const float* filter,
          float* small) {
  PairPacked packed;
  PackFilter(g, filter, &packed);
  const ImageBlocks blocks = EqualBlocks(g.batch, runtime);
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    ConvScratch scratch;
    ConvImages(g, big, packed, blocks.begin(b), blocks.end(b), &scratch, small);
  });
}

void ConvTranspose(const ConvGeometry& g, const Runtime& runtime, const Bf16* small,
                   const float* filter, float* big) {
  PairPacked packed;
  PackFilterTransposed(g, filter, &packed);
  const ImageBlocks blocks = EqualBlocks(g.batch, runtime);
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    ConvScratch scratch;
    ConvTransposeImages(g, small, packed, blocks.begin(b), blocks.end(b), &scratch, big);
  });
}

void FilterGrad(const ConvGeometry& g, const Runtime& runtime, const Bf16* big,
                const Bf16* small, float* dfilter) {
  const ImageBlocks blocks = PairedBlocks(g.batch, runtime);
  FilterPartials partials(SlotsFor(blocks, runtime), g.patch_size() * g.small_c);
  runtime.run_tasks(blocks.count(), [&](int64_t b) {
    ConvScratch scratch;
    partials.With([&](float* partial) {
      FilterGradImages(g, big, small, blocks.begin(b), blocks.end(b), &scratch, partial);
    });
  });
  partials.Sum(dfilter);
}

}  // namespace

const Bf16Kernels& Kernels() {
  static const Bf16Kernels kernels{&Forward, &Backward, &Conv, &ConvTranspose, &FilterGrad};
  return kernels;
}

}  // namespace avx512bf16
}  // namespace pyae

#include "bf16_target_end.h"
