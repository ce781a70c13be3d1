// Stopping a run cleanly when the machine is taken away (docs/parallel.md, "On a cluster").
// Cluster schedulers warn a job before they end it: Slurm sends SIGTERM (or the signal asked for
// with --signal=USR1@SECONDS) ahead of a time limit or a preemption, and mpirun forwards SIGUSR1.
// The handlers only set a flag; at the next step boundary every rank learns (one collective)
// whether any rank was asked to stop, and then they write a checkpoint together and end with
// kStopExitStatus, which the job script (or `scontrol requeue`) turns into a requeue. A second
// Ctrl-C ends the process at once. SIGPIPE is ignored, so a closed console pipe
// (`kiln train ... | head`) never kills training.
#pragma once

namespace kiln {

// The exit status of a run stopped by a signal after saving a checkpoint: EX_TEMPFAIL, "try
// again later". A requeued job continues from that checkpoint with train.resume=auto.
constexpr int kStopExitStatus = 75;

// Installs the handlers for SIGTERM, SIGINT and SIGUSR1, and ignores SIGPIPE.
void install_stop_handlers();
// The signal that asked this process to stop (0: none yet).
int stop_signal();
// Forgets a stop request (tests).
void clear_stop_signal();
// "SIGTERM", "SIGUSR1", ... for messages.
const char* signal_name(int signal);

}  // namespace kiln
