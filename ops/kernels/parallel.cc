#include "parallel.h"

#include <atomic>
#include <thread>
#include <vector>

namespace pyae {

TaskRunner StdThreadRunner(int num_threads) {
  return [num_threads](int64_t num_tasks, const std::function<void(int64_t)>& fn) {
    const int64_t workers = std::min<int64_t>(num_threads, num_tasks);
    if (workers <= 1) {
      for (int64_t task = 0; task < num_tasks; ++task) fn(task);
      return;
    }
    std::atomic<int64_t> next_task{0};
    auto drain = [&]() {
      for (int64_t task = next_task++; task < num_tasks; task = next_task++) fn(task);
    };
    std::vector<std::thread> threads;
    for (int64_t i = 1; i < workers; ++i) threads.emplace_back(drain);
    drain();
    for (auto& thread : threads) thread.join();
  };
}

}  // namespace pyae
