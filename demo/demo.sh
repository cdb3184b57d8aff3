#!/usr/bin/env bash
# The scratch-stage story on a real Slurm cluster: a throw-away single-node Slurm 22.05
# (slurm/testcluster) whose Prolog/Epilog run scratch-stage, with the --datasets SPANK
# plugin and the job_submit.lua check enabled. Jobs are submitted by the unprivileged user
# ssuser. At the end a second, 4-node cluster on this machine (each node its own slurmd,
# mount namespace, cache and state): a pending 4-node job's demand makes the four nodes'
# rebalances stage its image cooperatively (shared storage, its own loop-mounted
# filesystem, read about once), then the job runs. Last, the policy: a generated trace
# replayed through the planner, LRU and the offline references. Everything lives under one temporary
# directory; on exit (also on failure or ^C) the clusters are stopped by their recorded
# PIDs (which unmounts what the nodes mounted), every mount under the directory is
# unmounted, and the directory is removed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
S="$here/.venv/bin/scratch-stage"
TC="$here/slurm/testcluster"
USER_NAME=ssuser
[ "$(id -u)" = 0 ] || { echo "demo: run as root (Slurm daemons and loop mounts need it)" >&2; exit 1; }
[ -x "$S" ] || { echo "demo: $S missing: run 'make setup' first" >&2; exit 1; }

run=$(mktemp -d /tmp/scratch-stage-demo.XXXXXX)
chmod 0755 "$run" # the test user's jobs and sbatch reach mountdir and the plugin here
t0=$SECONDS
pids=""

cleanup() {
  set +e
  printf '\n\033[1m== Tear down\033[0m\n'
  [ -d "$run/cluster4" ] && "$TC" down "$run/cluster4" --purge
  [ -d "$run/cluster" ] && "$TC" down "$run/cluster" --purge
  # Unmount every layer under the demo directory, top first (loop devices autoclear).
  while findmnt -rn -o TARGET | grep -q "^$run/"; do
    findmnt -rn -o TARGET | grep "^$run/" | sort -r | while read -r t; do umount -l "$t"; done
  done
  rm -rf --one-file-system "$run"
  local alive=""
  for p in $pids; do # an exited orphan stays a zombie until PID 1 reaps it: not running
    [ -r "/proc/$p/stat" ] && [ "$(sed 's/.*) //' "/proc/$p/stat" | cut -d' ' -f1)" != Z ] && alive="$alive $p"
  done
  if [ -n "$alive" ] || findmnt -rn -o TARGET | grep -q "^$run/"; then
    echo "demo: left behind: pids$alive, mounts: $(findmnt -rn -o TARGET | grep "^$run/")" >&2
  else
    echo "nothing left running (munged, slurmctld, slurmds stopped), nothing mounted under $run"
  fi
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
# As the job user, from its work directory, talking to this cluster.
work=$run/cluster/work
user() { (cd "$work" && runuser -u "$USER_NAME" -- env SLURM_CONF="$SLURM_CONF" "$@"); }
ushow() { printf '%s$ %s\n' "$USER_NAME" "$*"; user "$@"; }
submit() { # sbatch ARGS as the user, shown on stderr; the job id on stdout
  local id
  printf '%s$ sbatch %s\n' "$USER_NAME" "$*" >&2
  id=$(user sbatch --parsable "$@" | cut -d';' -f1)
  echo "Submitted batch job $id" >&2
  echo "$id"
}
job_state() { scontrol show job -o "$1" | tr ' ' '\n' | sed -n 's/^JobState=//p'; }
wait_job() { # job id: until it has ended (and its epilog has run)
  local i
  for ((i = 0; i < 300; i++)); do
    case $(job_state "$1") in PENDING | CONFIGURING | RUNNING | COMPLETING | "") sleep 0.2 ;; *) return 0 ;; esac
  done
  echo "demo: job $1 did not end in 60s" >&2
  return 1
}
output() { printf -- '--- output of job %s\n' "$1"; cat "$work/$1.out"; }

