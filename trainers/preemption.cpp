// Stop requests by signal (preemption.h).
#include "trainers/preemption.h"

#include <pthread.h>
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <mutex>
#include <thread>

extern char** environ;

namespace kiln {
namespace {

std::atomic<int> g_signal{0};

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (int signal : {SIGTERM, SIGINT, SIGUSR1}) sigaddset(&set, signal);
  return set;
}

// The one thread that receives the stop signals: it waits for them (sigwait) and sets the flag.
void wait_for_signals(sigset_t set) {
  for (;;) {
    int signal = 0;
    if (sigwait(&set, &signal) != 0) continue;
    if (signal == SIGINT && g_signal.load() != 0) {  // a second Ctrl-C: end the process now
      std::signal(SIGINT, SIG_DFL);
      sigset_t only;
      sigemptyset(&only);
      sigaddset(&only, SIGINT);
      pthread_sigmask(SIG_UNBLOCK, &only, nullptr);
      std::raise(SIGINT);  // to this thread, which no longer blocks it: the default action ends the process
      continue;
    }
    g_signal.store(signal);
  }
}

}  // namespace

void install_stop_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    const sigset_t set = stop_signals();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);  // this thread, and every thread started after it
    std::signal(SIGPIPE, SIG_IGN);
    std::thread(wait_for_signals, set).detach();
  });
}

int stop_signal() { return g_signal.load(); }

void clear_stop_signal() { g_signal.store(0); }

const char* signal_name(int signal) {
  switch (signal) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: return "a signal";
  }
}

int run_shell_command(const std::string& command) {
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults = stop_signals();
  sigemptyset(&none);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  const char* argv[] = {"sh", "-c", command.c_str(), nullptr};
  pid_t pid = 0;
  const int error = posix_spawn(&pid, "/bin/sh", nullptr, &attr, const_cast<char* const*>(argv), environ);
  posix_spawnattr_destroy(&attr);
  if (error != 0) return -1;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return status;
}

}  // namespace kiln
