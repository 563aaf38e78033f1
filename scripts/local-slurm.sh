#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for testing the workflow's SLURM path.
#
#   scripts/local-slurm.sh start STATE_DIR   install slurm-wlm + munge if missing (Debian, root),
#                                            start munged, slurmctld and slurmd with every file
#                                            (config, key, sockets, spool, logs, pids) in STATE_DIR;
#                                            prints SLURM_CONF=STATE_DIR/slurm.conf
#   scripts/local-slurm.sh stop STATE_DIR    cancel this cluster's jobs, stop the daemons it started
#
# Nothing outside STATE_DIR is written (no /var/spool, no /var/log) but two things, both removed by
# stop: munged's socket, in a directory of its own under /tmp (munged wants every directory above
# its socket open to all, which a private STATE_DIR need not be), and a link from the compiled-in
# /etc/slurm/slurm.conf to STATE_DIR/slurm.conf. Clients outside jobs can use SLURM_CONF, but the
# SLURM plugin's job step drops SLURM_* variables before its srun, which then reads only that
# path; a machine that already has a slurm.conf there is refused, not changed. The ports are picked free, so a site's own
# SLURM on the machine is neither used nor disturbed. Daemons are stopped by the pids recorded at
# start, checked against their process names, never by name alone. Needs root (slurmd starts jobs
# as the submitting user).
set -euo pipefail

die() { printf 'local-slurm: %s\n' "$*" >&2; exit 1; }
say() { printf 'local-slurm: %s\n' "$*" >&2; }

usage() { die "usage: $0 start|stop STATE_DIR"; }
(($# == 2)) || usage
ACTION=$1
STATE=$(realpath -m "$2")
PARTITION=local
DEFAULT_CONF=/etc/slurm/slurm.conf
MARKER="# written by scripts/local-slurm.sh"

# pid_of NAME: the pid recorded for our daemon NAME if that process still runs under that name.
pid_of() {
    local file=$STATE/run/$1.pid pid
    [[ -s $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [[ -n $pid && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] && echo "$pid"
}

wait_until() {  # wait_until SECONDS WHAT COMMAND...
    local seconds=$1 what=$2 i
    shift 2
    for ((i = 0; i < seconds * 4; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    die "timed out after ${seconds}s waiting for $what (logs: $STATE/log/)"
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]}"
    # Debian images without systemd refuse service starts (policy-rc.d); nothing is started here.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; }
}

free_ports() {  # two TCP ports nobody listens on
    python3 - <<'EOF'
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
EOF
}

write_config() {
    local hw cpus memory ports
    hw=$(slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+ +//; s/ *UpTime=.*//')
    cpus=$(grep -oE 'CPUs=[0-9]+' <<<"$hw" | cut -d= -f2)
    memory=$(grep -oE 'RealMemory=[0-9]+' <<<"$hw" | cut -d= -f2)
    read -r -a ports <<<"$(free_ports)"
    cat >"$STATE/slurm.conf" <<EOF
$MARKER: a single-node cluster whose state lives in $STATE
ClusterName=gguf-forge-local
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=${ports[0]}
SlurmdPort=${ports[1]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# Finished jobs stay visible to 'squeue --states=all' for an hour: with no accounting database,
# that is how snakemake-executor-plugin-slurm (--slurm-status-command squeue) sees them end.
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=10
Waittime=0
# Without --mem a job would get the whole node under CR_Core_Memory.
DefMemPerCPU=$((memory / cpus))
NodeName=localhost NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

link_default_conf() {  # /etc/slurm/slurm.conf -> STATE/slurm.conf, unless that path is taken
    local target
    if [[ -L $DEFAULT_CONF ]]; then
        target=$(readlink "$DEFAULT_CONF")
        # A dangling link, or one left by a run of this script that is no longer up, is replaced.
        if [[ ! -e $target ]] || { grep -q "^$MARKER" "$target" && ! STATE=${target%/slurm.conf} pid_of slurmctld >/dev/null; }; then
            rm -f "$DEFAULT_CONF"
        fi
    fi
    [[ -e $DEFAULT_CONF || -L $DEFAULT_CONF ]] &&
        die "$DEFAULT_CONF exists (a SLURM of this machine's own?); this test cluster needs that path"
    install -d -m 0755 "$(dirname "$DEFAULT_CONF")"
    ln -s "$STATE/slurm.conf" "$DEFAULT_CONF"
}

node_idle() {
    case "$(sinfo -h -n localhost -o %t 2>/dev/null)" in
        idle | mix | alloc) return 0 ;;
        *) return 1 ;;
    esac
}

start() {
    [[ $EUID -eq 0 ]] || die "must run as root (slurmd starts jobs as their user)"
    pid_of slurmctld >/dev/null && die "a cluster already runs from $STATE; stop it first"
    install_packages
    # A start that fails half-way stops what it had started.
    trap 'say "start failed; stopping what was started"; stop' EXIT
    install -d -m 0755 "$STATE" "$STATE/run" "$STATE/log" "$STATE/ctld" "$STATE/slurmd"
    install -d -m 0700 "$STATE/munge"
    local socket_dir
    socket_dir=$(mktemp -d /tmp/local-slurm-munge.XXXXXX)
    chmod 0755 "$socket_dir"
    echo "$socket_dir" >"$STATE/run/munge-socket-dir"
    SOCKET=$socket_dir/munge.sock
    [[ -s $STATE/munge/munge.key ]] || mungekey --create --keyfile="$STATE/munge/munge.key"
    export SLURM_CONF=$STATE/slurm.conf
    write_config
    link_default_conf

    munged --socket="$SOCKET" --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" \
        --seed-file="$STATE/munge/munged.seed"
    wait_until 20 "munged" pid_of munged
    slurmctld
    wait_until 60 "slurmctld" bash -c 'scontrol ping | grep -q "is UP"'
    slurmd -N localhost
    wait_until 60 "node localhost to be idle" node_idle
    trap - EXIT
    say "cluster up: $(sinfo -h -o '%P %D node(s) %c cpus %m MB %t')"
    echo "SLURM_CONF=$SLURM_CONF"
}

stop() {
    export SLURM_CONF=$STATE/slurm.conf
    if pid_of slurmctld >/dev/null; then
        # Stopping slurmd leaves running jobs' slurmstepd behind: cancel them first.
        scancel --quiet --partition "$PARTITION" 2>/dev/null || true
        for ((i = 0; i < 120; i++)); do
            [[ -z "$(squeue -h -t PENDING,RUNNING,COMPLETING -o %i 2>/dev/null)" ]] && break
            sleep 0.25
        done
    fi
    local name pid i socket_dir
    for name in slurmd slurmctld munged; do
        pid=$(pid_of "$name") || continue
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 120; i++)); do
            [[ -d /proc/$pid ]] || break
            sleep 0.25
        done
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] && kill -KILL "$pid"
        say "stopped $name ($pid)"
    done
    [[ "$(readlink "$DEFAULT_CONF" 2>/dev/null)" == "$STATE/slurm.conf" ]] && rm -f "$DEFAULT_CONF"
    socket_dir=$(cat "$STATE/run/munge-socket-dir" 2>/dev/null || true)
    [[ $socket_dir == /tmp/local-slurm-munge.* ]] && rm -rf -- "$socket_dir"
    rm -f "$STATE/run/munge-socket-dir"
    return 0
}

case $ACTION in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
