// The preference stages on the GPU against the CPU (on the emulator in every `make test`): reward,
// dpo and ppo from the same tiny SFT and reward runs (tests/rlhf_fixture.h) follow the CPU's
// losses; ppo's first rollout samples the same responses, and the decoder's log-probabilities
// stay within fp32 rounding of training's (logprob_decode_diff, the number reported on GPUs).
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "gpu_test.h"
#include "rlhf_fixture.h"
#include "trainers/trainer.h"

namespace fs = std::filesystem;

TEST(GpuPreference, RewardDpoAndPpoFollowTheCpu) {
  KILN_REQUIRE_GPU();
  const kiln::testing::RlhfFixture fx(fs::temp_directory_path() / ("kiln_gpu_rlhf_" + std::to_string(::getpid())));
  fs::remove_all(fx.dir());
  fx.build();
  kiln::TrainOptions quiet;
  quiet.quiet = true;
  for (const std::string stage : {"reward", "dpo", "ppo"}) {
    auto config = [&](const std::string& device) {
      kiln::ExperimentConfig c = stage == "reward" ? fx.reward_config(stage + "_" + device)
                                 : stage == "dpo"  ? fx.dpo_config(stage + "_" + device)
                                                   : fx.ppo_config(stage + "_" + device);
      c.train.device = device;
      c.train.max_steps = 3;
      return c;
    };
    const kiln::TrainResult cpu = kiln::Trainer(config("cpu"), quiet).run();
    const kiln::TrainResult gpu = kiln::Trainer(config("cuda"), quiet).run();
    ASSERT_EQ(gpu.losses.size(), cpu.losses.size()) << stage;
    for (std::size_t i = 0; i < cpu.losses.size(); ++i)
      EXPECT_NEAR(gpu.losses[i], cpu.losses[i], 1e-3 * (1 + std::abs(cpu.losses[i]))) << stage << " step " << i + 1;
    if (stage != "ppo") continue;
    auto first = [&](const std::string& device) {
      std::ifstream in(config(device).train.run_dir + "/metrics.jsonl");
      std::string line;
      std::getline(in, line);
      return nlohmann::json::parse(line);
    };
    const nlohmann::json a = first("cpu"), b = first("cuda");
    EXPECT_EQ(a["length"], b["length"]);
    EXPECT_NEAR(a["reward"].get<double>(), b["reward"].get<double>(), 1e-3);
    EXPECT_EQ(b["logprob_diff"].get<double>(), 0.0);  // the first minibatch recomputes the rollout's own numbers
    EXPECT_LT(b["logprob_decode_diff"].get<double>(), 1e-3);
  }
  fs::remove_all(fx.dir());
}
