// Parallel layout checks and process groups.
#include "parallel/layout.h"

#include <omp.h>

#include <algorithm>
#include <thread>

#include "kernels/device.h"
#include "kernels/error.h"

namespace kiln {

ParallelDims ParallelDims::from(int world_size, int tp) {
  KILN_CHECK(tp >= 1, "parallel.tp=", tp, " must be at least 1");
  KILN_CHECK(world_size % tp == 0, "the world has ", world_size, " ranks, which parallel.tp=", tp,
             " does not divide; launch a multiple of ", tp, " ranks or change parallel.tp");
  return {world_size, world_size / tp, tp};
}

std::string ParallelContext::describe() const {
  return message("layout: ", dims.world, " rank(s) = ", dims.dp, " data-parallel x ", dims.tp,
                 " tensor-parallel");
}

ParallelContext make_parallel_context(std::unique_ptr<Communicator> world, const ExperimentConfig& config) {
  ParallelContext ctx;
  ctx.dims = ParallelDims::from(world->size(), config.parallel.tp);
  ctx.rank = world->rank();
  ctx.tp_rank = ctx.rank % ctx.dims.tp;
  ctx.dp_rank = ctx.rank / ctx.dims.tp;
  ctx.tp = world->split(ctx.dp_rank, ctx.tp_rank, "tensor-parallel");
  ctx.dp = world->split(ctx.tp_rank, ctx.dp_rank, "data-parallel");
  ctx.world = std::move(world);
  return ctx;
}

ParallelContext single_process_context() {
  ParallelContext ctx;
  ctx.world = make_single_communicator("world");
  ctx.dp = ctx.world->split(0, 0, "data-parallel");
  ctx.tp = ctx.world->split(0, 0, "tensor-parallel");
  return ctx;
}

int threads_per_rank(int configured, const Communicator& world) {
  if (configured > 0) return configured;
  if (world.local_size() <= 1) return omp_get_max_threads();
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, cores / world.local_size());
}

int gpu_of_rank(const Communicator& world) {
  const int devices = device::device_count(), local = world.local_rank();
  KILN_CHECK(devices == 1 || local < devices, "rank ", world.rank(), " is rank ", local, " on its machine, which "
             "shows only ", devices, " CUDA devices: start at most one rank per GPU");
  return devices == 1 ? 0 : local;
}

}  // namespace kiln
