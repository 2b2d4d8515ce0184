// CPU OpKernels of the bf16 fused op and its gradient (fused_bf16.h): the same checks as the
// float32 op (fused_op_base.h), then the bf16 kernels on the tensors' bits.
#include <algorithm>
#include <memory>
#include <string>

#include "cpu_crew.h"
#include "fused_bf16.h"
#include "fused_op_base.h"
#include "parallel.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace pyae {
namespace {

using ::tensorflow::bfloat16;

const float* Floats(const Tensor& t) { return t.flat<float>().data(); }

// A workspace of `count` values from TensorFlow's allocator (which reuses its memory from step
// to step; see Bf16Workspace).
template <typename T>
::tensorflow::Status AllocateWorkspace(OpKernelContext* ctx, int64_t count, Tensor* tensor,
                                       T** data) {
  const ::tensorflow::Status status =
      ctx->allocate_temp(::tensorflow::DataTypeToEnum<T>::value, TensorShape({count}), tensor);
  if (status.ok()) *data = tensor->flat<T>().data();
  return status;
}

int64_t ZValues(const ConvGeometry& g) { return g.batch * g.z_pixels() * g.z_channels(); }

class FusedBf16Op : public FusedOpBase {
 public:
  using FusedOpBase::FusedOpBase;

  void Compute(OpKernelContext* ctx) override {
    const std::unique_ptr<Crew> crew = CrewFor(ctx);
    FusedParams params;
    OP_REQUIRES_OK(ctx, CheckForwardInputs(ctx, &params));
    const int64_t channels = params.geometry.z_channels();
    Tensor *y, *mean, *variance;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ZShape(params.geometry), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({channels}), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({channels}), &variance));
    Tensor z;
    Bf16Workspace workspace;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, ZValues(params.geometry), &z, &workspace.z));
    OP_REQUIRES_OK(ctx, ContractStatus(FusedForwardBf16(
                            params, crew->AsRuntime(), Values<bfloat16>(ctx->input(0)),
                            Floats(ctx->input(1)), Floats(ctx->input(2)), Floats(ctx->input(3)),
                            Floats(ctx->input(4)), Floats(ctx->input(5)),
                            MutableValues<bfloat16>(y), mean->flat<float>().data(),
                            variance->flat<float>().data(), workspace)));
  }
};

class FusedBf16GradOp : public FusedOpBase {
 public:
  using FusedOpBase::FusedOpBase;

  void Compute(OpKernelContext* ctx) override {
    const std::unique_ptr<Crew> crew = CrewFor(ctx);
    FusedParams params;
    OP_REQUIRES_OK(ctx, CheckGradInputs(ctx, &params));
    Tensor* grads[4];
    OP_REQUIRES_OK(ctx, AllocateGradOutputs(ctx, params.geometry.z_channels(), grads,
                                            /*skip_unused_dx=*/true));
    const ConvGeometry& g = params.geometry;
    Tensor z, dz;
    Bf16Workspace workspace;
    bfloat16* dz_values = nullptr;
    OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, ZValues(g), &dz, &dz_values));
    workspace.dz = reinterpret_cast<Bf16*>(dz_values);
    if (!Bf16BackwardInvertsY(Floats(ctx->input(3)), Floats(ctx->input(4)), g.z_channels(),
                              params.negative_slope)) {
      OP_REQUIRES_OK(ctx, AllocateWorkspace(ctx, ZValues(g), &z, &workspace.z));
    }
    OP_REQUIRES_OK(ctx, ContractStatus(FusedBackwardBf16(
                            params, crew->AsRuntime(), Values<bfloat16>(ctx->input(0)),
                            Values<bfloat16>(ctx->input(1)), Floats(ctx->input(2)),
                            Floats(ctx->input(3)), Floats(ctx->input(4)),
                            Values<bfloat16>(ctx->input(5)), Floats(ctx->input(6)),
                            Floats(ctx->input(7)),
                            grads[0] != nullptr ? MutableValues<bfloat16>(grads[0]) : nullptr,
                            grads[1]->flat<float>().data(), grads[2]->flat<float>().data(),
                            grads[3]->flat<float>().data(), workspace)));
  }
};

}  // namespace
}  // namespace pyae

// The bf16 kernels' path for pyae.ops (ctypes, as pyae_isa_info): "path\nreason". Returns the
// bytes the text needs and writes as much as `size` allows.
extern "C" __attribute__((visibility("default"))) int64_t pyae_bf16_info(char* out,
                                                                          int64_t size) {
  const pyae::Bf16Choice choice = pyae::ActiveBf16Path();
  const std::string text = std::string(pyae::Bf16PathName(choice.path)) + "\n" + choice.reason;
  if (size > 0) {
    const int64_t n = std::min<int64_t>(size - 1, text.size());
    std::copy(text.begin(), text.begin() + n, out);
    out[n] = '\0';
  }
  return static_cast<int64_t>(text.size()) + 1;
}

REGISTER_KERNEL_BUILDER(Name("PyaeFusedConvBnLeakyReluBf16").Device(::tensorflow::DEVICE_CPU),
                        pyae::FusedBf16Op);
REGISTER_KERNEL_BUILDER(Name("PyaeFusedConvBnLeakyReluBf16Grad").Device(::tensorflow::DEVICE_CPU),
                        pyae::FusedBf16GradOp);
