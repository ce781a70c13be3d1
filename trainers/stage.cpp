// The stage factory: train.stage names the stage.
#include "kernels/error.h"
#include "trainers/pretrain.h"
#include "trainers/sft.h"

namespace kiln {

std::unique_ptr<Stage> make_stage(const ExperimentConfig& config, int replica, int replicas) {
  if (config.train.stage == "sft") return std::make_unique<SftStage>(config, replica, replicas);
  KILN_CHECK(config.train.stage == "pretrain", "train.stage=", config.train.stage,
             " is not available in this version of kiln; use pretrain or sft");
  return std::make_unique<PretrainStage>(config, replica, replicas);
}

}  // namespace kiln