mkdir -p "$run"/{data,cache,datasets,state,plugin,src,metrics}
chmod 0755 "$run"/{data,datasets,plugin,metrics}
cat >"$run/config.yaml" <<CONF
datadir: $run/data
cachedir: $run/cache
mountdir: $run/datasets
statedir: $run/state
capacity: 1GiB
node: localhost             # the test cluster's NodeName
demand: {source: file}      # the default: queued jobs as one publisher wrote them
node_features: true         # publish ds_<name> for cached datasets after each rebalance
metrics_dir: $run/metrics   # node_exporter's textfile directory: scratch_stage.prom
CONF
export SCRATCH_STAGE_CONFIG="$run/config.yaml"

step "The administrator writes the site files for this installation: wrappers, units, job_submit.lua"
# Slurm runs the wrappers with no PATH and none of our environment: absolute paths only.
show "$S" install-site-files "$run/site" --bin "$S" --config "$run/config.yaml" | sed -n '1,3p;$p'
echo "..."
show tail -1 "$run/site/slurm/prolog.sh"

step "A data steward builds two sample datasets into the slow data directory"
for name in imagenet-mini coco-mini; do
  mkdir -p "$run/src/$name/train"
  for i in $(seq 1 16); do head -c 262144 /dev/urandom >"$run/src/$name/train/img$i.bin"; done
  echo "labels of $name" >"$run/src/$name/labels.txt"
  show "$S" image build "$run/src/$name" "$name" --compression fast
done
show "$S" catalog --publish "$run/plugin/catalog.txt"

step "The administrator brings up Slurm: Prolog/Epilog, the --datasets plugin, job_submit.lua"
make -s -C "$here/spank_config" BUILDDIR="$run/plugin"
chmod 0755 "$run/plugin/scratch_stage_spank.so"
echo "required $run/plugin/scratch_stage_spank.so" >"$run/plugin/plugstack.conf"
sed "s|^local CATALOG_PATH = .*|local CATALOG_PATH = \"$run/plugin/catalog.txt\"|" \
  "$here/slurm/job_submit.lua" >"$run/plugin/job_submit.lua"
chmod 0644 "$run/plugin/"*.conf "$run/plugin/"*.lua "$run/plugin/catalog.txt"
TESTCLUSTER_PROLOG="$run/site/slurm/prolog.sh" TESTCLUSTER_EPILOG="$run/site/slurm/epilog.sh" \
  TESTCLUSTER_PLUGSTACK="$run/plugin/plugstack.conf" TESTCLUSTER_JOB_SUBMIT="$run/plugin/job_submit.lua" \
  TESTCLUSTER_USER="$USER_NAME" show "$TC" up "$run/cluster"
eval "$("$TC" env "$run/cluster")"
pids=$(cat "$run/cluster"/{munged,slurmctld,slurmd}.pid)
show sinfo

step "Two jobs ask for their data: one with --comment, one with the SPANK option --datasets"
# Each job reads its datasets whole (what a node's history of reads per job then expects of
# the next job on them), prints the labels and one file's digest.
read_cmd="ls $run/datasets/; cat $run/datasets/*/train/* >/dev/null; cat $run/datasets/*/labels.txt; sha256sum $run/datasets/imagenet-mini/train/img1.bin"
j1=$(submit --output=%j.out --comment="lr=0.1 datasets:imagenet-mini" --wrap "$read_cmd; sleep 4")
j2=$(submit --output=%j.out --datasets=imagenet-mini,coco-mini --wrap "$read_cmd; sleep 4")
for ((i = 0; i < 100; i++)); do # until both run (their prologs have run)
  [ "$(job_state "$j1")$(job_state "$j2")" = RUNNINGRUNNING ] && break
  sleep 0.2
done
show squeue
echo "(both jobs hold imagenet-mini: one mount, two holders)"
show "$S" status
wait_job "$j1"
wait_job "$j2"
output "$j1"
output "$j2"
echo "--- the image itself: $(sha256sum "$run/src/imagenet-mini/train/img1.bin" | cut -c1-64)"

