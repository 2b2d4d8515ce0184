#include "parallel.h"

#include <chrono>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

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

namespace {

// One step of a spin wait: a pause where the CPU has one (it lets the sibling hyperthread
// run), and every so often a yield, so a preempted thread we wait for gets the core back.
void SpinPause(uint64_t spins) {
#if defined(__x86_64__) || defined(_M_X64)
  if (spins % 1024 != 0) {
    _mm_pause();
    return;
  }
#endif
  std::this_thread::yield();
}

}  // namespace

// Shared with the helpers, which may outlive the crew: one scheduled late finds it dismissed.
struct Crew::State {
  std::atomic<TaskQueue*> queue{nullptr};  // the open run; null between runs
  std::atomic<uint64_t> runs{0};           // runs opened so far
  std::atomic<int> active{0};              // helpers that may be draining `queue`
  std::atomic<int> hired{0};               // helpers scheduled and not yet gone
  std::atomic<bool> dismissed{false};
  std::thread::id caller = std::this_thread::get_id();  // the thread that made the crew
};

// A helper's life: join each run as it opens, until dismissed or idle for too long.
void Crew::Serve(State* state) {
  // A pool whose queue is full runs the work at once on the thread that scheduled it (Eigen's
  // does): that is the caller, which has its own part to do.
  if (std::this_thread::get_id() == state->caller) {
    state->hired.fetch_sub(1);
    return;
  }
  using Clock = std::chrono::steady_clock;
  uint64_t served = 0;
  Clock::time_point idle_since = Clock::now();
  for (uint64_t spins = 1; !state->dismissed.load(std::memory_order_acquire); ++spins) {
    const uint64_t opened = state->runs.load(std::memory_order_acquire);
    if (opened != served) {
      // Announce first, then look: the caller closes the run before it waits for `active`
      // to reach zero, so a helper that still sees the run open is one it waits for.
      state->active.fetch_add(1);
      if (TaskQueue* queue = state->queue.load()) queue->Drain();
      state->active.fetch_sub(1, std::memory_order_release);
      served = opened;
      idle_since = Clock::now();
      continue;
    }
    SpinPause(spins);
    if (spins % 256 == 0 &&
        Clock::now() - idle_since > std::chrono::microseconds(Crew::kIdleMicros)) {
      break;
    }
  }
  state->hired.fetch_sub(1);
}

Crew::Crew(int helpers, Scheduler schedule)
    : state_(std::make_shared<State>()), helpers_(std::max(0, helpers)),
      schedule_(std::move(schedule)) {
  Hire();
}

Crew::~Crew() { state_->dismissed.store(true, std::memory_order_release); }

void Crew::Hire() {
  // A count, not a loop on `hired`: a helper run inline leaves at once and would be rehired.
  const int missing = helpers_ - state_->hired.load();
  for (int i = 0; i < missing; ++i) {
    state_->hired.fetch_add(1);
    std::shared_ptr<State> state = state_;
    schedule_([state] { Serve(state.get()); });
  }
}

void Crew::Run(int64_t num_tasks, const std::function<void(int64_t)>& fn) {
  if (num_tasks <= 1 || helpers_ == 0) {
    for (int64_t task = 0; task < num_tasks; ++task) fn(task);
    return;
  }
  Hire();
  TaskQueue queue(num_tasks, fn);
  state_->queue.store(&queue);
  state_->runs.fetch_add(1, std::memory_order_release);
  queue.Drain();
  state_->queue.store(nullptr);
  // The helpers are on their last tasks: those writes must be seen before returning.
  for (uint64_t spins = 1; state_->active.load() != 0; ++spins) SpinPause(spins);
}

Runtime Crew::AsRuntime() {
  return {[this](int64_t num_tasks, const std::function<void(int64_t)>& fn) {
            Run(num_tasks, fn);
          },
          helpers_ + 1};
}

}  // namespace pyae
