#!/usr/bin/env bash
# Brings up a throw-away single-node Slurm cluster (munged + slurmctld + slurmd, all as root)
# for the .ci/slurm-test of issue 21, so that the job-array / dependency submission path can be
# exercised against a real scheduler on one CI machine or container.
#
# Usage: up.sh STATE_DIR      (then: eval "$(up.sh STATE_DIR | tail -n 1)", or copy the last line)
#
# Everything it writes lives in STATE_DIR: slurm.conf, a private munge key/socket/seed/pid/log,
# the slurmctld and slurmd spool dirs, logs and pid files, and STATE_DIR/pids (the process ids
# that down.sh STATE_DIR stops, and nothing else). Nothing under /etc is configured, and no
# systemd is needed. If STATE_DIR already has live daemons (from an earlier up.sh), they are
# stopped first. Installs slurmctld, slurmd, slurm-client and munge with apt-get if missing.
# No cgroup plugins are used (containers rarely have a writable cgroup fs); there is no
# accounting database, so sacct does not work: finished jobs stay visible to
# `scontrol show job` for MinJobAge (1 h) with their JobState and ExitCode.
# The last line printed is `export SLURM_CONF=STATE_DIR/slurm.conf`; sbatch, squeue, sinfo
# and scontrol need only that (the munge socket path is in slurm.conf as AuthInfo).
# Ports: SLURMCTLD_PORT / SLURMD_PORT override the defaults (6817 / 6818, or the next free).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 STATE_DIR" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$1"
state="$(cd "$1" && pwd)"

log() { echo "up.sh: $*" >&2; }

# --- packages --------------------------------------------------------------------------------
missing=()
for p in slurmctld slurmd slurm-client munge; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (SlurmUser=root, SlurmdUser=root)"
    exit 1
fi

# --- stop what an earlier up.sh left running in this STATE_DIR --------------------------------
if [ -f "$state/pids" ]; then
    log "stopping daemons from an earlier run in $state"
    "$here/down.sh" "$state" >&2
fi

# --- layout ----------------------------------------------------------------------------------
# Fresh spool dirs each time so stale job state from an earlier run cannot leak in.
rm -rf "$state/munge" "$state/slurmctld" "$state/slurmd" "$state/log" "$state/run"
mkdir -p "$state/munge" "$state/slurmctld" "$state/slurmd" "$state/log" "$state/run"
# 0755: munged warns (and non-root clients cannot connect) if the socket dir is not searchable.
chmod 0755 "$state/munge"
: >"$state/pids"

# A free TCP port at or after $1 (nothing accepting connections on 127.0.0.1).
free_port() {
    local p=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
        p=$((p + 1))
    done
    echo "$p"
}
ctld_port="${SLURMCTLD_PORT:-$(free_port 6817)}"
d_port="${SLURMD_PORT:-$(free_port $((ctld_port + 1)))}"

# --- munge: private key, socket, pid, seed and log inside STATE_DIR ---------------------------
sock="$state/munge/munge.socket"
dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$state/munge/munge.key"
# --force: munged as root, and in a dir such as /tmp whose ancestors it may find too open.
munged --foreground --force \
    --key-file="$state/munge/munge.key" \
    --socket="$sock" \
    --pid-file="$state/munge/munged.pid" \
    --seed-file="$state/munge/munged.seed" \
    --log-file="$state/log/munged.log" \
    </dev/null >>"$state/log/munged.log" 2>&1 &
echo $! >>"$state/pids"
for _ in $(seq 50); do
    [ -S "$sock" ] && break
    sleep 0.1
done

# --- slurm.conf ------------------------------------------------------------------------------
host="$(hostname -s)"
# slurmd -C prints this machine's node line (CPUs, sockets, cores, threads, RealMemory in MB);
# use its topology so slurmd does not drain the node, but leave some memory headroom.
node_line="$(slurmd -C | head -n 1)"
mem_total="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")"
[ -n "$mem_total" ] || mem_total=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
mem=$((mem_total * 9 / 10))
topo="$(tr ' ' '\n' <<<"$node_line" | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')"
[ -n "$topo" ] || topo="CPUs=$(nproc) "

cat >"$state/slurm.conf" <<EOF
# Written by .ci/slurm/up.sh: single-node Slurm for the .ci/slurm-test (issue 21).
ClusterName=ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${ctld_port}
SlurmdPort=${d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${sock}
StateSaveLocation=${state}/slurmctld
SlurmdSpoolDir=${state}/slurmd
SlurmctldPidFile=${state}/run/slurmctld.pid
SlurmdPidFile=${state}/run/slurmd.pid
SlurmctldLogFile=${state}/log/slurmctld.log
SlurmdLogFile=${state}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
# Finished jobs (and their ExitCode) stay in 'scontrol show job' for an hour: no accounting.
MinJobAge=3600
PropagateResourceLimits=NONE
MailProg=/bin/true
NodeName=${host} NodeAddr=127.0.0.1 ${topo}RealMemory=${mem} State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$state/slurm.conf"

# --- slurmctld and slurmd, in the foreground of background jobs so $! is their pid ---------
slurmctld -D -f "$SLURM_CONF" </dev/null >>"$state/log/slurmctld.out" 2>&1 &
echo $! >>"$state/pids"
slurmd -D -f "$SLURM_CONF" </dev/null >>"$state/log/slurmd.out" 2>&1 &
echo $! >>"$state/pids"

fail() {
    log "$*"
    for f in "$state"/log/*; do
        echo "----- $f (tail)" >&2
        tail -n 30 "$f" >&2 || true
    done
    "$here/down.sh" "$state" >&2 || true
    exit 1
}

# --- wait for the node to be idle ------------------------------------------------------------
deadline=$((SECONDS + ${SLURM_UP_TIMEOUT:-60}))
state_now=""
while :; do
    while read -r pid; do
        kill -0 "$pid" 2>/dev/null || fail "daemon $pid exited during start-up"
    done <"$state/pids"
    state_now="$(sinfo -h -n "$host" -o '%T' 2>/dev/null | head -n 1 || true)"
    case "$state_now" in
        idle) break ;;
        drain* | down* | fail*)
            fail "node $host is $state_now: $(scontrol show node "$host" 2>/dev/null | grep -i reason || true)"
            ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || fail "node $host not idle after ${SLURM_UP_TIMEOUT:-60} s (state: ${state_now:-none})"
    sleep 0.5
done

log "node $host idle: $topo RealMemory=$mem, partition ci, ports $ctld_port/$d_port"
printf 'export SLURM_CONF=%q\n' "$SLURM_CONF"
