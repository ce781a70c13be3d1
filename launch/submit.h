// kiln submit: a training run as a Slurm batch job (docs/parallel.md, "On a cluster"). It writes
// an sbatch script into the run folder and submits it (--dry-run prints it instead):
//   - resources: nodes, one rank per GPU (or --ranks-per-node on CPUs), CPUs per rank, time,
//     partition, account;
//   - the launch: srun --mpi=pmix, one GPU bound to each rank, OMP and NCCL environment;
//   - preemption: --signal=USR1@SECONDS warns the ranks before a time limit, --requeue lets the
//     job come back, and the run is started with train.resume=auto, so a requeued job continues
//     from its newest checkpoint (kiln train exits 75 after checkpointing on a signal and requeues
//     itself with scontrol);
//   - output and error files in the run folder;
//   - --array FILE: one job-array task per line of FILE, each line the overrides of one point (its
//     own train.run_dir, or run_dir/point_<i> when it sets none).
#pragma once

#include <string>
#include <vector>

namespace kiln::cli {

struct SubmitArgs {
  std::string config;
  std::vector<std::string> overrides;
  int nodes = 1;
  int gpus_per_node = 0;      // > 0: one rank per GPU
  int ranks_per_node = 0;     // CPU jobs (0: 1); with GPUs it must equal gpus_per_node when set
  int cpus_per_task = 0;      // 0: Slurm's default
  std::string time;           // --time, "" for the partition's default
  std::string partition, account, job_name;
  int signal_seconds = 120;   // the warning before a time limit
  std::string array;          // a file of override lines, one job-array task each
  std::vector<std::string> sbatch_args;  // more #SBATCH lines, verbatim (e.g. --qos=high)
  std::string kiln;           // the kiln binary the job runs ("": this one)
  bool dry_run = false;
};

// The sbatch script for `args` (no side effects besides reading the config and the array file).
std::string sbatch_script(const SubmitArgs& args);

int submit(const SubmitArgs& args);

}  // namespace kiln::cli
