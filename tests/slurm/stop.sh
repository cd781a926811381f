#!/usr/bin/env bash
# Stop the cluster tests/slurm/start.sh SCRATCH started, by its pid files, and remove the
# /etc/slurm links that point into SCRATCH. Safe to call more than once or after a failed start.
# All daemons are signalled at once (a few seconds in all), then killed if still there after 10 s.
set -uo pipefail

scratch=$(realpath -m "${1:?usage: stop.sh SCRATCH}")

pids=()
for pid_file in "$scratch"/run/{slurmd,slurmctld,slurmdbd,mysqld}.pid "$scratch/munge-run/munged.pid"; do
    [ -s "$pid_file" ] || continue
    pid=$(cat "$pid_file")
    kill "$pid" 2>/dev/null && pids+=("$pid")
done
for _ in $(seq 40); do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && break
    sleep 0.25
done
for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null; done

for link in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    if [ -L "$link" ] && [[ "$(readlink "$link")" == "$scratch"/* ]]; then
        rm -f "$link"
    fi
done
exit 0
