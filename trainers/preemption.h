// Stopping a run cleanly when the machine is taken away (docs/parallel.md, "On a cluster").
// Cluster schedulers warn a job before they end it: Slurm sends SIGTERM (or the signal asked for
// with --signal=USR1@SECONDS) ahead of a time limit or a preemption, and mpirun forwards SIGUSR1.
// No handler runs on a compute thread: the stop signals are blocked in every thread and one
// thread waits for them (sigwait) and sets a flag. (A signal handler runs on whichever thread the
// kernel picks, and a signal frame landing on oneDNN's AVX-512 sgemm kernels (libdnnl 2.6)
// corrupts the heap: `malloc(): unaligned tcache chunk` a few steps later, in 3 of 70 stops under
// mpirun.) At the next step boundary every rank learns (one collective) whether any rank was
// asked to stop, and then they write a checkpoint together and end with
// kStopExitStatus, which the job script (or `scontrol requeue`) turns into a requeue. A second
// Ctrl-C ends the process at once. SIGPIPE is ignored, so a closed console pipe
// (`kiln train ... | head`) never kills training.
#pragma once

#include <string>

namespace kiln {

// The exit status of a run stopped by a signal after saving a checkpoint: EX_TEMPFAIL, "try
// again later". A requeued job continues from that checkpoint with train.resume=auto.
constexpr int kStopExitStatus = 75;

// Blocks SIGTERM, SIGINT and SIGUSR1 in the calling thread (and so in every thread it starts
// later) and starts the thread that waits for them; ignores SIGPIPE. Call it first in main,
// before any other thread (OpenMP, MPI, the communicators' workers) exists. Once per process.
void install_stop_handlers();
// The signal that asked this process to stop (0: none yet).
int stop_signal();
// Forgets a stop request (tests).
void clear_stop_signal();
// "SIGTERM", "SIGUSR1", ... for messages.
const char* signal_name(int signal);
// Runs `sh -c command` with the default signal mask and handlers (std::system would hand the
// child the blocked stop signals) and returns its wait status (-1 when it could not start).
int run_shell_command(const std::string& command);

}  // namespace kiln
