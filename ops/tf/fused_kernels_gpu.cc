// GPU OpKernels of the fused op and its gradient: the same checks as the CPU kernels
// (fused_op_base.h), then the framework-free CUDA C API (fused_conv_bn_lrelu_cuda.h) on the
// op's CUDA stream. Compiled by the host compiler with GOOGLE_CUDA=1, and only into an op
// library built with CUDA (PYAE_CUDA_BUILT); registering a DEVICE_GPU kernel needs no GPU, so
// such a library still loads and runs its CPU kernels on a machine without one.
//
// Every tensor, the statistics included, lives in device memory. The workspace comes from
// TensorFlow's allocator (allocate_temp), so nothing here allocates device memory itself or
// synchronises the stream. Convolutions use TF32 tensor cores exactly when TensorFlow does
// (tf.config.experimental.enable_tensor_float_32_execution), like Keras' own Conv2D.
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>

#include "fused_conv_bn_lrelu_cuda.h"
#include "fused_op_base.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/platform/tensor_float_32_utils.h"
#include "xla/stream_executor/stream.h"

namespace pyae {
namespace {

// An error string of the CUDA C API as a Status: CUDA runtime failures (launches, the
// device) are internal errors, everything else names a bad argument.
absl::Status CudaStatus(const char* err) {
  if (err == nullptr) return absl::OkStatus();
  const std::string message(err);  // thread-local in the API: copy it at once
  if (message.rfind("CUDA error", 0) == 0) return absl::InternalError(message);
  return absl::InvalidArgumentError(message);
}

// The CUDA stream TensorFlow runs this op on.
absl::Status GetStream(OpKernelContext* ctx, cudaStream_t* stream) {
  auto* device_context = ctx->op_device_context();
  auto* se_stream = device_context == nullptr ? nullptr : device_context->stream();
  void* handle = se_stream == nullptr ? nullptr : se_stream->platform_specific_handle().stream;
  if (handle == nullptr) {
    return absl::InternalError("PyaeFusedConvBnLeakyRelu: the GPU kernel got no CUDA stream");
  }
  *stream = static_cast<cudaStream_t>(handle);
  return absl::OkStatus();
}

// The API's shape of one call, from x's and the kernel's shapes (already checked by
// MakeParams against the same kernel contract; the API adds its 32-bit indexing limit).
absl::Status MakeCudaShape(const Tensor& x, const Tensor& kernel, int stride_h, int stride_w,
                           bool same, bool transpose, PyaeConvShape* shape) {
  for (const Tensor* t : {&x, &kernel}) {
    for (int axis = 0; axis < 4; ++axis) {
      if (t->dim_size(axis) > INT_MAX) {
        return absl::InvalidArgumentError(
            std::string(t == &x ? "x" : "kernel") + " is too large for the GPU kernel. "
            "Received: shape " + ShapeString(*t));
      }
    }
  }
  return CudaStatus(pyae_cuda_make_conv_shape(
      static_cast<int>(x.dim_size(0)), static_cast<int>(x.dim_size(1)),
      static_cast<int>(x.dim_size(2)), static_cast<int>(x.dim_size(3)),
      static_cast<int>(kernel.dim_size(0)), static_cast<int>(kernel.dim_size(1)),
      static_cast<int>(kernel.dim_size(2)), static_cast<int>(kernel.dim_size(3)), stride_h,
      stride_w, same ? 1 : 0, transpose ? 1 : 0, shape));
}

class FusedGpuOpBase : public FusedOpBase {
 public:
  using FusedOpBase::FusedOpBase;

 protected:
  absl::Status CudaShape(const Tensor& x, const Tensor& kernel, PyaeConvShape* shape) const {
    if (stride_h_ > INT_MAX || stride_w_ > INT_MAX) {
      return absl::InvalidArgumentError("strides too large for the GPU kernel");
    }
    return MakeCudaShape(x, kernel, static_cast<int>(stride_h_),
                         static_cast<int>(stride_w_), padding_ == Padding::kSame, transpose_,
                         shape);
  }

  static PyaeFusedParams CudaParams(const FusedParams& params) {
    return {params.epsilon, params.negative_slope, params.training ? 1 : 0,
            ::tensorflow::tensor_float_32_execution_enabled() ? 1 : 0};
  }

