// How kernels run work in parallel without knowing whose thread pool they are on.
#pragma once

#include <atomic>
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

// Tasks handed out one at a time from a shared counter: every thread that calls Drain() runs
// tasks until none are left, so a thread held up by other work simply runs fewer of them.
class TaskQueue {
 public:
  TaskQueue(int64_t num_tasks, const std::function<void(int64_t task)>& fn)
      : num_tasks_(num_tasks), fn_(fn) {}
  void Drain() {
    for (int64_t task = next_++; task < num_tasks_; task = next_++) fn_(task);
  }

 private:
  const int64_t num_tasks_;
  const std::function<void(int64_t task)>& fn_;
  std::atomic<int64_t> next_{0};
};

// A runner that uses up to `num_threads` std::threads (the caller's thread included).
TaskRunner StdThreadRunner(int num_threads);

}  // namespace pyae
