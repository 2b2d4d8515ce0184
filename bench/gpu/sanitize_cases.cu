// Small calls of every path of the CUDA fused op, for compute-sanitizer (memcheck,
// racecheck): conv and transposed conv, SAME and VALID, strides 1 to 3, training and
// inference, FMA and TF32, and the backward's recompute path (a zero gamma, a large beta,
// slope 0). Inputs are random, every output is poisoned with NaN first and must come back
// finite. Only the C API and the CUDA runtime are involved, so the sanitizer sees this
// project's kernels alone (no framework's kernels, allocator or caching).
//
// Built by bench/gpu/run.sh (target pyae_cuda_sanitize); exit status 0 when every call
// succeeded and wrote every output element.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <cuda_runtime_api.h>

#include "fused_conv_bn_lrelu_cuda.h"

namespace {

struct Case {
  const char* name;
  int batch, height, width, in_c, out_c, kernel_h, kernel_w, stride_h, stride_w;
  int same, transpose;
  float slope;
  int gamma_kind;  // 0: random, 1: gamma[0] = 0, 2: beta[0] = 100 |gamma[0]|
};

const Case kCases[] = {
    {"conv 9x9x3->5 k3 s2 same", 2, 9, 9, 3, 5, 3, 3, 2, 2, 1, 0, 0.3f, 0},
    {"conv 8x7x4->6 k5x3 s1x2 valid", 2, 8, 7, 4, 6, 5, 3, 1, 2, 0, 0, 0.3f, 0},
    {"conv 6x6x70->130 k3 s1 same", 1, 6, 6, 70, 130, 3, 3, 1, 1, 1, 0, 0.3f, 0},
    {"convT 5x5x3->5 k3 s2 same", 2, 5, 5, 3, 5, 3, 3, 2, 2, 1, 1, 0.3f, 0},
    {"convT 4x5x3->4 k2 s3 valid", 2, 4, 5, 3, 4, 2, 2, 3, 3, 0, 1, 0.3f, 0},
    {"convT 5x5x70->130 k3 s2 same", 1, 5, 5, 70, 130, 3, 3, 2, 2, 1, 1, 0.3f, 0},
    {"recompute: gamma 0", 2, 7, 7, 3, 4, 3, 3, 1, 1, 1, 0, 0.3f, 1},
    {"recompute: beta > 64 gamma", 2, 5, 5, 3, 4, 3, 3, 2, 2, 1, 1, 0.3f, 2},
    {"recompute: slope 0", 2, 7, 7, 3, 4, 3, 3, 2, 2, 0, 0, 0.0f, 0},
};

// A fixed-seed generator: fresh, non-zero values without a library.
struct Random {
  uint64_t state;
  float uniform() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<float>((state >> 40) & 0xFFFFFF) / 16777216.0f;
  }
  std::vector<float> fill(size_t n, float low, float high) {
    std::vector<float> values(n);
    for (float& v : values) v = low + (high - low) * uniform();
    return values;
  }
};

bool failed(const char* what, const char* error) {
  if (error == nullptr) return false;
  std::printf("  FAIL %s: %s\n", what, error);
  return true;
}

bool cuda_failed(const char* what, cudaError_t err) {
  return err != cudaSuccess && failed(what, cudaGetErrorString(err));
}

