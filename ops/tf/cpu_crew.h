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

// A crew on the op's intra-op pool, hired as the op starts. The calling thread works too, so
// it asks for one thread fewer than the pool has: running shards on every pool thread *and*
// the caller would put more threads than cores to work, and a preempted one holds up the op.
inline std::unique_ptr<Crew> CrewFor(::tensorflow::OpKernelContext* ctx) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  return std::make_unique<Crew>(pool->NumThreads() - 1, [pool](std::function<void()> work) {
    pool->Schedule(std::move(work));
  });
}

}  // namespace pyae

#endif  // PYAE_OPS_TF_CPU_CREW_H_
