// How kernels run work in parallel without knowing whose thread pool they are on.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

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
    while (RunOne()) {
    }
  }
  // Runs the next task, if one is left; says whether it did.
  bool RunOne() {
    const int64_t task = next_++;
    if (task >= num_tasks_) return false;
    fn_(task);
    return true;
  }

 private:
  const int64_t num_tasks_;
  const std::function<void(int64_t task)>& fn_;
  std::atomic<int64_t> next_{0};
};

// A runner that uses up to `num_threads` std::threads (the caller's thread included).
TaskRunner StdThreadRunner(int num_threads);

// Threads that join the calling thread in every run of tasks of one op. Waking a thread takes
// 50-400 us on a busy machine, as long as some ops' whole parallel phase: a crew asks for its
// helpers when the op starts, so they are up by the time its setup is done, and keeps them
// spinning from one phase to the next. The caller spins too while the helpers finish their last
// tasks, where a condition variable would cost one more wake-up.
//
// Where helpers come from. TensorFlow runs an op on one of its inter-op threads (its `runner`)
// and parallel work on its intra-op `pool`. With two inter-op threads on two cores, a helper
// from the pool leaves the other inter-op thread free to start ops beside the crew or to spin
// looking for some: three threads want two cores, and the crew's spin waits stall on a
// preempted helper. So each helper is asked of the runner first. A runner thread that comes
// stays with the crew until it is dismissed, serving, or off the cores (parked when its seat is
// taken, napping when idle for kIdleMicros), and the runner starts nothing else on it
// meanwhile. When none comes within kGraceMicros (none is free; with one inter-op thread the
// op's caller is the only one), the helper is asked of the pool as well and the first thread to
// come serves; a pool helper idle for kIdleMicros goes back to its pool, and the next run asks
// the pool again. Once a crew's runner helper never came, the next crew asks both at once.
class Crew {
 public:
  using Scheduler = std::function<void(std::function<void()> work)>;

  // Asks for `helpers` helpers now: of `runner` and `pool` as above, or of `pool` alone when
  // no runner is given.
  Crew(int helpers, Scheduler pool, Scheduler runner = nullptr);
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
  static constexpr int64_t kGraceMicros = 400;

 private:
  struct State;
  struct Offer;
  static void Attend(const std::shared_ptr<State>& state, Offer* offer, bool from_runner);
  static void Serve(State* state, bool from_runner);
  static void Nap(State* state, uint64_t served);
  static void Park(State* state);
  void Hire(bool runner_first);
  void AskPool(const std::shared_ptr<Offer>& offer);
  void AskPoolIfLate();

  std::shared_ptr<State> state_;
  int helpers_;
  Scheduler pool_;
  Scheduler runner_;
  std::vector<std::shared_ptr<Offer>> waiting_;  // asked of the runner only, so far
  std::chrono::steady_clock::time_point asked_at_;
};

}  // namespace pyae
