#!/usr/bin/env bash
# Run COMMAND against a one-node Slurm cluster that exists only for its duration:
#   tests/slurm/with-cluster.sh SCRATCH COMMAND [ARGS...]
# starts the cluster (start.sh), exports SLURM_CONF, runs COMMAND, and on any exit (success,
# failure, SIGTERM from `timeout`) writes the accounting records of every job to
# SCRATCH/sacct.tsv and stops the daemons (stop.sh). Exit status: COMMAND's, or start.sh's.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
scratch=$(realpath -m "${1:?usage: with-cluster.sh SCRATCH COMMAND [ARGS...]}")
shift

finish() {
    status=$?
    trap - EXIT INT TERM
    if [ -n "${SLURM_CONF:-}" ]; then
        sleep 2  # the controller hands finished jobs to slurmdbd asynchronously
        sacct --allusers --allocations --parsable2 --starttime=now-1days \
            --format=JobID,State,ExitCode,ReqTRES,AllocTRES,Comment >"$scratch/sacct.tsv" 2>&1 || true
    fi
    bash "$here/stop.sh" "$scratch"
    exit "$status"
}
trap finish EXIT
trap 'exit 143' INT TERM

bash "$here/start.sh" "$scratch" || exit $?
source "$scratch/env"
export SLURM_CONF
"$@"
