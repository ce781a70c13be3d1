// GoogleTest main for tests that may run under mpirun: makes the world communicator once,
// prints only rank 0's progress, and reports failure on any rank through the exit code.
#include <gtest/gtest.h>

#include <memory>

#include "parallel/communicator.h"
#include "test_world.h"

namespace {
std::unique_ptr<kiln::Communicator> g_world;
}

kiln::Communicator& kiln::testing::world() { return *g_world; }

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  g_world = kiln::make_world_communicator(120.0, false);
  if (g_world->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int result = RUN_ALL_TESTS();
  // Every rank must pass: the job fails if any rank failed.
  const double failures = g_world->sum(result != 0 ? 1.0 : 0.0);
  g_world.reset();
  kiln::finalize_communication();
  return failures > 0 ? 1 : 0;
}
