// Registration of the output op (conv transpose + bias + activation) and its gradient:
// signatures and shape functions only. Kernels in output_kernels.cc.
#include <string>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace pyae {
namespace {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// y: [batch, h * stride_h, w * stride_w, kernel's out channels] (SAME padding).
absl::Status OutputShape(InferenceContext* c) {
  ShapeHandle x, kernel;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &kernel));
  std::vector<int32_t> strides;
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  if (strides.size() != 2) {
    return absl::InvalidArgumentError("strides must have 2 elements, got " +
                                      std::to_string(strides.size()));
  }
  std::vector<DimensionHandle> dims = {c->Dim(x, 0)};
  for (int axis = 0; axis < 2; ++axis) {
    DimensionHandle scaled;
    TF_RETURN_IF_ERROR(c->Multiply(c->Dim(x, axis + 1), strides[axis], &scaled));
    dims.push_back(scaled);
  }
  dims.push_back(c->Dim(kernel, 2));
  c->set_output(0, c->MakeShape(dims));
  return absl::OkStatus();
}

absl::Status OutputGradShape(InferenceContext* c) {
  c->set_output(0, c->input(2));                       // dx like x
  c->set_output(1, c->input(3));                       // dkernel like kernel
  c->set_output(2, c->Vector(c->Dim(c->input(3), 2)));  // dbias: the kernel's out channels
  return absl::OkStatus();
}

}  // namespace
}  // namespace pyae

#define PYAE_OUTPUT_ATTRS                           \
  Attr("T: {float, bfloat16}")                      \
      .Attr("strides: list(int) = [1, 1]")          \
      .Attr("activation: {'sigmoid', 'linear'} = 'sigmoid'")

REGISTER_OP("PyaeConvTransposeOutput")
    .Input("x: T")
    .Input("kernel: float")
    .Input("bias: float")
    .Output("y: T")
    .PYAE_OUTPUT_ATTRS
    .SetShapeFn(pyae::OutputShape)
    .Doc("activation(conv2d_transpose(x, kernel, strides, SAME) + bias); see pyae.ops.");

REGISTER_OP("PyaeConvTransposeOutputGrad")
    .Input("dy: T")
    .Input("y: T")
    .Input("x: T")
    .Input("kernel: float")
    .Output("dx: T")
    .Output("dkernel: float")
    .Output("dbias: float")
    .PYAE_OUTPUT_ATTRS
    .SetShapeFn(pyae::OutputGradShape)
    .Doc("Gradient of PyaeConvTransposeOutput with respect to x, kernel and bias.");
