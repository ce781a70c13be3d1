#!/usr/bin/env bash
# A single-node Slurm for the tests (docs/parallel.md, "On a cluster"): munge, slurmctld and
# slurmd started by hand (no systemd), everything in one folder.
#   tests/slurm/slurm-cluster.sh start DIR   writes DIR/slurm.conf, starts the daemons, waits for
#                                            the node to be idle; prints why when it cannot
#                                            (exit 77: Slurm is not installed, or not root)
#   tests/slurm/slurm-cluster.sh stop DIR    stops what start started
# Clients find the cluster with SLURM_CONF=DIR/slurm.conf.
set -uo pipefail
cmd=${1:?start or stop}
dir=${2:?a folder}
skip() { echo "SKIPPED: $*"; exit 77; }

stop() {
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
  done
  for _ in $(seq 50); do
    pgrep -f "slurm(ctld|d) -f $dir/slurm.conf" >/dev/null || break
    sleep 0.1
  done
  pkill -9 -f "slurm(ctld|d) -f $dir/slurm.conf" 2>/dev/null
  return 0
}

if [ "$cmd" = stop ]; then stop; exit 0; fi

for tool in slurmctld slurmd sbatch scontrol sinfo munged; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || skip "$tool is not installed (Debian: slurm-wlm munge; scripts/install-deps.sh installs them)"
done
[ "$(id -u)" = 0 ] || skip "starting slurmctld and slurmd needs root"
[ -r /etc/munge/munge.key ] || skip "/etc/munge/munge.key is missing (the munge package creates it)"

# munge: one daemon for the machine, shared by every test.
if ! pgrep -x munged >/dev/null; then
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged || skip "munged would not start"
fi

mkdir -p "$dir/state" "$dir/spool"
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=kilntest
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=${KILN_SLURM_PORT:-6817}
SlurmdPort=$(( ${KILN_SLURM_PORT:-6817} + 1 ))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
SchedulerTimeSlice=5
KillWait=10
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
stop
/usr/sbin/slurmctld -f "$dir/slurm.conf" || skip "slurmctld would not start (see $dir/slurmctld.log)"
/usr/sbin/slurmd -f "$dir/slurm.conf" || { stop; skip "slurmd would not start (see $dir/slurmd.log)"; }
export SLURM_CONF=$dir/slurm.conf
for _ in $(seq 100); do
  state=$(sinfo -h -o %t 2>/dev/null | head -n 1)
  [ "$state" = idle ] && { echo "slurm: node $host idle ($cpus CPUs), SLURM_CONF=$dir/slurm.conf"; exit 0; }
  sleep 0.2
done
stop
skip "the node did not become idle within 20 s (state '${state:-none}'; see $dir/slurmctld.log and slurmd.log)"
