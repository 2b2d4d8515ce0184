// Attribute parsing and input checks shared by the CPU and GPU OpKernels of the fused op
// (ops/tf/fused_kernels.cc, ops/tf/fused_kernels_gpu.cc), so both reject bad input with the
// same InvalidArgumentError.
#ifndef PYAE_OPS_TF_FUSED_OP_BASE_H_
#define PYAE_OPS_TF_FUSED_OP_BASE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "conv_geometry.h"
#include "fused_conv_bn_lrelu.h"
#include "kernel_args.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace pyae {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

inline std::string ShapeString(const Tensor& t) { return t.shape().DebugString(); }

class FusedOpBase : public OpKernel {
 public:
  explicit FusedOpBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::vector<int32_t> strides;
    std::string padding;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &params_.epsilon));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("negative_slope", &params_.negative_slope));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("is_training", &params_.training));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("transpose", &transpose_));
    OP_REQUIRES(ctx, strides.size() == 2,
                absl::InvalidArgumentError("strides must have 2 elements, got " +
                                           std::to_string(strides.size())));
    OP_REQUIRES_OK(ctx, ContractStatus(CheckStrides(strides[0], strides[1])));
    OP_REQUIRES_OK(ctx, ContractStatus(CheckOpParams(params_.epsilon, params_.negative_slope)));
    OP_REQUIRES_OK(ctx, ContractStatus(ParsePadding(padding, &padding_)));
    stride_h_ = strides[0];
    stride_w_ = strides[1];
  }

 protected:
  // Fills params->geometry from x and kernel, or says why they disagree.
  absl::Status MakeParams(const Tensor& x, const Tensor& kernel, FusedParams* params) const {
    if (x.dims() != 4) {
      return absl::InvalidArgumentError("x must be rank 4 (NHWC), got shape " + ShapeString(x));
    }
    if (kernel.dims() != 4) {
      return absl::InvalidArgumentError("kernel must be rank 4, got shape " + ShapeString(kernel));
    }
    const int64_t x_shape[4] = {x.dim_size(0), x.dim_size(1), x.dim_size(2), x.dim_size(3)};
    const int64_t k_shape[4] = {kernel.dim_size(0), kernel.dim_size(1), kernel.dim_size(2),
                                kernel.dim_size(3)};
    *params = params_;
    return ContractStatus(MakeGeometry(x_shape, k_shape, stride_h_, stride_w_, padding_,
                                       transpose_, &params->geometry));
  }

  static absl::Status CheckVector(const Tensor& t, const char* name, int64_t channels) {
    if (t.dims() == 1 && t.dim_size(0) == channels) return absl::OkStatus();
    return absl::InvalidArgumentError(std::string(name) + " must have shape [" +
                                      std::to_string(channels) +
                                      "] to match the kernel's filters, got " + ShapeString(t));
  }

  // Checks every input of the forward op against x and the kernel; fills params.
  absl::Status CheckForwardInputs(OpKernelContext* ctx, FusedParams* params) const {
    TF_RETURN_IF_ERROR(MakeParams(ctx->input(0), ctx->input(1), params));
    const char* names[] = {"gamma", "beta", "moving_mean", "moving_variance"};
    for (int i = 0; i < 4; ++i) {
      TF_RETURN_IF_ERROR(CheckVector(ctx->input(2 + i), names[i], params->geometry.z_channels()));
    }
    return absl::OkStatus();
  }

  // Checks every input of the gradient op (dy, x, kernel, gamma, beta, y, mean, variance).
  absl::Status CheckGradInputs(OpKernelContext* ctx, FusedParams* params) const {
    TF_RETURN_IF_ERROR(MakeParams(ctx->input(1), ctx->input(2), params));
    const char* names[] = {"gamma", "beta", "mean", "variance"};
    const int indices[] = {3, 4, 6, 7};
    for (int i = 0; i < 4; ++i) {
      TF_RETURN_IF_ERROR(
          CheckVector(ctx->input(indices[i]), names[i], params->geometry.z_channels()));
    }
    const Tensor& dy = ctx->input(0);
    const Tensor& y = ctx->input(5);
    const TensorShape z_shape = ZShape(params->geometry);
    if (dy.shape() == z_shape && y.shape() == z_shape) return absl::OkStatus();
    return absl::InvalidArgumentError("dy " + ShapeString(dy) + " and y " + ShapeString(y) +
                                      " must have the output's shape " + z_shape.DebugString());
  }

  // dx, dkernel, dgamma, dbeta, shaped like x, the kernel and gamma. With `skip_unused_dx`,
  // dx is left null when nothing in the graph reads it (a model's first layer).
  static absl::Status AllocateGradOutputs(OpKernelContext* ctx, int64_t channels,
                                          Tensor* outputs[4], bool skip_unused_dx = false) {
    outputs[0] = nullptr;
    if (!skip_unused_dx || ctx->output_required(0)) {
      TF_RETURN_IF_ERROR(ctx->allocate_output(0, ctx->input(1).shape(), &outputs[0]));
    }
    TF_RETURN_IF_ERROR(ctx->allocate_output(1, ctx->input(2).shape(), &outputs[1]));
    TF_RETURN_IF_ERROR(ctx->allocate_output(2, TensorShape({channels}), &outputs[2]));
    return ctx->allocate_output(3, TensorShape({channels}), &outputs[3]);
  }

  static TensorShape ZShape(const ConvGeometry& g) {
    const auto shape = g.z_shape();
    return TensorShape({shape[0], shape[1], shape[2], shape[3]});
  }

  FusedParams params_;
  bool transpose_ = false;
  int64_t stride_h_ = 1, stride_w_ = 1;
  Padding padding_ = Padding::kSame;
};

}  // namespace pyae

#endif  // PYAE_OPS_TF_FUSED_OP_BASE_H_
