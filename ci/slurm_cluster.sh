#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for testing the workflow's SLURM
# profile (profiles/slurm) end to end.
#
#   ci/slurm_cluster.sh start    # write slurm.conf, start munged, slurmctld, slurmd
#   ci/slurm_cluster.sh status   # daemons, sinfo, squeue
#   ci/slurm_cluster.sh stop     # stop the daemons this script started
#
# The config is written to $CALIMAGE3_SLURM_DIR/slurm.conf and linked from
# /etc/slurm/slurm.conf (only when that path is free), so sbatch, squeue and
# the srun inside jobs find it with no environment variable; exporting
# SLURM_CONF=$CALIMAGE3_SLURM_DIR/slurm.conf is harmless.
#
# Requirements (installing them is the caller's job, see .ci/slurm_setup.sh):
# root, and Debian's `slurm-wlm` and `munge` packages (or any Slurm >= 22.05
# with slurmctld, slurmd, sinfo, scontrol and munged on PATH).
#
# Everything the cluster writes (config, state, spool, logs, pid files) lives
# under $CALIMAGE3_SLURM_DIR; the controller listens on 127.0.0.1 only.  No
# accounting database: job states are kept by slurmctld for MinJobAge seconds
# after a job ends, so `squeue --states=all` still reports finished jobs, which
# is what the SLURM profile's status queries rely on.
#
# `start` exits non-zero and prints the daemon logs when anything fails to come
# up; it is idempotent (a running cluster is stopped and started afresh).
set -euo pipefail

DIR=${CALIMAGE3_SLURM_DIR:-/tmp/calimage3-slurm}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)
# Seconds that a finished job stays visible to squeue (and scontrol).
MIN_JOB_AGE=${CALIMAGE3_SLURM_MIN_JOB_AGE:-600}
# How long `start` waits for the node to become idle.
START_TIMEOUT=${CALIMAGE3_SLURM_START_TIMEOUT:-60}
# Slurm's compiled-in config path (Debian).  Clients find the config there
# even without SLURM_CONF, which matters because the job-step executor of
# snakemake-executor-plugin-slurm-jobstep drops every SLURM_* variable,
# SLURM_CONF included, before its nested `srun`.
SYSTEM_CONF=${CALIMAGE3_SLURM_SYSTEM_CONF:-/etc/slurm/slurm.conf}
MUNGE_KEY=/etc/munge/munge.key
MUNGE_SOCKET_DIR=/run/munge

export SLURM_CONF=$CONF

log() { echo "slurm_cluster: $*" >&2; }

