// The parallel layout as a value: world = dp x tp ranks, tensor-parallel groups of adjacent
// ranks (rank = dp_rank * tp + tp_rank), and the communicators of each group. Made once by the
// launcher and handed to the trainer; there is no global layout.
#pragma once

#include <memory>
#include <string>

#include "core/config.h"
#include "parallel/communicator.h"

namespace kiln {

struct ParallelDims {
  int world = 1;
  int dp = 1;
  int tp = 1;
  // Checks world % tp with a message that prints the numbers.
  static ParallelDims from(int world_size, int tp);
};

struct ParallelContext {
  ParallelDims dims;
  int rank = 0;      // in the world
  int dp_rank = 0;
  int tp_rank = 0;
  std::unique_ptr<Communicator> world;
  std::unique_ptr<Communicator> dp;  // ranks holding the same model shard
  std::unique_ptr<Communicator> tp;  // ranks sharing one model replica

  bool is_main() const { return rank == 0; }
  std::string describe() const;
};

// Splits `world` into the data- and tensor-parallel groups of config.parallel, after checking
// the layout against the world size and the model.
ParallelContext make_parallel_context(std::unique_ptr<Communicator> world, const ExperimentConfig& config);

// A context for one process and no MPI (tests, tools).
ParallelContext single_process_context();

// CPU threads for this rank: `configured` when above 0, else all of them for a rank alone on its
// machine, else the machine's cores shared out among its ranks.
int threads_per_rank(int configured, const Communicator& world);

// The GPU of this rank, one per rank: its place on its machine, or the one device a launcher that
// binds GPUs (srun --gpus-per-task=1) leaves visible. An error when the machine shows fewer.
int gpu_of_rank(const Communicator& world);

}  // namespace kiln
