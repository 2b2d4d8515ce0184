// How kernels run work in parallel without knowing whose thread pool they are on.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

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

// Pool threads that join the calling thread in every run of tasks of one op. A pool thread
// takes 50-100 us to wake on a busy machine, as long as some ops' whole parallel phase: a crew
// wakes its helpers when the op starts, so they are up by the time its setup is done, and keeps
// them spinning from one phase to the next (an idle helper leaves after kIdleMicros; the next
// run wakes another). The caller spins too while the helpers finish their last tasks, where a
// condition variable would cost one more wake-up.
class Crew {
 public:
  using Scheduler = std::function<void(std::function<void()> work)>;

  // Schedules `helpers` helpers now.
  Crew(int helpers, Scheduler schedule);
  // Dismisses the helpers; ones still to start find the crew gone and return at once.
  ~Crew();
  Crew(const Crew&) = delete;
  Crew& operator=(const Crew&) = delete;

  // Runs fn(task) for every task in [0, num_tasks) on the caller and the helpers; returns when
  // all are done.
  void Run(int64_t num_tasks, const std::function<void(int64_t task)>& fn);
  // Run and the crew's thread count (the caller included), as the kernels take them.
  Runtime AsRuntime();

  static constexpr int64_t kIdleMicros = 250;

 private:
  struct State;
  static void Serve(State* state);
  void Hire();

  std::shared_ptr<State> state_;
  int helpers_;
  Scheduler schedule_;
};

}  // namespace pyae
