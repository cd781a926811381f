#!/usr/bin/env bash
# Start a one-node Slurm cluster on 127.0.0.1 with a fake GPU and accounting (slurmdbd + MariaDB),
# every file under one scratch folder. Usage: tests/slurm/start.sh SCRATCH
#
# Needs root and the Debian packages slurmctld slurmd slurm-client munge slurmdbd mariadb-server.
# On success it writes SCRATCH/env (source it: SLURM_CONF) and prints "cluster ready". The daemons
# fork by themselves; tests/slurm/stop.sh SCRATCH stops them by their pid files (call it even when
# this script fails half way: it stops whatever was started).
set -euo pipefail

scratch=$(realpath -m "${1:?usage: start.sh SCRATCH}")
host=$(hostname -s)
cpus=$(nproc)
# Leave the machine some memory: the node offers 3/4 of what is free.
memory_mb=$(awk '/MemAvailable/ {print int($2 / 1024 * 3 / 4)}' /proc/meminfo)
cluster=vcorrtest
db_port=${VCORR_TEST_DB_PORT:-3307}
dbd_port=${VCORR_TEST_DBD_PORT:-6819}
ctld_port=${VCORR_TEST_CTLD_PORT:-6817}
slurmd_port=${VCORR_TEST_SLURMD_PORT:-6818}

mkdir -p "$scratch"/{munge-run,munge-key,state,spool,log,run,mysql}
chmod 0755 "$scratch" "$scratch/munge-run"
chmod 0700 "$scratch/munge-key"

# munge: its own key and socket; every daemon and client points at that socket.
munge_socket="$scratch/munge-run/munge.socket"
dd if=/dev/urandom of="$scratch/munge-key/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$scratch/munge-run" "$scratch/munge-key"
chmod 0400 "$scratch/munge-key/munge.key"
mkdir -p /run/munge && chown munge:munge /run/munge
runuser -u munge -- munged --key-file="$scratch/munge-key/munge.key" --socket="$munge_socket" \
    --pid-file="$scratch/munge-run/munged.pid" --log-file="$scratch/munge-run/munged.log" \
    --seed-file="$scratch/munge-run/munged.seed" --force

# MariaDB for accounting, on loopback TCP only.
mariadb-install-db --user=root --datadir="$scratch/mysql" --auth-root-authentication-method=socket \
    >"$scratch/log/mariadb-install.log" 2>&1
setsid mariadbd --user=root --datadir="$scratch/mysql" --bind-address=127.0.0.1 --port="$db_port" \
    --socket="$scratch/run/mysqld.sock" --pid-file="$scratch/run/mysqld.pid" \
    --log-error="$scratch/log/mariadb.log" --skip-name-resolve </dev/null >/dev/null 2>&1 &
for _ in $(seq 60); do
    mariadb --socket="$scratch/run/mysqld.sock" -e 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.5
done
mariadb --socket="$scratch/run/mysqld.sock" -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'vcorr-test';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

cat >"$scratch/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$munge_socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$scratch/run/slurmdbd.pid
LogFile=$scratch/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=vcorr-test
StorageLoc=slurm_acct_db
CONF
chmod 0600 "$scratch/slurmdbd.conf"

cat >"$scratch/slurm.conf" <<CONF
ClusterName=$cluster
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$munge_socket
StateSaveLocation=$scratch/state
SlurmdSpoolDir=$scratch/spool
SlurmctldPidFile=$scratch/run/slurmctld.pid
SlurmdPidFile=$scratch/run/slurmd.pid
SlurmctldLogFile=$scratch/log/slurmctld.log
SlurmdLogFile=$scratch/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
AccountingStoragePass=$munge_socket
AccountingStorageTRES=gres/gpu
# Keep the comment the Snakemake executor gives each job (rule_<name>_wildcards_...) in sacct.
AccountingStoreFlags=job_comment
MinJobAge=300
ReturnToService=2
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb Gres=gpu:fake:1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
cat >"$scratch/gres.conf" <<CONF
AutoDetect=off
NodeName=$host Name=gpu Type=fake File=/dev/null
CONF

# Inside a job the executor's jobstep drops SLURM_CONF, so srun falls back to /etc/slurm/slurm.conf.
if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
    echo "start.sh: /etc/slurm/slurm.conf exists and is not ours; refusing to replace it" >&2
    exit 1
fi
mkdir -p /etc/slurm
ln -sfn "$scratch/slurm.conf" /etc/slurm/slurm.conf
ln -sfn "$scratch/gres.conf" /etc/slurm/gres.conf
echo "export SLURM_CONF=$scratch/slurm.conf" >"$scratch/env"
export SLURM_CONF="$scratch/slurm.conf"

slurmdbd
for _ in $(seq 60); do
    sacctmgr -n list cluster >/dev/null 2>&1 && break
    sleep 0.5
done
sacctmgr -i add cluster "$cluster" >/dev/null 2>&1 || true
slurmctld -f "$scratch/slurm.conf"
slurmd -f "$scratch/slurm.conf"

for _ in $(seq 120); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    if [ "$state" = idle ]; then
        echo "cluster ready: node $host, $cpus CPUs, ${memory_mb} MB, gpu:fake:1, SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "start.sh: the node did not become idle (state '${state:-}'); see $scratch/log/" >&2
exit 1
