#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests and for trying the cluster path by hand:
# munge, MariaDB (accounting), slurmdbd, slurmctld and slurmd from Debian's packages, all state in DIR.
#
#   eval "$(tests/slurm/cluster.sh start /tmp/slurm)"   # prints `export SLURM_CONF=DIR/slurm.conf`
#   sinfo; sbatch ...; sacct ...
#   tests/slurm/cluster.sh stop /tmp/slurm
#
# The node declares the resources of a GPU node like the one workflow/profiles/slurm/resources.yaml asks
# for (16 CPUs, 128 GB, 2 GPUs; `config_overrides` lets a smaller machine stand in, and the GPUs are
# stand-in device files, so a job given one runs on the CPU), in two partitions, `cpu` (the default,
# 1 day) and `gpu` (3 days), and one account, `dvt`, that every local user belongs to.
# Ports are not SLURM's defaults (6817-6819). /etc/slurm/slurm.conf becomes a link to DIR/slurm.conf,
# as on a real cluster (the SLURM executor's job step drops SLURM_CONF before its `srun`); a
# slurm.conf of a real installation there is never replaced: then this script refuses to start.
# Needs root and: apt-get install slurm-wlm slurmdbd munge mariadb-server
set -euo pipefail

cmd=${1:-}; dir=${2:-}
if [[ -z $cmd || -z $dir ]]; then
    echo "usage: $0 start|stop DIR" >&2; exit 2
fi
dir=$(realpath -m "$dir")
export SLURM_CONF=$dir/slurm.conf
host=$(hostname -s)
ctld_port=${DVT_SLURM_PORT:-16817}
mysql_port=$((ctld_port + 10))

stop() {
    # slurmd, slurmctld, slurmdbd, MariaDB; munged stays (it may serve others and costs nothing).
    if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$dir/slurm.conf" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
    for name in slurmd slurmctld slurmdbd mariadb; do
        pidfile=$dir/$name.pid
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "$0: $what did not come up in $seconds s; see the logs in $dir" >&2
    stop; exit 1
}

if [[ $cmd == stop ]]; then stop; exit 0; fi
[[ $cmd == start ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
# One test cluster at a time (same ports): stop the one /etc/slurm/slurm.conf points to, e.g. the
# leftover of a test session that was killed.
if [[ -L /etc/slurm/slurm.conf ]]; then
    previous=$(dirname "$(readlink /etc/slurm/slurm.conf)")
    [[ $previous == "$dir" ]] || "$0" stop "$previous"
fi
for tool in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sacctmgr; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is not installed (apt-get install slurm-wlm slurmdbd munge mariadb-server)" >&2; exit 1; }
done
if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
    echo "$0: /etc/slurm/slurm.conf belongs to a SLURM installation on this machine; not replacing it" >&2; exit 1
fi
stop
mkdir -p "$dir/state" "$dir/spool" /etc/slurm

if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    [[ -f /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || create-munge-key; }
    runuser -u munge -- munged
fi

cat > "$dir/slurm.conf" <<CONF
ClusterName=dvttest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$((ctld_port + 1))
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((ctld_port + 2))
AccountingStorageEnforce=associations,limits
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
# sacct shows the rule and wildcards the executor writes into each job's comment
AccountingStoreFlags=job_comment
GresTypes=gpu
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
# quick turnaround for tests: a killed job's processes get 5 s, a finished job stays in squeue 5 min
KillWait=5
MinJobAge=300
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=16 Boards=1 SocketsPerBoard=1 CoresPerSocket=16 ThreadsPerCore=1 RealMemory=128000 Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=1-00:00:00 State=UP
PartitionName=gpu Nodes=$host MaxTime=3-00:00:00 State=UP
CONF
# SLURM drops GPUs without device files; two stand-ins with /dev/null's numbers (no CUDA behind them:
# a job that is given one runs on the CPU).
mkdir -p "$dir/dev"
for i in 0 1; do [[ -c $dir/dev/gpu$i ]] || mknod "$dir/dev/gpu$i" c 1 3; done
printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/dev/gpu[0-1]\n' "$host" "$dir" > "$dir/gres.conf"
cat > "$dir/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$((ctld_port + 2))
SlurmUser=root
PidFile=$dir/slurmdbd.pid
LogFile=$dir/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$mysql_port
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
chmod 600 "$dir/slurmdbd.conf"

if [[ ! -d $dir/mysql ]]; then
    mariadb-install-db --user=root --datadir="$dir/mysql" --auth-root-authentication-method=socket \
        --skip-test-db > "$dir/mariadb-install.log" 2>&1
fi
mariadbd --user=root --datadir="$dir/mysql" --socket="$dir/mysql.sock" --bind-address=127.0.0.1 \
    --port=$mysql_port --pid-file="$dir/mariadb.pid" --log-error="$dir/mariadb.log" &
wait_for 60 MariaDB mariadb --socket="$dir/mysql.sock" -e "select 1"
mariadb --socket="$dir/mysql.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"

slurmdbd
wait_for 60 slurmdbd sacctmgr -i list cluster
sacctmgr -i add cluster dvttest >/dev/null 2>&1 || true
sacctmgr -i add account dvt cluster=dvttest description=dvt-tests organization=dvt >/dev/null 2>&1 || true
for user in root $(getent passwd | awk -F: '$3 >= 1000 && $3 < 65534 {print $1}'); do
    sacctmgr -i add user "$user" account=dvt cluster=dvttest >/dev/null 2>&1 || true
done

ln -sfn "$dir/slurm.conf" /etc/slurm/slurm.conf  # from here on `stop DIR` takes it back
slurmctld
wait_for 60 slurmctld scontrol ping
slurmd
# a node drained by an earlier run's state (e.g. a changed gres.conf) is taken back
wait_for 30 "slurmd" bash -c "sinfo -h -N -o %t | grep -qv -e '^down' -e '^unk'"
scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
wait_for 60 "the node" bash -c "sinfo -h -N -o %t | grep -qx idle"
echo "export SLURM_CONF=$SLURM_CONF"
