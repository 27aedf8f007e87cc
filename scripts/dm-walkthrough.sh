#!/usr/bin/env bash
# The kernel thin-provisioning document's dmsetup walkthrough, as a lab runs
# it, on thinfuse: sparse files on loop devices, a pool, a thin device with
# ext4, a snapshot taken between suspend and resume under the mounted
# filesystem, the snapshot mounted, the report commands, teardown, thin_check.
# Then the pictures of the pool (thinfuse ls --tree, show --html and --svg,
# written to WORKDIR/pool.html and pool.svg).
#
#   bash scripts/dm-walkthrough.sh [WORKDIR]        (default /opt/thinfuse-lab)
#
# DMSETUP picks the command (default: this checkout's `thinfuse dmsetup`;
# DMSETUP=dmsetup runs the one scripts/setup.sh installs). It uses the
# walkthrough's sizes (a 2G metadata and a 100G data file, both sparse) and
# free loop devices (losetup -f) instead of /dev/loop0 and /dev/loop1. The
# report commands' output goes to WORKDIR/report.txt as well. Everything is
# undone at the end, also when a step fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=${1:-/opt/thinfuse-lab}
DMSETUP=${DMSETUP:-node $here/../dist/frontends/cli/main.js dmsetup}
mapper=${DM_DEV_DIR:-/dev}/mapper
dmsetup() { command $DMSETUP "$@"; }

mkdir -p "$work/mnt" "$work/mnt2"
meta_loop="" data_loop=""
cleanup() {
  set +e
  for m in "$work/mnt2" "$work/mnt"; do mountpoint -q "$m" && umount "$m"; done
  dmsetup remove_all 2>/dev/null
  [[ -n $data_loop ]] && losetup -d "$data_loop"
  [[ -n $meta_loop ]] && losetup -d "$meta_loop"
}
trap cleanup EXIT

step() { printf '\n$ %s\n' "$*"; "$@"; }

rm -f "$work/metadata" "$work/data"
step dd if=/dev/zero of="$work/metadata" bs=1 count=0 seek=2G status=none
step dd if=/dev/zero of="$work/data" bs=1 count=0 seek=100G status=none
meta_loop=$(losetup -f --show "$work/metadata")
data_loop=$(losetup -f --show "$work/data")
echo "metadata on $meta_loop, data on $data_loop"
step dmsetup create pool --table "0 20971520 thin-pool $meta_loop $data_loop 128 32768"
step dmsetup message "$mapper/pool" 0 "create_thin 0"
step dmsetup create thin --table "0 2097152 thin $mapper/pool 0"
step mkfs.ext4 -q "$mapper/thin"
step mount "$mapper/thin" "$work/mnt"
echo hi > "$work/mnt/f"
sync
step dmsetup suspend "$mapper/thin"
step dmsetup message "$mapper/pool" 0 "create_snap 1 0"
step dmsetup resume "$mapper/thin"
step dmsetup create snap --table "0 2097152 thin $mapper/pool 1"
step mount "$mapper/snap" "$work/mnt2"
step cat "$work/mnt2/f"
{
  step dmsetup ls
  step dmsetup info thin
  step dmsetup table
  step dmsetup status
  step dmsetup deps thin
} | tee "$work/report.txt"
step dmsetup ls --tree
# The pictures: the pool dmsetup made lives in the state directory.
pooldir=${THINFUSE_DM_STATE:-/var/lib/thinfuse/dmsetup}/pools/pool
step node "$here/../dist/frontends/cli/main.js" ls "$pooldir" --tree
step node "$here/../dist/frontends/cli/main.js" show "$pooldir" --html "$work/pool.html" --svg "$work/pool.svg"
step umount "$work/mnt2" "$work/mnt"
step dmsetup remove snap
step dmsetup remove thin
step dmsetup remove pool
step thin_check "$meta_loop"
echo "walkthrough done"
