#!/usr/bin/env bash
# Run COMMAND against a one-node Slurm cluster that exists only for its duration:
#   tests/slurm/with-cluster.sh SCRATCH COMMAND [ARGS...]
# starts the cluster (start.sh), exports SLURM_CONF, runs COMMAND, writes the accounting records
# of every job to SCRATCH/sacct.tsv, and on any exit (success, failure, SIGTERM from `timeout`)
# stops the daemons (stop.sh). Exit status: COMMAND's, or start.sh's, or 143 when terminated.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
scratch=$(realpath -m "${1:?usage: with-cluster.sh SCRATCH COMMAND [ARGS...]}")
shift
child=

stop_cluster() {
    trap - EXIT INT TERM
    bash "$here/stop.sh" "$scratch"
}

terminate() {
    # COMMAND runs in the background so that this runs at once, not when COMMAND ends.
    if [ -n "$child" ] && kill -TERM "$child" 2>/dev/null; then
        for _ in $(seq 20); do kill -0 "$child" 2>/dev/null || break; sleep 0.25; done
        kill -KILL "$child" 2>/dev/null
    fi
    stop_cluster
    exit 143
}

trap stop_cluster EXIT
trap terminate INT TERM

bash "$here/start.sh" "$scratch" || exit $?
source "$scratch/env"
export SLURM_CONF
"$@" &
child=$!
wait "$child"
status=$?
child=
sleep 2  # the controller hands finished jobs to slurmdbd asynchronously
sacct --allusers --allocations --parsable2 --starttime=now-1days \
    --format=JobID,State,ExitCode,ReqTRES,AllocTRES,Comment >"$scratch/sacct.tsv" 2>&1
exit "$status"
