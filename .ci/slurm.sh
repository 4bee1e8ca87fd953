#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, the smoke preset through it, then teardown.
#
# Called by .ci/run inside its venv. It installs Debian's slurm-wlm and munge, writes a slurm.conf
# for this node (its real CPUs and memory, no accounting database, a job-completion log), starts
# munged, slurmctld and slurmd, and runs `snakemake --configfile config/smoke.yaml` through
# snakemake-executor-plugin-slurm with a copy of profiles/slurm edited as a user edits it. It
# passes only if Table I appears and every cluster job went through sbatch (the job-completion
# log lists it, COMPLETED). Where the machine cannot do this (no root, no apt, no slurmd) it prints
# "SLURM check SKIPPED: <reason>" and exits 0: the cluster is never faked.
# Outside its temporary folder it writes only the packages it installs and /etc/slurm/slurm.conf
# (refusing to run where one exists, and removing its own on exit); the daemons it started are
# stopped on exit.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
skip() { echo "SLURM check SKIPPED: $*"; exit 0; }

[ "$(id -u)" = 0 ] || skip "slurmctld and slurmd need root, and this runs as $(id -un)"
if ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || skip "slurm-wlm is not installed and there is no apt-get to install it"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
        || skip "apt-get install slurm-wlm munge failed (no package index or network?)"
fi
pip install --quiet snakemake-executor-plugin-slurm || skip "pip could not install snakemake-executor-plugin-slurm"

work="$(mktemp -d /tmp/cmfnet-slurm.XXXXXX)"
node="$(hostname -s)"
cpus="$(nproc)"
memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p "$work/state" "$work/spool" "$work/run"
# The job steps (srun inside each sbatch job) read the default /etc/slurm/slurm.conf whatever
# SLURM_CONF says, so the file goes there; one that is already there is a real site's: left alone,
# unless it is this script's own, left by a run that was killed before its cleanup.
conf=/etc/slurm/slurm.conf
if [ -e "$conf" ]; then
    if [ "$(head -n 1 "$conf")" = "ClusterName=cmfnet-ci" ]; then
        echo "replacing $conf, left by an earlier run of this check that was killed before its cleanup"
    else
        rm -rf "$work"; skip "$conf already exists (a configured SLURM site); not replacing it"
    fi
fi
mkdir -p /etc/slurm
cat > "$conf.cmfnet-ci" <<CONF
ClusterName=cmfnet-ci
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$work/jobcomp.log
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/run/slurmctld.pid
SlurmdPidFile=$work/run/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
NodeName=$node CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=ci Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
mv "$conf.cmfnet-ci" "$conf"

started_munge=0
cleanup() {
    for pidfile in "$work/run/slurmd.pid" "$work/run/slurmctld.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    [ "$started_munge" = 1 ] && pkill -x munged 2>/dev/null || true
    rm -f "$conf"   # written by this script (it refuses to run over a conf it did not write)
    rm -rf "$work"
}
trap cleanup EXIT

if ! pgrep -x munged >/dev/null; then
    [ -s /etc/munge/munge.key ] || skip "munge has no key in /etc/munge/munge.key"
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    runuser -u munge -- munged 2>/dev/null || munged --force 2>/dev/null || skip "munged would not start"
    started_munge=1
fi
slurmctld || skip "slurmctld would not start: $(tail -n 3 "$work/slurmctld.log" 2>/dev/null)"
slurmd || skip "slurmd would not start on this machine: $(tail -n 3 "$work/slurmd.log" 2>/dev/null)"
for _ in $(seq 30); do
    sinfo -h -o %T 2>/dev/null | grep -qx idle && break
    sleep 1
done
sinfo -h -o %T | grep -qx idle || skip "the node did not come up idle: $(sinfo -h 2>&1 | head -n 1)"
echo "SLURM cluster up: node $node, $cpus CPUs, $memory_mb MB, partition ci"

# A clean copy of the repository (tracked files and the working tree's edits), so that the run
# writes nothing into the checkout.
mkdir -p "$work/clone" && (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 cp --parents -t "$work/clone")
# The user's edits of README "Cluster": the partition, no account, squeue for job status (this
# cluster has no accounting database, so the plugin's default sacct check would wait forever).
python - "$work/clone/profiles/slurm/config.yaml" <<'PY'
import sys, yaml
path = sys.argv[1]
profile = yaml.safe_load(open(path))
profile["default-resources"]["slurm_partition"] = "ci"
del profile["default-resources"]["slurm_account"]
profile.update({"slurm-no-account": True, "slurm-status-command": "squeue",
                "slurm-init-seconds-before-status-checks": 5, "jobs": 4})
yaml.safe_dump(profile, open(path, "w"), sort_keys=False)
PY
cd "$work/clone"
start=$(date +%s)
snakemake --workflow-profile profiles/slurm --configfile config/smoke.yaml > "$work/snakemake.log" 2>&1 \
    || { tail -n 40 "$work/snakemake.log"; find .snakemake/slurm_logs -name "*.log" -exec tail -n 30 {} \; 2>/dev/null
         tail -n 20 "$work/slurmd.log"; echo "SLURM check FAILED: the smoke run did not finish"; exit 1; }
seconds=$(( $(date +%s) - start ))

test -s results/tables/table1.md || { echo "SLURM check FAILED: no results/tables/table1.md"; exit 1; }
submitted=$(grep -c "Job .* has been submitted with SLURM jobid" "$work/snakemake.log" || true)
completed=$(grep -c "JobState=COMPLETED" "$work/jobcomp.log" || true)
failed=$(grep -v "JobState=COMPLETED" "$work/jobcomp.log" | grep -c "JobState=" || true)
echo "SLURM smoke run: $seconds s, $submitted jobs submitted through sbatch, $completed completed in SLURM's job-completion log, $failed not"
if [ "$submitted" -lt 1 ] || [ "$completed" -lt "$submitted" ] || [ "$failed" -ne 0 ]; then
    echo "SLURM check FAILED: the jobs did not all go through the cluster"; exit 1
fi
echo "SLURM check PASSED"
