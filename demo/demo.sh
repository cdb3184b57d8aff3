#!/usr/bin/env bash
# The node-level story of scratch-stage, without Slurm: the prolog and epilog are run
# exactly as Slurm runs them (job facts in environment variables), on real squashfs
# images, loop mounts and a mount-over. Everything lives under one temporary directory,
# removed (and unmounted) on exit, even on failure.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
S="$here/.venv/bin/scratch-stage"
[ "$(id -u)" = 0 ] || { echo "demo: run as root (loop mounts need it)" >&2; exit 1; }

run=$(mktemp -d /tmp/scratch-stage-demo.XXXXXX)
cleanup() {
  # Unmount every layer under our mountdir (loop devices autoclear), then drop the tree.
  while findmnt -rn -o TARGET | grep -q "^$run/"; do
    findmnt -rn -o TARGET | grep "^$run/" | sort -r | while read -r t; do umount -l "$t" || true; done
  done
  rm -rf "$run"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

mkdir -p "$run"/{datasets-slow,cache,datasets,state,src}
cat > "$run/config.yaml" <<CONF
datadir: $run/datasets-slow
cachedir: $run/cache
mountdir: $run/datasets
statedir: $run/state
capacity: 1GiB
CONF
export SCRATCH_STAGE_CONFIG="$run/config.yaml"

step "A data steward builds two sample datasets into the slow data directory"
for name in imagenet-mini coco-mini; do
  mkdir -p "$run/src/$name/train"
  for i in $(seq 1 20); do head -c 262144 /dev/urandom > "$run/src/$name/train/img$i.bin"; done
  echo "labels of $name" > "$run/src/$name/labels.txt"
  show "$S" image build "$run/src/$name" "$name" --compression fast
done

step "Job 101 starts: #SBATCH --comment=datasets:imagenet-mini (the prolog mounts it)"
show env -i SLURM_JOB_ID=101 SLURM_JOB_USER=root SLURM_JOB_UID=0 SLURM_JOB_GID=0 \
  SLURM_JOB_COMMENT="sweep lr=0.1 datasets:imagenet-mini" SCRATCH_STAGE_CONFIG="$run/config.yaml" \
  "$S" prolog
step "Job 102 starts: #SBATCH --datasets=imagenet-mini,coco-mini (SPANK), shares the mount"
show env -i SLURM_JOB_ID=102 SLURM_JOB_USER=root SLURM_JOB_UID=0 SLURM_JOB_GID=0 \
  SPANK_DATASETS=imagenet-mini,coco-mini SCRATCH_STAGE_CONFIG="$run/config.yaml" "$S" prolog
step "Job 103 makes mistakes (unknown and malformed names): logged, the prolog still exits 0"
show env -i SLURM_JOB_ID=103 SLURM_JOB_COMMENT='datasets:nope,../etc' \
  SCRATCH_STAGE_CONFIG="$run/config.yaml" "$S" prolog && echo "prolog exit code: $?"

step "The jobs read their data at <mountdir>/<name>"
show cat "$run/datasets/imagenet-mini/labels.txt"
show "$S" status

step "The administrator stages imagenet-mini to the SSD: the cached copy is mounted over"
exec 3< "$run/datasets/imagenet-mini/train/img1.bin"   # a file a job opened before
show "$S" prestage imagenet-mini
show findmnt -R "$run/datasets/imagenet-mini"
cmp <(cat <&3) "$run/src/imagenet-mini/train/img1.bin" && echo "file opened before the mount-over still reads correctly"
exec 3<&-
show "$S" info imagenet-mini

step "The jobs end: epilogs release their holds (idempotent)"
for job in 101 102 103 101; do
  env -i SLURM_JOB_ID=$job SCRATCH_STAGE_CONFIG="$run/config.yaml" "$S" epilog
done
show "$S" status

step "Purge the idle cached copy"
show "$S" purge imagenet-mini
show "$S" status
step "Why did job 103 get nothing? The event log says"
grep '"job": "103"' "$run/state/events.log"
echo
echo "demo finished: everything under $run is unmounted and removed on exit"
