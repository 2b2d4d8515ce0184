#include "parallel.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
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
  std::atomic<int> hired{0};               // seats asked for and not given up
  std::atomic<bool> dismissed{false};
  std::atomic<bool> runner_came{false};    // a runner thread came before the dismissal
  std::atomic<int> napping{0};             // runner helpers waiting for the next run
  std::thread::id caller = std::this_thread::get_id();  // the thread that made the crew
  std::mutex mutex;                        // with `dismissal`: runner threads park and nap on
  std::condition_variable dismissal;       // it (notified at dismissal and at a run's opening)
};

// One seat, asked of the runner, the pool or both: the first thread to come takes it.
struct Crew::Offer {
  std::atomic<bool> taken{false};
  std::atomic<bool> runner_declined{false};  // the runner ran the request inline (the caller)
};

namespace {
// Whether the last dismissed crew's runner helper came in time (so the runner has a thread
// free while ops run); the first crew assumes it does.
std::atomic<bool> runner_comes{true};
}  // namespace

void Crew::Attend(const std::shared_ptr<State>& state, Offer* offer, bool from_runner) {
  // A scheduler may run the request at once on the thread that made it (Eigen's pool does when
  // its queue is full; some TF runners always do): that is the caller, which has its own part.
  if (std::this_thread::get_id() == state->caller) {
    if (from_runner) {
      offer->runner_declined.store(true);  // Hire asks the pool at once
    } else if (!offer->taken.exchange(true)) {
      state->hired.fetch_sub(1);  // the seat is given up; the next run asks again
    }
    return;
  }
  if (from_runner && !state->dismissed.load()) state->runner_came.store(true);
  if (!offer->taken.exchange(true)) {
    Serve(state.get(), from_runner);
    state->hired.fetch_sub(1);
  }
  if (from_runner) Park(state.get());
}

// A helper's life: join each run as it opens, until dismissed. One idle for kIdleMicros
// leaves (a pool thread: other ops want it) or naps off the cores until the next run opens (a
// runner thread, which the crew keeps).
void Crew::Serve(State* state, bool from_runner) {
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
      if (!from_runner) break;
      Nap(state, served);
      idle_since = Clock::now();
    }
  }
}

// Waits off the cores until a run after `served` opens or the crew is dismissed. The caller
// looks at `napping` after it opens a run, and the helper at `runs` after it counts itself
// napping (both sequentially consistent), so one of them sees the other.
void Crew::Nap(State* state, uint64_t served) {
  std::unique_lock<std::mutex> lock(state->mutex);
  state->napping.fetch_add(1);
  state->dismissal.wait(lock, [state, served] {
    return state->dismissed.load() || state->runs.load() != served;
  });
  state->napping.fetch_sub(1);
}

// Keeps a runner thread off the cores, and the runner from starting other work on it, until
// the crew is dismissed.
void Crew::Park(State* state) {
  std::unique_lock<std::mutex> lock(state->mutex);
  state->dismissal.wait(lock, [state] { return state->dismissed.load(); });
}

Crew::Crew(int helpers, Scheduler pool, Scheduler runner)
    : state_(std::make_shared<State>()), helpers_(std::max(0, helpers)),
      pool_(std::move(pool)), runner_(std::move(runner)) {
  Hire(/*runner_first=*/runner_comes.load());
}

Crew::~Crew() {
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->dismissed.store(true, std::memory_order_release);
  }
  state_->dismissal.notify_all();
  if (runner_ && helpers_ > 0) runner_comes.store(state_->runner_came.load());
}

void Crew::Hire(bool runner_first) {
  // A count, not a loop on `hired`: a helper run inline leaves at once and would be rehired.
  const int missing = helpers_ - state_->hired.load();
  const bool pool_now = !runner_ || !runner_first;
  for (int i = 0; i < missing; ++i) {
    state_->hired.fetch_add(1);
    auto offer = std::make_shared<Offer>();
    if (runner_) {
      std::shared_ptr<State> state = state_;
      runner_([state, offer] { Attend(state, offer.get(), /*from_runner=*/true); });
    }
    if (pool_now || offer->runner_declined.load()) {
      AskPool(offer);
    } else {
      if (waiting_.empty()) asked_at_ = std::chrono::steady_clock::now();
      waiting_.push_back(std::move(offer));
    }
  }
}

void Crew::AskPool(const std::shared_ptr<Offer>& offer) {
  std::shared_ptr<State> state = state_;
  pool_([state, offer] { Attend(state, offer.get(), /*from_runner=*/false); });
}

void Crew::AskPoolIfLate() {
  if (waiting_.empty() ||
      std::chrono::steady_clock::now() - asked_at_ < std::chrono::microseconds(kGraceMicros)) {
    return;
  }
  for (const std::shared_ptr<Offer>& offer : waiting_) {
    if (!offer->taken.load()) AskPool(offer);
  }
  waiting_.clear();
}

void Crew::Run(int64_t num_tasks, const std::function<void(int64_t)>& fn) {
  if (num_tasks <= 1 || helpers_ == 0) {
    for (int64_t task = 0; task < num_tasks; ++task) fn(task);
    return;
  }
  // A seat given up since (a pool helper idle for too long): the runner's threads are either
  // with the crew already or busy, so the pool is asked at once.
  Hire(/*runner_first=*/false);
  TaskQueue queue(num_tasks, fn);
  state_->queue.store(&queue);
  state_->runs.fetch_add(1);
  if (state_->napping.load() != 0) {
    { std::lock_guard<std::mutex> lock(state_->mutex); }
    state_->dismissal.notify_all();
  }
  do {
    AskPoolIfLate();
  } while (queue.RunOne());
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
