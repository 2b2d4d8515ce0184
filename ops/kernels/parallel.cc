#include "parallel.h"

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
    TaskQueue queue(num_tasks, fn);
    std::vector<std::thread> threads;
    for (int64_t i = 1; i < workers; ++i) threads.emplace_back([&queue] { queue.Drain(); });
    queue.Drain();
    for (auto& thread : threads) thread.join();
  };
}

}  // namespace pyae
