// Stop signals (trainers/preemption.h): they only set a flag, whatever the process is doing when
// they come. Each test runs in a process of its own (a death test, re-executed), because the
// signal mask it sets is the whole process's.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "kernels/matmul.h"
#include "trainers/preemption.h"

namespace kiln {
namespace {

class Preemption : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

// A stream of SIGUSR1 while oneDNN's sgemm runs the shapes of a small model's matmuls. With a
// signal handler on the computing thread this corrupted the heap within a second (libdnnl 2.6's
// AVX-512 kernels; `malloc(): unaligned tcache chunk`, or a segfault); now every product stays
// what it was without signals, and the flag says SIGUSR1.
// The exit status of a process that runs matmuls for 1.5 s under a storm of SIGUSR1: 0 when every
// product equals its first value, at least 500 signals were sent and the flag says SIGUSR1.
[[noreturn]] void matmuls_under_a_signal_storm() {
  install_stop_handlers();
  std::atomic<bool> done{false};
  std::atomic<int> sent{0};
  std::thread storm([&] {
    while (!done) {
      ::kill(::getpid(), SIGUSR1);
      ++sent;
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
  });
  const int shapes[][3] = {{256, 96, 32}, {256, 32, 32}, {256, 128, 32}, {256, 32, 128}, {256, 320, 32}};
  std::vector<std::vector<float>> first;
  bool same = true;
  const auto start = std::chrono::steady_clock::now();
  for (int it = 0; std::chrono::steady_clock::now() - start < std::chrono::milliseconds(1500); ++it) {
    int s = 0;
    for (const auto& shape : shapes) {
      const int m = shape[0], n = shape[1], k = shape[2];
      std::vector<float> a(m * k), b(k * n), c(m * n);
      for (int i = 0; i < m * k; ++i) a[i] = static_cast<float>((i * 7) % 13) / 13.0f - 0.5f;
      for (int i = 0; i < k * n; ++i) b[i] = static_cast<float>((i * 5) % 11) / 11.0f - 0.5f;
      cpu::matmul(c.data(), a.data(), b.data(), m, n, k, false, s % 2 == 1, 1.0f, 0.0f);
      cpu::matmul(b.data(), a.data(), c.data(), k, n, m, true, false, 1e-3f, 1.0f);
      c.insert(c.end(), b.begin(), b.end());
      if (it == 0)
        first.push_back(c);
      else
        same = same && c == first[s];
      ++s;
    }
  }
  done = true;
  storm.join();
  std::_Exit(!same ? 3 : sent < 500 ? 4 : stop_signal() != SIGUSR1 ? 5 : 0);
}

TEST_F(Preemption, ASignalStormDuringMatmulsOnlySetsTheFlag) {
  EXPECT_EXIT(matmuls_under_a_signal_storm(), ::testing::ExitedWithCode(0), "");
}

// The first SIGINT asks for a stop; a second one (Ctrl-C twice) ends the process at once.
TEST_F(Preemption, ASecondCtrlCEndsTheProcess) {
  EXPECT_EXIT(
      {
        install_stop_handlers();
        ::kill(::getpid(), SIGINT);
        for (int i = 0; i < 5000 && stop_signal() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (stop_signal() != SIGINT) std::_Exit(3);
        ::kill(::getpid(), SIGINT);
        std::this_thread::sleep_for(std::chrono::seconds(5));
        std::_Exit(4);
      },
      ::testing::KilledBySignal(SIGINT), "");
}

// A command kiln runs (scontrol requeue) gets the default signal mask, not the blocked stop
// signals: a shell that sends itself SIGTERM dies of it instead of sleeping on.
TEST_F(Preemption, CommandsRunWithTheDefaultSignalMask) {
  EXPECT_EXIT(
      {
        install_stop_handlers();
        const int status = run_shell_command("kill -TERM $$; sleep 5");
        std::_Exit(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM ? 0 : 3);
      },
      ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(std::_Exit(run_shell_command("exit 7") == 7 << 8 ? 0 : 3), ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace kiln
