// Uninitialised float storage for kernel scratch that is fully written before it is read.
// std::vector would zero it first: an extra pass over megabytes on every call.
#pragma once

#include <cstdint>
#include <memory>

namespace pyae {

class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(int64_t size) { Reserve(size); }

  // Grows to at least `size` floats; the contents are not kept.
  void Reserve(int64_t size) {
    if (size > capacity_) {
      data_.reset(new float[size]);
      capacity_ = size;
    }
  }
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }

 private:
  std::unique_ptr<float[]> data_;
  int64_t capacity_ = 0;
};

}  // namespace pyae
