#!/bin/bash
# Re-record the files in this directory on a running test cluster (as root):
#   slurm/testcluster up "$D" && tests/data/slurm-22.05/record.sh "$D" tests/data/slurm-22.05
# Jobs are submitted as the unprivileged user ssuser. Every job is cancelled at the end.
set -euo pipefail
D=$1 OUT=$(cd "$2" && pwd)
eval "$("$(dirname "$0")/../../../slurm/testcluster" env "$D")"
cd "$D/work"
as_user() { runuser -u ssuser -- env SLURM_CONF="$SLURM_CONF" "$@"; }
sq_o() { squeue -h -t PD -o '%i|%P|%Q|%D|%S|%Y|%k'; }
sq_O() { squeue -h -t PD -O 'JobID:|,Partition:|,PriorityLong:|,NumNodes:|,StartTime:|,SchedNodes:|,Comment:'; }

# nothing pending: empty output
cancel_all() { local ids; ids=$(squeue -h -o %i); [ -z "$ids" ] || scancel $ids; }
cancel_all
sleep 1
sq_o >"$OUT/squeue-pd-o-empty.txt"
sq_O >"$OUT/squeue-pd-O-empty.txt"

# one long job takes both CPUs, three jobs pend behind it
as_user sbatch -J long --exclusive --time=10 --wrap 'sleep 300' >/dev/null
until [ "$(squeue -h -n long -o %T)" = RUNNING ]; do sleep 0.2; done
as_user sbatch -J pd-imagenet --time=5 --comment 'datasets:imagenet' --wrap 'sleep 10' >/dev/null
as_user sbatch -J pd-coco --time=5 --comment 'datasets:coco,imagenet extra text' --wrap 'sleep 10' >/dev/null
as_user sbatch -J pd-nocomment --time=5 --wrap 'sleep 10' >/dev/null
# immediately: before any backfill pass has looked at them
sq_o >"$OUT/squeue-pd-o-before-backfill.txt"
sq_O >"$OUT/squeue-pd-O-before-backfill.txt"
scontrol -o show job >"$OUT/scontrol-show-job-o-before-backfill.txt"
sleep 12 # bf_interval=5: at least one backfill pass
sq_o >"$OUT/squeue-pd-o.txt"
sq_O >"$OUT/squeue-pd-O.txt"
scontrol -o show job >"$OUT/scontrol-show-job-o.txt"
scontrol show job >"$OUT/scontrol-show-job.txt"
squeue --json >"$OUT/squeue-json.json"
squeue --json -t PD >"$OUT/squeue-json-t-PD.json"
squeue -h -o '%i|%T|%P|%D|%S|%Y|%R|%k' >"$OUT/squeue-all-o.txt"
sinfo -h -N -o '%N|%R' >"$OUT/sinfo-N-o.txt"
sinfo -h -o '%R|%N' >"$OUT/sinfo-o.txt"
sinfo -h -N -o '%N|%R|%T|%C' >"$OUT/sinfo-N-o-state.txt"
scontrol show hostnames 'node[01-03],gpu7' >"$OUT/scontrol-show-hostnames.txt"
scontrol --version >"$OUT/scontrol-version.txt"

# a pending job whose comment holds the separator '|'
as_user sbatch -J pd-pipe --time=5 --comment 'datasets:imagenet|not a dataset' --wrap 'sleep 10' >/dev/null
sleep 7
sq_o >"$OUT/squeue-pd-o-pipe-comment.txt"
sq_O >"$OUT/squeue-pd-O-pipe-comment.txt"

cancel_all
