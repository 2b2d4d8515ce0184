// Registration of the fused op and its gradient: signatures and shape functions only.
#include "conv_geometry.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace pyae {
namespace {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

absl::Status ForwardShape(InferenceContext* c) {
  ShapeHandle x, kernel;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &kernel));
  std::vector<int32_t> strides;
  std::string padding;
  bool transpose;
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  TF_RETURN_IF_ERROR(c->GetAttr("transpose", &transpose));
  if (strides.size() != 2) {
    return absl::InvalidArgumentError("strides must have 2 elements, got " +
                                      std::to_string(strides.size()));
  }
  Padding padding_kind;
  const std::string padding_error = ParsePadding(padding, &padding_kind);
  if (!padding_error.empty()) return absl::InvalidArgumentError(padding_error);
  std::vector<DimensionHandle> dims = {c->Dim(x, 0)};
  for (int axis = 0; axis < 2; ++axis) {
    DimensionHandle in = c->Dim(x, axis + 1), k = c->Dim(kernel, axis);
    if (c->ValueKnown(in) && c->ValueKnown(k) && strides[axis] >= 1) {
      dims.push_back(c->MakeDim(
          OutputLength(c->Value(in), c->Value(k), strides[axis], padding_kind, transpose)));
    } else {
      dims.push_back(c->UnknownDim());
    }
  }
  DimensionHandle filters = c->Dim(kernel, transpose ? 2 : 3);
  dims.push_back(filters);
  c->set_output(0, c->MakeShape(dims));
  c->set_output(1, c->Vector(filters));
  c->set_output(2, c->Vector(filters));
  return absl::OkStatus();
}

absl::Status GradShape(InferenceContext* c) {
  c->set_output(0, c->input(1));  // dx like x
  c->set_output(1, c->input(2));  // dkernel like kernel
  c->set_output(2, c->input(3));  // dgamma like gamma
  c->set_output(3, c->input(3));  // dbeta like gamma
  return absl::OkStatus();
}

}  // namespace
}  // namespace pyae

#define PYAE_FUSED_ATTRS                                 \
  Attr("strides: list(int) = [1, 1]")                    \
      .Attr("padding: {'SAME', 'VALID'} = 'SAME'")       \
      .Attr("epsilon: float = 0.001")                    \
      .Attr("negative_slope: float = 0.3")               \
      .Attr("is_training: bool = false")                 \
      .Attr("transpose: bool = false")

REGISTER_OP("PyaeFusedConvBnLeakyRelu")
    .Input("x: float")
    .Input("kernel: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("moving_mean: float")
    .Input("moving_variance: float")
    .Output("y: float")
    .Output("mean: float")
    .Output("variance: float")
    .PYAE_FUSED_ATTRS
    .SetShapeFn(pyae::ForwardShape)
    .Doc("leaky_relu(batch_norm(conv(x, kernel))) in one op; see pyae.ops.");

REGISTER_OP("PyaeFusedConvBnLeakyReluGrad")
    .Input("dy: float")
    .Input("x: float")
    .Input("kernel: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("y: float")
    .Input("mean: float")
    .Input("variance: float")
    .Output("dx: float")
    .Output("dkernel: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .PYAE_FUSED_ATTRS
    .SetShapeFn(pyae::GradShape)
    .Doc("Gradient of PyaeFusedConvBnLeakyRelu with respect to x, kernel, gamma and beta.");

// Mixed precision (fused_bf16.h): bf16 activations, float32 kernel, parameters and statistics.
REGISTER_OP("PyaeFusedConvBnLeakyReluBf16")
    .Input("x: bfloat16")
    .Input("kernel: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("moving_mean: float")
    .Input("moving_variance: float")
    .Output("y: bfloat16")
    .Output("mean: float")
    .Output("variance: float")
    .PYAE_FUSED_ATTRS
    .SetShapeFn(pyae::ForwardShape)
    .Doc("PyaeFusedConvBnLeakyRelu on bfloat16 x and y, float32 accumulation and statistics.");

REGISTER_OP("PyaeFusedConvBnLeakyReluBf16Grad")
    .Input("dy: bfloat16")
    .Input("x: bfloat16")
    .Input("kernel: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("y: bfloat16")
    .Input("mean: float")
    .Input("variance: float")
    .Output("dx: bfloat16")
    .Output("dkernel: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .PYAE_FUSED_ATTRS
    .SetShapeFn(pyae::GradShape)
    .Doc("Gradient of PyaeFusedConvBnLeakyReluBf16 with respect to x, kernel, gamma and beta.");
