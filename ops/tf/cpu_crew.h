// The crew a CPU OpKernel of the fused ops runs its kernels with (parallel.h), shared by the
// float32 and bf16 kernels so both schedule their helpers alike.
#ifndef PYAE_OPS_TF_CPU_CREW_H_
#define PYAE_OPS_TF_CPU_CREW_H_

#include <functional>
#include <memory>
#include <utility>

#include "parallel.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/threadpool.h"

namespace pyae {

// A crew for one op, hired as the op starts. Helpers are asked of the op's inter-op runner
// first and of its intra-op pool as well when no inter-op thread comes soon (parallel.h says
// why). The calling thread works too, so the crew has one helper fewer than the intra-op pool
// has threads: running shards on every pool thread *and* the caller would put more threads
// than cores to work, and a preempted one holds up the op.
inline std::unique_ptr<Crew> CrewFor(::tensorflow::OpKernelContext* ctx) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  Crew::Scheduler on_pool = [pool](std::function<void()> work) {
    pool->Schedule(std::move(work));
  };
  Crew::Scheduler on_runner = nullptr;
  if (auto* runner = ctx->runner()) {  // lives while the op runs, which the crew does not outlast
    on_runner = [runner](std::function<void()> work) { (*runner)(std::move(work)); };
  }
  return std::make_unique<Crew>(pool->NumThreads() - 1, std::move(on_pool), std::move(on_runner));
}

}  // namespace pyae

#endif  // PYAE_OPS_TF_CPU_CREW_H_
