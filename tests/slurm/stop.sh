#!/usr/bin/env bash
# Stop the cluster tests/slurm/start.sh SCRATCH started, by its pid files, and remove the
# /etc/slurm links that point into SCRATCH. Safe to call more than once or after a failed start.
set -uo pipefail

scratch=$(realpath -m "${1:?usage: stop.sh SCRATCH}")

stop_pid_file() {
    local pid_file=$1 pid
    [ -s "$pid_file" ] || return 0
    pid=$(cat "$pid_file")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 40); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.25
    done
    kill -9 "$pid" 2>/dev/null || true
}

# Reverse start order: compute node, controller, accounting, database, authentication.
for daemon in slurmd slurmctld slurmdbd mysqld; do
    stop_pid_file "$scratch/run/$daemon.pid"
done
stop_pid_file "$scratch/munge-run/munged.pid"

for link in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    if [ -L "$link" ] && [[ "$(readlink "$link")" == "$scratch"/* ]]; then
        rm -f "$link"
    fi
done
exit 0