step "A pending job: coco-mini is wanted by a job queued behind one that fills the node"
blocker=$(submit --output=/dev/null --time=2 -n 2 --wrap "sleep 120")
pending=$(submit --output=%j.out --time=1 --datasets=coco-mini \
  --wrap "cat $run/datasets/coco-mini/labels.txt; findmnt -rn -o TARGET,SOURCE $run/datasets/coco-mini | while read -r t d; do echo \"layer \$d <- \$(cat /sys/block/\${d#/dev/}/loop/backing_file)\"; done")
echo "waiting for a backfill pass to plan it onto this node (bf_interval=5) ..."
for ((i = 0; i < 100; i++)); do
  [ "$(squeue -h -j "$pending" -o %Y)" = localhost ] && break
  sleep 0.3
done
show squeue -o '%.4i %.9T %.20S %.10Y %k'
echo "(one host publishes the queue for every node: scratch-stage-demand.timer runs this every 30 s)"
show "$S" demand --publish-configured
show "$S" rebalance --explain
show "$S" status
echo '$ scontrol show node localhost | grep Features'
scontrol show node localhost | grep Features
show scancel "$blocker"
wait_job "$pending"
output "$pending"
if grep -q "<- $run/cache/" "$work/$pending.out"; then
  echo "(the top layer the job read is the cached copy in $run/cache)"
else
  echo "DEMO FAILED: the pending job did not read a cached copy of coco-mini" >&2
  exit 1
fi

step "A user asks for a dataset that does not exist: rejected at submission, with the reason"
ushow sbatch --datasets=nope --wrap true || echo "(sbatch exit code: $?)"
ushow sbatch --comment="datasets:../etc" --wrap true || echo "(sbatch exit code: $?)"

step "Crash safety: a copy killed (SIGKILL) right after it renamed into the cache, then any command"
echo "(SCRATCH_STAGE_FAULT is the test seam that kills the process at a named side-effect point)"
echo '$ SCRATCH_STAGE_FAULT=after-rename scratch-stage prestage imagenet-mini'
SCRATCH_STAGE_FAULT=after-rename "$S" prestage imagenet-mini 2>/dev/null || echo "(killed: exit code $?)"
show "$S" -v status
echo "(reconcile removed the unrecorded copy: no cached record without its file, no leftover partial)"
show ls -A "$run/cache" "$run/cache/.partial"
show "$S" prestage imagenet-mini

step "A user drops hostile files into the data directory: refused, the node stays in service"
ln -s /etc/shadow "$run/data/shadow.sqfs"
printf 'hsqs' > "$run/data/junk.sqfs"
show "$S" catalog
echo '$ SLURM_JOB_ID=999 SLURM_JOB_COMMENT=datasets:shadow,junk,coco-mini scratch-stage prolog  # as slurmd runs it'
env -i SCRATCH_STAGE_CONFIG="$SCRATCH_STAGE_CONFIG" SLURM_JOB_ID=999 SLURM_JOB_USER="$USER_NAME" \
  SLURM_JOB_UID="$(id -u "$USER_NAME")" SLURM_JOB_GID="$(id -g "$USER_NAME")" \
  SLURM_JOB_COMMENT=datasets:shadow,junk,coco-mini "$S" prolog 2>/dev/null
echo "(prolog exit code: $?; the refusals are events)"
grep '"job": "999"' "$run/state/events.log" | grep refused | cut -c1-150
env -i SCRATCH_STAGE_CONFIG="$SCRATCH_STAGE_CONFIG" SLURM_JOB_ID=999 "$S" epilog
rm -f "$run/data/shadow.sqfs" "$run/data/junk.sqfs"

step "Every job ended: no holders left, the node is idle (never drained)"
show "$S" status
show sinfo -N -o '%N %T'

