#!/bin/bash
# A single-node Slurm on this machine, for testing the job-array scripts:
#   scripts/slurm/local-cluster.sh start   # install (Debian), configure, start munged/slurmctld/slurmd
#   scripts/slurm/local-cluster.sh stop    # stop what `start` started
# Needs root. No cgroups (proctrack/linuxproc, task/none), no accounting.
# Not for production: your cluster already has Slurm.
set -euo pipefail
state=/run/imagenet-hard-slurm
host="$(hostname -s)"

start() {
  if command -v sinfo >/dev/null && sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "a Slurm is already answering here; using it" >&2
    return 0
  fi
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
  fi
  mkdir -p "$state" /run/munge /var/log/munge /var/lib/munge /etc/munge \
    /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/slurm /etc/slurm
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [[ -s /etc/munge/munge.key ]] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    sleep 1
  fi
  local node
  node="$(slurmd -C | head -1 | sed -E "s/^NodeName=[^ ]+/NodeName=$host NodeAddr=127.0.0.1/; s/ UpTime=.*//")"
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=imagenet-hard-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmdSpoolDir=/var/lib/slurm/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  slurmctld
  slurmd
  for _ in $(seq 1 30); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "local Slurm up on $host" >&2
      return 0
    fi
    sleep 1
  done
  echo "local Slurm did not come up; see /var/log/slurm/" >&2
  return 1
}

stop() {
  scontrol shutdown >/dev/null 2>&1 || true
  sleep 1
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
  echo "local Slurm stopped" >&2
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
