// CPU OpKernels of the output op and its gradient (output_conv.h): check shapes, allocate,
// run the kernels on the op's crew. bfloat16 tensors go to the kernels as their bits.
#include <memory>
#include <string>
#include <vector>

#include "cpu_crew.h"
#include "kernel_args.h"
#include "output_conv.h"
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

class OutputOpBase : public OpKernel {
 public:
  explicit OutputOpBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("activation", &activation_));
    OP_REQUIRES(ctx, strides_.size() == 2,
                absl::InvalidArgumentError("strides must have 2 elements, got " +
                                           std::to_string(strides_.size())));
    OP_REQUIRES_OK(ctx, ContractStatus(CheckStrides(strides_[0], strides_[1])));
  }

 protected:
  absl::Status MakeParams(const Tensor& x, const Tensor& kernel, OutputConvParams* params) const {
    if (x.dims() != 4 || kernel.dims() != 4) {
      return absl::InvalidArgumentError("x and kernel must be rank 4, got shapes " +
                                        x.shape().DebugString() + " and " +
                                        kernel.shape().DebugString());
    }
    const int64_t x_shape[4] = {x.dim_size(0), x.dim_size(1), x.dim_size(2), x.dim_size(3)};
    const int64_t k_shape[4] = {kernel.dim_size(0), kernel.dim_size(1), kernel.dim_size(2),
                                kernel.dim_size(3)};
    return ContractStatus(MakeOutputConvParams(x_shape, k_shape, strides_[0], strides_[1],
                                               activation_, params));
  }

  static TensorShape YShape(const ConvGeometry& g) {
    return TensorShape({g.batch, g.big_h, g.big_w, g.big_c});
  }

 private:
  std::vector<int32_t> strides_;
  std::string activation_;
};

template <typename T>
class OutputOp : public OutputOpBase {
 public:
  using OutputOpBase::OutputOpBase;

  void Compute(OpKernelContext* ctx) override {
    const std::unique_ptr<Crew> crew = CrewFor(ctx);  // first: its helpers wake during setup
    const Tensor& x = ctx->input(0);
    const Tensor& kernel = ctx->input(1);
    const Tensor& bias = ctx->input(2);
    OutputConvParams params;
    OP_REQUIRES_OK(ctx, MakeParams(x, kernel, &params));
    OP_REQUIRES(ctx, bias.dims() == 1 && bias.dim_size(0) == params.geometry.big_c,
                absl::InvalidArgumentError("bias must have shape [" +
                                           std::to_string(params.geometry.big_c) +
                                           "] to match the kernel, got " +
                                           bias.shape().DebugString()));
    Tensor* y;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, YShape(params.geometry), &y));
    OP_REQUIRES_OK(ctx, ContractStatus(OutputConvForward(
                            params, crew->AsRuntime(), Values<T>(x), kernel.flat<float>().data(),
                            bias.flat<float>().data(), MutableValues<T>(y))));
  }
};

template <typename T>
class OutputGradOp : public OutputOpBase {
 public:
  using OutputOpBase::OutputOpBase;

  void Compute(OpKernelContext* ctx) override {
    const std::unique_ptr<Crew> crew = CrewFor(ctx);  // first: its helpers wake during setup
    const Tensor& dy = ctx->input(0);
    const Tensor& y = ctx->input(1);
    const Tensor& x = ctx->input(2);
    const Tensor& kernel = ctx->input(3);
    OutputConvParams params;
    OP_REQUIRES_OK(ctx, MakeParams(x, kernel, &params));
    const TensorShape y_shape = YShape(params.geometry);
    OP_REQUIRES(ctx, dy.shape() == y_shape && y.shape() == y_shape,
                absl::InvalidArgumentError("dy and y must have the output's shape " +
                                           y_shape.DebugString() + ", got " +
                                           dy.shape().DebugString() + " and " +
                                           y.shape().DebugString()));
    Tensor *dx, *dkernel, *dbias;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, kernel.shape(), &dkernel));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({params.geometry.big_c}), &dbias));
    OP_REQUIRES_OK(ctx, ContractStatus(OutputConvBackward(
                            params, crew->AsRuntime(), Values<T>(dy), Values<T>(y),
                            Values<T>(x), kernel.flat<float>().data(), MutableValues<T>(dx),
                            dkernel->flat<float>().data(), dbias->flat<float>().data())));
  }
};

}  // namespace
}  // namespace pyae

#define PYAE_REGISTER_OUTPUT_KERNELS(T)                                                     \
  REGISTER_KERNEL_BUILDER(                                                                  \
      Name("PyaeConvTransposeOutput").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      pyae::OutputOp<T>);                                                                   \
  REGISTER_KERNEL_BUILDER(Name("PyaeConvTransposeOutputGrad")                               \
                              .Device(::tensorflow::DEVICE_CPU)                             \
                              .TypeConstraint<T>("T"),                                      \
                          pyae::OutputGradOp<T>);

PYAE_REGISTER_OUTPUT_KERNELS(float)
PYAE_REGISTER_OUTPUT_KERNELS(::tensorflow::bfloat16)