  // Device scratch of `bytes` bytes, owned by `tensor` until Compute returns (TensorFlow's
  // GPU allocator keeps it alive for the stream's work queued before then).
  static absl::Status Workspace(OpKernelContext* ctx, size_t bytes, Tensor* tensor,
                                void** data) {
    *data = nullptr;
    if (bytes == 0) return absl::OkStatus();
    if (bytes > static_cast<size_t>(INT64_MAX)) {
      return absl::InvalidArgumentError("GPU workspace too large: " + std::to_string(bytes) +
                                        " bytes");
    }
    TF_RETURN_IF_ERROR(ctx->allocate_temp(::tensorflow::DT_INT8,
                                          TensorShape({static_cast<int64_t>(bytes)}), tensor));
    *data = tensor->flat<int8_t>().data();
    return absl::OkStatus();
  }
};

class FusedConvBnLeakyReluGpuOp : public FusedGpuOpBase {
 public:
  using FusedGpuOpBase::FusedGpuOpBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& kernel = ctx->input(1);
    FusedParams params;
    OP_REQUIRES_OK(ctx, CheckForwardInputs(ctx, &params));
    const int64_t channels = params.geometry.z_channels();
    PyaeConvShape shape;
    OP_REQUIRES_OK(ctx, CudaShape(x, kernel, &shape));
    const PyaeFusedParams cuda_params = CudaParams(params);
    cudaStream_t stream;
    OP_REQUIRES_OK(ctx, GetStream(ctx, &stream));

    Tensor* y;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ZShape(params.geometry), &y));
    float* batch_mean = nullptr;
    float* batch_var = nullptr;
    if (params.training) {
      Tensor *mean, *variance;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({channels}), &mean));
      OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({channels}), &variance));
      batch_mean = mean->flat<float>().data();
      batch_var = variance->flat<float>().data();
    } else {
      // Inference normalises with the moving statistics, which are then the outputs (as the
      // CPU kernel's copies): forward the input buffers instead of copying them.
      ctx->set_output(1, ctx->input(4));
      ctx->set_output(2, ctx->input(5));
    }
    Tensor workspace;
    void* workspace_data;
    const size_t workspace_bytes = pyae_cuda_forward_workspace_bytes(&shape, cuda_params.training);
    OP_REQUIRES_OK(ctx, Workspace(ctx, workspace_bytes, &workspace, &workspace_data));
    OP_REQUIRES_OK(ctx, CudaStatus(pyae_cuda_fused_forward(
                            &shape, &cuda_params, x.flat<float>().data(),
                            kernel.flat<float>().data(), ctx->input(2).flat<float>().data(),
                            ctx->input(3).flat<float>().data(),
                            ctx->input(4).flat<float>().data(),
                            ctx->input(5).flat<float>().data(), y->flat<float>().data(),
                            batch_mean, batch_var, workspace_data, workspace_bytes, stream)));
  }
};

class FusedConvBnLeakyReluGradGpuOp : public FusedGpuOpBase {
 public:
  using FusedGpuOpBase::FusedGpuOpBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& kernel = ctx->input(2);
    const Tensor& y = ctx->input(5);
    FusedParams params;
    OP_REQUIRES_OK(ctx, CheckGradInputs(ctx, &params));
    PyaeConvShape shape;
    OP_REQUIRES_OK(ctx, CudaShape(x, kernel, &shape));
    const PyaeFusedParams cuda_params = CudaParams(params);
    cudaStream_t stream;
    OP_REQUIRES_OK(ctx, GetStream(ctx, &stream));

    Tensor* grads[4];
    OP_REQUIRES_OK(ctx, AllocateGradOutputs(ctx, params.geometry.z_channels(), grads));
    Tensor *dx = grads[0], *dkernel = grads[1], *dgamma = grads[2], *dbeta = grads[3];
    Tensor workspace;
    void* workspace_data;
    const size_t workspace_bytes = pyae_cuda_backward_workspace_bytes(&shape);
    OP_REQUIRES_OK(ctx, Workspace(ctx, workspace_bytes, &workspace, &workspace_data));
    OP_REQUIRES_OK(ctx, CudaStatus(pyae_cuda_fused_backward(
                            &shape, &cuda_params, x.flat<float>().data(),
                            kernel.flat<float>().data(), ctx->input(3).flat<float>().data(),
                            ctx->input(4).flat<float>().data(), y.flat<float>().data(),
                            ctx->input(6).flat<float>().data(),
                            ctx->input(7).flat<float>().data(), dy.flat<float>().data(),
                            dx->flat<float>().data(), dkernel->flat<float>().data(),
                            dgamma->flat<float>().data(), dbeta->flat<float>().data(),
                            workspace_data, workspace_bytes, stream)));
  }
};

}  // namespace
}  // namespace pyae

REGISTER_KERNEL_BUILDER(Name("PyaeFusedConvBnLeakyRelu").Device(::tensorflow::DEVICE_GPU),
                        pyae::FusedConvBnLeakyReluGpuOp);
REGISTER_KERNEL_BUILDER(Name("PyaeFusedConvBnLeakyReluGrad").Device(::tensorflow::DEVICE_GPU),
                        pyae::FusedConvBnLeakyReluGradGpuOp);
