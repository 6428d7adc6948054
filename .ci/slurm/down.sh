#!/usr/bin/env bash
# Stops the single-node Slurm cluster that .ci/slurm/up.sh STATE_DIR started for the
# .ci/slurm-test of issue 21: exactly the process ids recorded in STATE_DIR/pids (munged,
# slurmctld, slurmd), nothing else. TERM first, KILL whatever is still alive after 10 s.
# Already-dead ids are fine; a missing pids file means there is nothing to stop.
# Job steps still running under slurmstepd are not tracked here: let jobs finish (or
# scancel them) before calling this.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 STATE_DIR" >&2
    exit 2
fi
pids_file="$1/pids"
if [ ! -f "$pids_file" ]; then
    echo "down.sh: no $pids_file, nothing to stop" >&2
    exit 0
fi

pids=()
while read -r pid; do
    case "$pid" in
        '' | *[!0-9]*) continue ;;
    esac
    pids+=("$pid")
done <"$pids_file"

# Stop the slurm daemons before munged (reverse of start order) so they log out cleanly.
# "Alive" = exists, is not a zombie (a container may lack an init that reaps them) and is
# still one of our daemons (guards against the id having been reused by something else).
alive() {
    local p stat comm out=()
    for p in "$@"; do
        stat="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
        comm="${stat#*(}"
        comm="${comm%%)*}"
        case "$comm" in munged | slurmctld | slurmd) ;; *) continue ;; esac
        [ "$(awk '{print $1}' <<<"${stat##*)}")" != Z ] || continue
        out+=("$p")
    done
    echo "${out[@]}"
}
read -r -a live <<<"$(alive "${pids[@]}")"
for ((i = ${#live[@]} - 1; i >= 0; i--)); do
    kill -TERM "${live[i]}" 2>/dev/null || true
done
for _ in $(seq 100); do
    [ -n "$(alive "${live[@]}")" ] || break
    sleep 0.1
done
left="$(alive "${live[@]}")"
if [ -n "$left" ]; then
    echo "down.sh: still alive after 10 s, killing: $left" >&2
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
fi
rm -f "$pids_file"
echo "down.sh: stopped ${live[*]:-nothing} (recorded: ${pids[*]:-none})" >&2
