// The stage factory: train.stage names the stage.
#include "kernels/error.h"
#include "trainers/dpo.h"
#include "trainers/ppo.h"
#include "trainers/pretrain.h"
#include "trainers/reward.h"
#include "trainers/sft.h"

namespace kiln {

std::unique_ptr<Stage> make_stage(const ExperimentConfig& config, int replica, int replicas) {
  const std::string& stage = config.train.stage;
  if (stage == "sft") return std::make_unique<SftStage>(config, replica, replicas);
  if (stage == "reward") return std::make_unique<RewardStage>(config, replica, replicas);
  if (stage == "dpo") return std::make_unique<DpoStage>(config, replica, replicas);
  if (stage == "ppo") return std::make_unique<PpoStage>(config, replica, replicas);
  KILN_CHECK(stage == "pretrain", "train.stage=", stage,
             " is not available in this version of kiln; use pretrain, sft, reward, dpo or ppo");
  return std::make_unique<PretrainStage>(config, replica, replicas);
}

}  // namespace kiln