// Device copy of a host vector, or of `n` poisoned floats (0xFF bytes are a NaN).
struct Buffer {
  float* data = nullptr;
  size_t count = 0;
  explicit Buffer(size_t n) : count(n) {
    if (cudaMalloc(&data, n * sizeof(float)) != cudaSuccess) data = nullptr;
    else cudaMemset(data, 0xFF, n * sizeof(float));
  }
  explicit Buffer(const std::vector<float>& host) : Buffer(host.size()) {
    if (data != nullptr) {
      cudaMemcpy(data, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice);
    }
  }
  ~Buffer() { cudaFree(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  // Number of elements that are not finite (never written, or NaN computed).
  size_t non_finite() const {
    std::vector<float> host(count);
    cudaMemcpy(host.data(), data, count * sizeof(float), cudaMemcpyDeviceToHost);
    size_t bad = 0;
    for (float v : host) bad += std::isfinite(v) ? 0 : 1;
    return bad;
  }
};

bool all_written(const char* name, const Buffer& buffer) {
  const size_t bad = buffer.non_finite();
  if (bad == 0) return true;
  std::printf("  FAIL %s: %zu of %zu elements not finite\n", name, bad, buffer.count);
  return false;
}

bool run_call(const Case& c, const PyaeConvShape& shape, bool training, bool tf32,
              Random& random, cudaStream_t stream) {
  const size_t x_n = size_t(c.batch) * c.height * c.width * c.in_c;
  const size_t y_n = size_t(shape.batch) * shape.out_h * shape.out_w * shape.out_c;
  const size_t w_n = size_t(c.kernel_h) * c.kernel_w * c.in_c * c.out_c;
  const size_t ch = size_t(c.out_c);
  std::vector<float> gamma = random.fill(ch, 0.5f, 1.5f), beta = random.fill(ch, -0.5f, 0.5f);
  if (c.gamma_kind == 1) gamma[0] = 0.0f;
  if (c.gamma_kind == 2) beta[0] = 100.0f * std::fabs(gamma[0]);
  Buffer x(random.fill(x_n, -1.0f, 1.0f)), w(random.fill(w_n, -0.3f, 0.3f));
  Buffer g(gamma), b(beta), dy(random.fill(y_n, -1.0f, 1.0f));
  Buffer moving_mean(random.fill(ch, -0.1f, 0.1f)), moving_var(random.fill(ch, 0.5f, 1.5f));
  Buffer y(y_n), batch_mean(ch), batch_var(ch), dx(x_n), dw(w_n), dgamma(ch), dbeta(ch);
  const PyaeFusedParams params{1e-3f, c.slope, training ? 1 : 0, tf32 ? 1 : 0};

  void* workspace = nullptr;
  size_t bytes = pyae_cuda_forward_workspace_bytes(&shape, params.training);
  if (bytes > 0 && cuda_failed("workspace", cudaMallocAsync(&workspace, bytes, stream))) {
    return false;
  }
  bool ok = !failed("forward", pyae_cuda_fused_forward(
                                   &shape, &params, x.data, w.data, g.data, b.data,
                                   moving_mean.data, moving_var.data, y.data,
                                   training ? batch_mean.data : nullptr,
                                   training ? batch_var.data : nullptr, workspace, bytes, stream));
  if (workspace != nullptr) cudaFreeAsync(workspace, stream);
  workspace = nullptr;
  const Buffer& mean = training ? batch_mean : moving_mean;
  const Buffer& var = training ? batch_var : moving_var;
  bytes = pyae_cuda_backward_workspace_bytes(&shape);
  if (ok && bytes > 0 && cuda_failed("workspace", cudaMallocAsync(&workspace, bytes, stream))) {
    return false;
  }
  ok = ok && !failed("backward", pyae_cuda_fused_backward(
                                     &shape, &params, x.data, w.data, g.data, b.data, y.data,
                                     mean.data, var.data, dy.data, dx.data, dw.data, dgamma.data,
                                     dbeta.data, workspace, bytes, stream));
  if (workspace != nullptr) cudaFreeAsync(workspace, stream);
  ok = ok && !cuda_failed("synchronize", cudaStreamSynchronize(stream));
  if (!ok) return false;
  ok = all_written("y", y) && all_written("dx", dx) && all_written("dw", dw);
  ok = all_written("dgamma", dgamma) && all_written("dbeta", dbeta) && ok;
  if (training) ok = all_written("batch_mean", batch_mean) && all_written("batch_var", batch_var) && ok;
  return ok;
}

}  // namespace

int main() {
  cudaStream_t stream;
  if (cuda_failed("stream", cudaStreamCreate(&stream))) return 2;
  Random random{12345};
  int failures = 0, calls = 0;
  for (const Case& c : kCases) {
    PyaeConvShape shape;
    const int weight2 = c.transpose ? c.out_c : c.in_c, weight3 = c.transpose ? c.in_c : c.out_c;
    if (failed(c.name, pyae_cuda_make_conv_shape(c.batch, c.height, c.width, c.in_c, c.kernel_h,
                                                 c.kernel_w, weight2, weight3, c.stride_h,
                                                 c.stride_w, c.same, c.transpose, &shape))) {
      ++failures;
      continue;
    }
    for (int training = 1; training >= 0; --training) {
      for (int tf32 = 0; tf32 <= 1; ++tf32) {
        ++calls;
        const bool ok = run_call(c, shape, training != 0, tf32 != 0, random, stream);
        failures += ok ? 0 : 1;
        std::printf("%s  %-34s %s %s\n", ok ? "ok  " : "FAIL", c.name,
                    training ? "train" : "infer", tf32 ? "tf32" : "fma");
      }
    }
  }
  cudaStreamDestroy(stream);
  std::printf("sanitize cases: %d calls, %d failed\n", calls, failures);
  return failures == 0 ? 0 : 1;
}
