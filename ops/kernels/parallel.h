// How kernels run work in parallel without knowing whose thread pool they are on.
#pragma once

#include <cstdint>
#include <functional>

namespace pyae {

// Runs fn(task) for every task in [0, num_tasks), possibly concurrently, and returns when
// all are done. TensorFlow passes its intra-op pool; the pybind11 module uses std::thread.
using TaskRunner =
    std::function<void(int64_t num_tasks, const std::function<void(int64_t task)>& fn)>;

struct Runtime {
  TaskRunner run_tasks;
  int num_threads = 1;
};

// A runner that uses up to `num_threads` std::threads (the caller's thread included).
TaskRunner StdThreadRunner(int num_threads);

}  // namespace pyae