step "Operating it: the cluster view (features, queue) and this node's Prometheus metrics"
echo "(the queue as the demand timer would publish it now: nothing pending any more)"
"$S" demand --publish-configured >/dev/null
show "$S" cluster
show "$S" metrics --write
echo "\$ grep ^scratch_stage $run/metrics/scratch_stage.prom | grep -v ' 0\$'  # the non-zero ones"
grep ^scratch_stage "$run/metrics/scratch_stage.prom" | grep -v ' 0$' | head -20
echo "(node_exporter --collector.textfile.directory=$run/metrics serves them; rules and a"
echo " Grafana dashboard are in contrib/, the README's 'Operating it' has the queries)"
step "Four nodes on this machine: a pending 4-node job's image staged onto all four, shared storage read about once"
echo "(slurm/testcluster with TESTCLUSTER_NODES=4: slurmds n1..n4, each in its own mount namespace"
echo " where $run/cluster4/node is that node's directory: mountdir, cachedir, statedir, config."
echo " Shared storage is its own ext4 filesystem on a loop device, so every byte read from it counts)"
truncate -s 192M "$run/shared.ext4"
mkfs.ext4 -q -F "$run/shared.ext4"
mkdir "$run/shared"
mount -o loop "$run/shared.ext4" "$run/shared" # mount(8) sets autoclear: the unmount frees it
dev=$(findmnt -n -o SOURCE "$run/shared")
mkdir -m 0755 "$run/shared/data" "$run/src/shards"
chmod 0755 "$run/shared"
head -c $((48 << 20)) /dev/urandom >"$run/src/shards/shard0.bin"
printf 'datadir: %s\ncachedir: %s\ncoop: {enabled: true}\n' "$run/shared/data" "$run/build-cache" >"$run/build4.yaml"
show "$S" --config "$run/build4.yaml" image build "$run/src/shards" shards --compression fast
echo "(with coop enabled, image build as root also publishes the image's digest, as 'coop prepare'"
echo " does for images built elsewhere: the node that will read shared storage passes on each piece"
echo " while it reads, instead of the others waiting for its whole copy)"
for n in n1 n2 n3 n4; do mkdir -p "$run/cluster4/nodes/$n"/{mount,cache,state}; done
cat >"$run/node-config.yaml" <<CONF
datadir: $run/shared/data
cachedir: @NODEDIR@/cache
mountdir: @NODEDIR@/mount
statedir: @NODEDIR@/state
capacity: 1GiB
node: @NODE@
demand: {source: squeue}
# cooperative staging: one node reads shared storage under the reader lease, the others
# copy from it and from each other (BitTorrent, each node's engine on its own address)
coop: {enabled: true, host: 127.0.0.1@NODEINDEX@, stall_seconds: 10, seed_seconds: 30}
CONF
show cat "$run/node-config.yaml"
"$S" install-site-files "$run/site4" --bin "$S" --config "$run/cluster4/node/scratch-stage.yaml" >/dev/null
TESTCLUSTER_NODES=4 TESTCLUSTER_NODE_CONFIG="$run/node-config.yaml" \
  TESTCLUSTER_PROLOG="$run/site4/slurm/prolog.sh" TESTCLUSTER_EPILOG="$run/site4/slurm/epilog.sh" \
  TESTCLUSTER_USER="$USER_NAME" show "$TC" up "$run/cluster4"