show_logs() {
    local f
    for f in "$DIR"/log/*.log /var/log/munge/munged.log; do
        [[ -f $f ]] || continue
        echo "----- $f (last 40 lines) -----" >&2
        tail -n 40 "$f" >&2
    done
}

die() {
    log "ERROR: $*"
    show_logs
    exit 1
}

need() {
    local cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 ||
            die "'$cmd' not found on PATH; install slurm-wlm and munge first (.ci/slurm_setup.sh)"
    done
}

pid_alive() {
    # True when pid file $1 names a live process.
    [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_conf() {
    local cpus mem_kb real_mb margin_mb
    cpus=$(nproc)
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    # Leave 10% (at least 512 MB) to the OS and the daemons.
    margin_mb=$(( mem_kb / 1024 / 10 ))
    (( margin_mb < 512 )) && margin_mb=512
    real_mb=$(( mem_kb / 1024 - margin_mb ))
    (( real_mb > 256 )) || die "too little memory for a node: MemTotal ${mem_kb} kB"
    mkdir -p "$DIR"/{state,spool,log,run}
    cat > "$CONF" <<EOF
# One-node test cluster written by ci/slurm_cluster.sh; do not edit by hand.
ClusterName=calimage3
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: no accounting storage, so no sacct history; finished jobs stay
# in slurmctld (and squeue) for MinJobAge seconds.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=$MIN_JOB_AGE
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# Cores and memory are the consumable resources; a job that asks for no
# memory gets DefMemPerCPU per CPU instead of the whole node.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# Trust this file over what slurmd detects (VMs and containers report odd
# socket/core layouts); a node that went DOWN comes back when slurmd registers.
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=main Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    link_system_conf
    log "wrote $CONF (node $NODE: CPUs=$cpus RealMemory=${real_mb} MB, MinJobAge=${MIN_JOB_AGE}s)"
}

link_system_conf() {
    # Point $SYSTEM_CONF at our config; never overwrite a real cluster's file.
    if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$CONF" ]]; then
        return
    fi
    if [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]]; then
        die "$SYSTEM_CONF exists and is not ours; refusing to replace it (this script is for a throw-away test machine)"
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -s "$CONF" "$SYSTEM_CONF"
    log "linked $SYSTEM_CONF -> $CONF"
}

unlink_system_conf() {
    if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$CONF" ]]; then
        rm -f "$SYSTEM_CONF"
    fi
}

start_munge() {
    # Reuse a munged that already works (e.g. one run by systemd).
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running; using it"
        return
    fi
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating $MUNGE_KEY"
        mkdir -p "$(dirname "$MUNGE_KEY")"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    local owner=root
    id munge >/dev/null 2>&1 && owner=munge
    chown "$owner:" "$MUNGE_KEY" "$(dirname "$MUNGE_KEY")"
    chmod 0700 "$(dirname "$MUNGE_KEY")"
    chmod 0400 "$MUNGE_KEY"
    mkdir -p "$MUNGE_SOCKET_DIR" /var/lib/munge /var/log/munge
    chown "$owner:" "$MUNGE_SOCKET_DIR" /var/lib/munge /var/log/munge
    chmod 0755 "$MUNGE_SOCKET_DIR"
    if [[ $owner == munge ]]; then
        runuser -u munge -- munged || die "munged failed to start"
    else
        munged --force || die "munged failed to start"
    fi
    local i
    for i in $(seq 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && { touch "$DIR/run/munged.ours"; log "munged up"; return; }
        sleep 0.5
    done
    die "munged does not answer (munge -n | unmunge fails)"
}

node_state() {
    sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | head -n 1
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "must run as root (slurmd starts jobs as their user)"
    need munged munge unmunge slurmctld slurmd sinfo scontrol squeue sbatch
    if pid_alive "$DIR/run/slurmctld.pid" || pid_alive "$DIR/run/slurmd.pid"; then
        log "a cluster is running; restarting it"
        cmd_stop
    fi
    write_conf
    : > "$DIR/log/slurmctld.log"
    : > "$DIR/log/slurmd.log"
    start_munge
    # -c: clear saved state (jobs, node states) of a previous run.
    slurmctld -c -f "$CONF" || die "slurmctld failed to start"
    local i
    for i in $(seq "$START_TIMEOUT"); do
        scontrol ping 2>/dev/null | grep -q "is UP" && break
        pid_alive "$DIR/run/slurmctld.pid" || [[ $i -lt 3 ]] || die "slurmctld exited"
        sleep 1
    done
    scontrol ping 2>/dev/null | grep -q "is UP" || die "slurmctld does not answer 'scontrol ping'"
    log "slurmctld up"
    slurmd -f "$CONF" -N "$NODE" || die "slurmd failed to start"
    local state=""
    for i in $(seq "$START_TIMEOUT"); do
        state=$(node_state)
        case $state in
            idle*) break ;;
            drain*|down*|fail*)
                # A node left DOWN by a previous run: resume it once.
                scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        pid_alive "$DIR/run/slurmd.pid" || [[ $i -lt 3 ]] || die "slurmd exited"
        sleep 1
    done
    if [[ $state != idle* ]]; then
        scontrol show node "$NODE" >&2 || true
        die "node $NODE is '${state:-unknown}', not idle, after ${START_TIMEOUT}s"
    fi
    log "node $NODE idle; cluster ready.  export SLURM_CONF=$CONF"
    sinfo
}

stop_pid() {
    # Stop the process of pid file $1 (TERM, then KILL after 15 s).
    local pidfile=$1 name=$2 pid i
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for i in $(seq 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name ($pid) ignores TERM; killing it"
            kill -9 "$pid" 2>/dev/null || true
        fi
        log "stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

cmd_stop() {
    # Cancel what is still queued or running, then stop the daemons.
    if pid_alive "$DIR/run/slurmctld.pid"; then
        scancel --full --state=PENDING 2>/dev/null || true
        scancel --full 2>/dev/null || true
    fi
    stop_pid "$DIR/run/slurmd.pid" slurmd
    stop_pid "$DIR/run/slurmctld.pid" slurmctld
    if [[ -f $DIR/run/munged.ours ]]; then
        stop_pid "$MUNGE_SOCKET_DIR/munged.pid" munged
        rm -f "$DIR/run/munged.ours"
    fi
    unlink_system_conf
}

cmd_status() {
    local name ok=0
    local pidfile
    for name in munged slurmctld slurmd; do
        pidfile=$DIR/run/$name.pid
        [[ $name == munged ]] && pidfile=$MUNGE_SOCKET_DIR/munged.pid
        if pid_alive "$pidfile"; then
            echo "$name: running (pid $(cat "$pidfile"))"
        else
            echo "$name: not running (by this script)"
            [[ $name == munged ]] || ok=1
        fi
    done
    [[ -f $CONF ]] && echo "SLURM_CONF=$CONF"
    if (( ok == 0 )); then
        sinfo
        squeue --states=all
    fi
    return $ok
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
