// What every CPU OpKernel hands the kernels and takes back (fused_kernels.cc,
// fused_bf16_kernels.cc, output_kernels.cc): tensors as the kernels' element types (float32 as
// it is, bfloat16 as its bits), and the kernels' message ("" on success) as a Status.
#ifndef PYAE_OPS_TF_KERNEL_ARGS_H_
#define PYAE_OPS_TF_KERNEL_ARGS_H_

#include <string>

#include "bf16.h"
#include "tensorflow/core/framework/tensor.h"

namespace pyae {

// The kernels' element type for a tensor's.
template <typename T>
struct Storage {
  using type = float;
};
template <>
struct Storage<::tensorflow::bfloat16> {
  using type = Bf16;  // Eigen's bfloat16 is the upper half of a float32, as Bf16
};

template <typename T>
const typename Storage<T>::type* Values(const ::tensorflow::Tensor& t) {
  static_assert(sizeof(T) == sizeof(typename Storage<T>::type), "storage must match");
  return reinterpret_cast<const typename Storage<T>::type*>(t.flat<T>().data());
}

template <typename T>
typename Storage<T>::type* MutableValues(::tensorflow::Tensor* t) {
  return reinterpret_cast<typename Storage<T>::type*>(t->flat<T>().data());
}

// The kernel contract judges the values; TF only wraps its message.
inline absl::Status ContractStatus(const std::string& err) {
  return err.empty() ? absl::OkStatus() : absl::InvalidArgumentError(err);
}

}  // namespace pyae

#endif  // PYAE_OPS_TF_KERNEL_ARGS_H_
