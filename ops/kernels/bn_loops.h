// The batch-norm loops both fused ops share (float32: fused_conv_bn_lrelu.cc, one copy per
// instruction set; bf16: fused_bf16.cc): image blocks per task, the moments' float runs summed
// in double, per-task partials, the parameter checks, and the statistics and backward terms
// made from the sums.
//
// Include it after the source's target pragma (isa_target.h or bf16_target.h), after every
// other header, inside no namespace. Its functions have internal linkage, so each source
// compiles its own copy with its own instructions (the loops vectorise to that path's width),
// and the linker never lets one path's copy stand in for another's. It uses <algorithm>,
// <cmath>, <sstream>, <string>, <vector>, fused_conv_bn_lrelu.h and parallel.h, which the
// source includes before the pragma.
#pragma once

namespace pyae {
namespace {

// Images split into one contiguous range per task: block b is images [bounds[b], bounds[b + 1]).
struct ImageBlocks {
  std::vector<int64_t> bounds;
  int64_t count() const { return static_cast<int64_t>(bounds.size()) - 1; }
  int64_t begin(int64_t block) const { return bounds[block]; }
  int64_t end(int64_t block) const { return bounds[block + 1]; }
};

inline ImageBlocks BlocksOf(int64_t batch, int64_t size) {
  ImageBlocks blocks{{0}};
  for (int64_t image = 0; image < batch;) {
    image = std::min(batch, image + size);
    blocks.bounds.push_back(image);
  }
  return blocks;
}

// A few equal blocks per thread, so a thread that another op holds up does not leave the rest
// of the op waiting on its one large block.
inline ImageBlocks EqualBlocks(int64_t batch, const Runtime& runtime) {
  constexpr int64_t kBlocksPerThread = 4;
  const int64_t wanted = std::max<int64_t>(1, kBlocksPerThread * runtime.num_threads);
  return BlocksOf(batch, (batch + wanted - 1) / wanted);
}

// Rows are summed in float over short runs (exact enough: at most kRunRows terms) and the
// runs in double, which keeps the inner loop vectorised.
constexpr int64_t kRunRows = 64;

inline void AccumulateMoments(const float* __restrict z, int64_t rows, int64_t channels,
                              double* sum, double* sum_sq) {
  std::vector<float> run(2 * channels);
  float* __restrict rs = run.data();
  float* __restrict rq = rs + channels;
  for (int64_t r0 = 0; r0 < rows; r0 += kRunRows) {
    std::fill(run.begin(), run.end(), 0.0f);
    const int64_t r1 = std::min(rows, r0 + kRunRows);
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict row = z + r * channels;
      for (int64_t c = 0; c < channels; ++c) {
        rs[c] += row[c];
        rq[c] += row[c] * row[c];
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      sum[c] += rs[c];
      sum_sq[c] += rq[c];
    }
  }
}

// Sums a [count, length] array of per-task partials into out[length].
template <typename T>
void SumPartials(const std::vector<T>& partials, int64_t count, int64_t length, T* out) {
  for (int64_t i = 0; i < length; ++i) out[i] = 0;
  for (int64_t b = 0; b < count; ++b) {
    for (int64_t i = 0; i < length; ++i) out[i] += partials[b * length + i];
  }
}

inline std::string CheckFinite(const char* name, const float* values, int64_t count) {
  // A branch-free pass first (v - v is 0 for finite v, NaN otherwise), so the common case
  // vectorises; only a failed check looks for the element to name.
  float probe[16] = {};
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    for (int lane = 0; lane < 16; ++lane) probe[lane] += values[i + lane] - values[i + lane];
  }
  float total = 0.0f;
  for (; i < count; ++i) total += values[i] - values[i];
  for (float lane : probe) total += lane;
  if (total == 0.0f) return "";
  for (int64_t k = 0; k < count; ++k) {
    if (!std::isfinite(values[k])) {
      std::ostringstream err;
      err << name << " contains NaN or Inf (element " << k << " is " << values[k] << ")";
      return err.str();
    }
  }
  return "";
}

inline std::string CheckParameters(const FusedParams& p, const float* kernel, const float* gamma,
                                   const float* beta) {
  const ConvGeometry& g = p.geometry;
  std::string err = CheckOpParams(p.epsilon, p.negative_slope);  // the contract's rule
  if (err.empty()) err = CheckFinite("kernel", kernel, g.patch_size() * g.small_c);
  if (err.empty()) err = CheckFinite("gamma", gamma, g.z_channels());
  if (err.empty()) err = CheckFinite("beta", beta, g.z_channels());
  return err;
}

// Inference's statistics: finite, and var + epsilon > 0 (BN takes its square root): a moving
// variance at or below -epsilon is an invalid parameter, not a NaN in x.
inline std::string CheckMovingStatistics(const FusedParams& p, const float* mean,
                                         const float* variance) {
  const int64_t channels = p.geometry.z_channels();
  std::string err = CheckFinite("moving_mean", mean, channels);
  if (err.empty()) err = CheckFinite("moving_variance", variance, channels);
  if (!err.empty()) return err;
  for (int64_t c = 0; c < channels; ++c) {
    if (!(variance[c] + p.epsilon > 0.0f)) {
      std::ostringstream out;
      out << "moving_variance + epsilon must be > 0 (element " << c << " is " << variance[c]
          << ", epsilon " << p.epsilon << ")";
      return out.str();
    }
  }
  return "";
}

// The batch's mean and biased variance from per-task [sum, sum of squares] partials over
// `count` values per channel. NaN or Inf in x propagates to them, as in Keras (std::max keeps
// NaN).
inline void StatisticsFromMoments(const std::vector<double>& partials, int64_t tasks,
                                  int64_t channels, double count, float* mean_out,
                                  float* variance_out) {
  std::vector<double> totals(channels * 2);
  SumPartials(partials, tasks, channels * 2, totals.data());
  for (int64_t c = 0; c < channels; ++c) {
    const double mean = totals[c] / count;
    mean_out[c] = static_cast<float>(mean);
    variance_out[c] = static_cast<float>(std::max(totals[channels + c] / count - mean * mean, 0.0));
  }
}

// The backward's per-channel terms: rstd = 1 / sqrt(var + eps), 1 / gamma, and those of
// dz = dz_du * du + dz_bias + dz_xhat * xhat.
struct ChannelTerms {
  std::vector<float> rstd, inv_gamma, dz_du, dz_bias, dz_xhat;
};

inline ChannelTerms MakeChannelTerms(const float* gamma, const float* variance, int64_t channels,
                                     float epsilon) {
  ChannelTerms terms;
  terms.rstd.resize(channels);
  terms.inv_gamma.resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    terms.rstd[c] = 1.0f / std::sqrt(variance[c] + epsilon);
    terms.inv_gamma[c] = 1.0f / gamma[c];
  }
  return terms;
}

// dbeta, dgamma and dz's terms from per-task [sum du, sum du * xhat] partials over `count`
// values per channel (in inference the statistics are constants: dz = gamma rstd du).
inline void SetGradTerms(const std::vector<double>& partials, int64_t tasks, int64_t channels,
                         double count, bool training, const float* gamma, ChannelTerms* terms,
                         float* dgamma, float* dbeta) {
  std::vector<double> totals(channels * 2);
  SumPartials(partials, tasks, channels * 2, totals.data());
  terms->dz_du.resize(channels);
  terms->dz_bias.resize(channels);
  terms->dz_xhat.resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    dbeta[c] = static_cast<float>(totals[c]);
    dgamma[c] = static_cast<float>(totals[channels + c]);
    terms->dz_du[c] = gamma[c] * terms->rstd[c];
    terms->dz_bias[c] = training ? static_cast<float>(-terms->dz_du[c] * totals[c] / count) : 0.f;
    terms->dz_xhat[c] =
        training ? static_cast<float>(-terms->dz_du[c] * totals[channels + c] / count) : 0.f;
  }
}

}  // namespace
}  // namespace pyae