eval "$("$TC" env "$run/cluster4")"
pids="$pids $("$TC" status "$run/cluster4" | grep -o 'pid [0-9]*' | cut -d' ' -f2 | tr '\n' ' ')"
work=$run/cluster4/work
show sinfo -N -o '%N %T'
image=$run/shared/data/shards.sqfs
size=$(stat -c %s "$image")
sync
dd if="$image" iflag=nocache count=0 status=none # out of the page cache: reads reach the device
sectors() { awk '{print $3}' "/sys/block/${dev#/dev/}/stat"; }
before=$(sectors)
cat >"$work/task.sh" <<'TASK'
#!/bin/sh
# one task per node: what it reads at mountdir/shards, and the file behind that mount
m=$1 dev=$(findmnt -n -o SOURCE "$1")
echo "$(hostname): $(sha256sum <"$m/shard0.bin" | cut -c1-16)... via $(cat "/sys/block/${dev#/dev/}/loop/backing_file")"
TASK
chmod 0644 "$work/task.sh"
echo "(a 4-node job holds every node, so the next 4-node job waits; backfill plans it onto n[1-4])"
blocker=$(submit -N4 --exclusive --time=5 --output=/dev/null --wrap "sleep 300")
j4=$(submit -N4 --time=1 --output=%j.out --comment=datasets:shards --wrap "srun sh $work/task.sh $run/cluster4/node/mount/shards | sort; sleep 3")
for ((i = 0; i < 150; i++)); do [ "$(squeue -h -j "$j4" -o %Y)" = "n[1-4]" ] && break; sleep 0.2; done
show squeue -o '%.4i %.8T %.6D %.10Y %k'
echo "(every node's rebalance at once, as their timers do: each sees the pending job's demand for"
echo " 'shards' on itself; one reads shared storage under the reader lease, the others fetch from peers)"
t1=$(date +%s.%N)
staging=()
for n in n1 n2 n3 n4; do
  echo "\$ testcluster exec $n -- scratch-stage rebalance &"
  "$TC" exec "$run/cluster4" "$n" -- "$S" rebalance >"$run/rebalance-$n.log" 2>&1 &
  staging+=($!)
done
for p in "${staging[@]}"; do wait "$p" || echo "demo: a rebalance failed: $(cat "$run"/rebalance-*.log)" >&2; done
t2=$(date +%s.%N)
read_bytes=$((($(sectors) - before) * 512))
for n in n1 n2 n3 n4; do
  printf '%s: %s| %s\n' "$n" "$(grep -ho '"event": "coop-[a-z]*"' "$run/cluster4/nodes/$n/state/events.log" | cut -d'"' -f4 | sort | uniq -c | tr -s ' ' | tr '\n' ' ')" \
    "$(grep -h '^plan' "$run/rebalance-$n.log" | head -1)"
done
awk -v b="$read_bytes" -v s="$size" -v t="$t2" -v t1="$t1" 'BEGIN { t -= t1
  printf "shared storage read %.1f MiB for a %.1f MiB image staged on 4 nodes: %.2fx its size (independent copies: 4x); all cached in %.1f s\n", b / 1048576, s / 1048576, b / s, t }'
echo "(coop-lease: this node read shared storage under the reader lease; coop-read: it had read it all,"
echo " its peers fetching pieces meanwhile; coop-fetched: it copied from its peers, every copy verified"
echo " against the published sha256 before it is mounted)"

step "A 4-node job reads its dataset on every node, from that node's cached copy"
show scancel "$blocker"
for ((i = 0; i < 100; i++)); do [ "$(job_state "$j4")" = RUNNING ] && break; sleep 0.2; done
sleep 1
for n in n1 n2 n3 n4; do
  printf '$ testcluster exec %s -- scratch-stage status --json   # shards on %s: ' "$n" "$n"
  "$TC" exec "$run/cluster4" "$n" -- "$S" status --json \
    | python3 -c 'import json,sys; d={x["name"]: x for x in json.load(sys.stdin)["datasets"]}["shards"]; print("holders", d["holders"], "state", d["state"])'
done
wait_job "$j4"
output "$j4"
echo "--- the image itself: $(sha256sum "$run/src/shards/shard0.bin" | cut -c1-16)..."

step "The policy, replayed: 400 jobs on 4 nodes through the production planner, LRU and two offline references, against the lower bound"
echo "(future-bytes and mip-schedule know the future; mip-schedule follows a mixed-integer programme's"
echo " schedule: the optimum lies between the bound and the cheapest schedule replayed)"
show "$here/.venv/bin/python" -m scratch_stage.simulate generate --sizes "$here/tests/data/dataset-sizes.csv" \
  --set jobs=400 --set nodes=4 --set datasets=40 --set max_duration=21600 --set seed=1 --set zipf=0.9 \
  -o "$run/trace.jsonl"
show "$S" simulate "$run/trace.jsonl" --capacity 10% --policy ours --policy lru --policy future-bytes \
  --policy mip-schedule --workers 2 | sed -n '1,/^$/p'

echo
echo "demo finished in $((SECONDS - t0))s"
