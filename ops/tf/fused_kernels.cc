// CPU OpKernels of the fused op and its gradient: check inputs, allocate, call the kernels.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "conv_geometry.h"
#include "cpu_crew.h"
#include "fused_conv_bn_lrelu.h"
#include "fused_op_base.h"
#include "isa.h"
#include "parallel.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace pyae {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

class FusedConvBnLeakyReluOp : public FusedOpBase {
 public:
  using FusedOpBase::FusedOpBase;

  void Compute(OpKernelContext* ctx) override {
    const std::unique_ptr<Crew> crew = CrewFor(ctx);  // first: its helpers wake during setup
    const Tensor& x = ctx->input(0);
    const Tensor& kernel = ctx->input(1);
    FusedParams params;
    OP_REQUIRES_OK(ctx, CheckForwardInputs(ctx, &params));
    const int64_t channels = params.geometry.z_channels();
    Tensor *y, *mean, *variance;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ZShape(params.geometry), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({channels}), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({channels}), &variance));
    OP_REQUIRES_OK(ctx, ContractStatus(FusedForward(
                            params, crew->AsRuntime(), x.flat<float>().data(),
                            kernel.flat<float>().data(), ctx->input(2).flat<float>().data(),
                            ctx->input(3).flat<float>().data(), ctx->input(4).flat<float>().data(),
                            ctx->input(5).flat<float>().data(), y->flat<float>().data(),
                            mean->flat<float>().data(), variance->flat<float>().data())));
  }
};

class FusedConvBnLeakyReluGradOp : public FusedOpBase {
 public:
  using FusedOpBase::FusedOpBase;

  void Compute(OpKernelContext* ctx) override {
    const std::unique_ptr<Crew> crew = CrewFor(ctx);  // first: its helpers wake during setup
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& kernel = ctx->input(2);
    const Tensor& y = ctx->input(5);
    FusedParams params;
    OP_REQUIRES_OK(ctx, CheckGradInputs(ctx, &params));
    Tensor* grads[4];
    OP_REQUIRES_OK(ctx, AllocateGradOutputs(ctx, params.geometry.z_channels(), grads,
                                            /*skip_unused_dx=*/true));
    Tensor *dx = grads[0], *dkernel = grads[1], *dgamma = grads[2], *dbeta = grads[3];
    OP_REQUIRES_OK(ctx, ContractStatus(FusedBackward(
                            params, crew->AsRuntime(), dy.flat<float>().data(),
                            x.flat<float>().data(), kernel.flat<float>().data(),
                            ctx->input(3).flat<float>().data(), ctx->input(4).flat<float>().data(),
                            y.flat<float>().data(), ctx->input(6).flat<float>().data(),
                            ctx->input(7).flat<float>().data(),
                            dx != nullptr ? dx->flat<float>().data() : nullptr,
                            dkernel->flat<float>().data(), dgamma->flat<float>().data(),
                            dbeta->flat<float>().data())));
  }
};

}  // namespace
}  // namespace pyae

// The kernels' path, for pyae.ops (through ctypes, on the library TF has loaded): each returns
// the number of bytes its text needs, and writes as much of it as `size` allows into `out`.
namespace {

int64_t CopyOut(const std::string& text, char* out, int64_t size) {
  if (size > 0) {
    const int64_t n = std::min<int64_t>(size - 1, text.size());
    std::copy(text.begin(), text.begin() + n, out);
    out[n] = '\0';
  }
  return static_cast<int64_t>(text.size()) + 1;
}

}  // namespace

// Picks the path ("avx512", "avx2", "generic" or "auto"); `out` gets "" or the error.
extern "C" __attribute__((visibility("default"))) int64_t pyae_select_isa(const char* name,
                                                                           char* out,
                                                                           int64_t size) {
  return CopyOut(pyae::SelectIsa(name), out, size);
}

// Lines: the path in use, why, the error that stops the kernels ("" if none), the paths built
// and the ones this CPU runs (comma-separated).
extern "C" __attribute__((visibility("default"))) int64_t pyae_isa_info(char* out,
                                                                         int64_t size) {
  const pyae::IsaChoice choice = pyae::ActiveIsa();
  std::string supported;
  for (pyae::Isa isa : {pyae::Isa::kAvx512, pyae::Isa::kAvx2, pyae::Isa::kGeneric}) {
    if (!pyae::IsaSupported(isa)) continue;
    supported += (supported.empty() ? "" : ",") + std::string(pyae::IsaName(isa));
  }
  return CopyOut(std::string(pyae::IsaName(choice.isa)) + "\n" + choice.reason + "\n" +
                     choice.error + "\n" + pyae::BuiltIsas() + "\n" + supported,
                 out, size);
}

REGISTER_KERNEL_BUILDER(Name("PyaeFusedConvBnLeakyRelu").Device(::tensorflow::DEVICE_CPU),
                        pyae::FusedConvBnLeakyReluOp);
REGISTER_KERNEL_BUILDER(Name("PyaeFusedConvBnLeakyReluGrad").Device(::tensorflow::DEVICE_CPU),
                        pyae::FusedConvBnLeakyReluGradOp);
