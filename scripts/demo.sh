#!/usr/bin/env bash
# The main job: a small pool, a thin device, a snapshot, the real
# thin-provisioning-tools reading what thinfuse wrote; then the same pool
# served through FUSE: attach, mkfs.xfs, mount, write, snapshot under the
# mounted filesystem, mount the snapshot, status; then Docker-style layers on
# a second pool: a busybox image imported, a container of it run with chroot,
# docker-info's report. Cleans up after itself, also when a step fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f dist/frontends/cli/main.js ]] || npm run build >/dev/null
thinfuse() { node dist/frontends/cli/main.js "$@"; }
work=$(mktemp -d /tmp/thinfuse-demo.XXXXXX)
P=$work/P
L=$work/L
serve_pid=""
mounts=()
loops=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}" 2>/dev/null || true; done
  for ((i = ${#loops[@]} - 1; i >= 0; i--)); do losetup -d "${loops[i]}" 2>/dev/null || true; done
  if [[ -n $serve_pid ]] && kill -0 "$serve_pid" 2>/dev/null; then
    for _ in 1 2 3 4 5 6 7 8 9 10; do sleep 0.3; kill -TERM "$serve_pid" 2>/dev/null || break; kill -0 "$serve_pid" 2>/dev/null || break; done
  fi
  # The layer part's leftovers if a step failed: its container mount, then the
  # serve the layer store started (its pid file), which then unmounts itself.
  [[ -d $work/rootfs ]] && umount "$work/rootfs" 2>/dev/null || true
  if [[ -f $L/serve.pid ]]; then
    node dist/frontends/cli/main.js container unmount "$L" c1 >/dev/null 2>&1 || true
    local lpid; lpid=$(cat "$L/serve.pid")
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$lpid" 2>/dev/null || break; kill -TERM "$lpid" 2>/dev/null || break; sleep 0.3; done
  fi
  if ! grep -q " $work/" /proc/mounts; then rm -rf "$work"; else echo "demo: left $work in place: something is still mounted under it" >&2; fi
}
trap cleanup EXIT
step() { printf '\n$ %s\n' "$*"; }

step thinfuse pool create P --data-size 1G --metadata-size 64M
thinfuse pool create "$P" --data-size 1G --metadata-size 64M
step 'thinfuse message P "set_transaction_id 0 1"; thinfuse message P "create_thin 7"'
thinfuse message "$P" "set_transaction_id 0 1"
thinfuse message "$P" "create_thin 7"
step thinfuse create P base --size 256M
thinfuse create "$P" base --size 256M
step 'head -c 1000000 /dev/urandom > x; thinfuse write P base --offset 65536 < x'
head -c 1000000 /dev/urandom > "$work/x"
thinfuse write "$P" base --offset 65536 < "$work/x"
step thinfuse snapshot P base snap1
thinfuse snapshot "$P" base snap1
step "printf 'changed' | thinfuse write P snap1 --offset 70000"
printf 'changed' | thinfuse write "$P" snap1 --offset 70000
step 'thinfuse read P base --offset 65536 --length 1000000 | cmp - x'
thinfuse read "$P" base --offset 65536 --length 1000000 | cmp - "$work/x" && echo identical
step thinfuse status P
thinfuse status "$P"
step thinfuse ls P
thinfuse ls "$P"
step 'thin_check P/metadata && thin_dump P/metadata > a.xml && thinfuse dump P > b.xml && cmp a.xml b.xml'
thin_check "$P/metadata"
thin_dump "$P/metadata" > "$work/a.xml"
thinfuse dump "$P" > "$work/b.xml"
cmp "$work/a.xml" "$work/b.xml" && echo "thin_dump and thinfuse dump are identical ($(wc -l < "$work/a.xml") lines)"
step thin_ls -o DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS P/metadata
thin_ls -o DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS "$P/metadata"
step du -h P/data P/metadata
du -h "$P/data" "$P/metadata"

echo
echo "--- the same pool through FUSE ---"
mkdir -p "$work/mnt" "$work/base" "$work/snap"
step thinfuse serve P mnt --daemon
thinfuse serve "$P" "$work/mnt" --daemon
serve_pid=$(cat "$P/serve.pid")
step thinfuse create P vol --size 1G
thinfuse create "$P" vol --size 1G
step ls -l mnt
ls -l "$work/mnt"
step thinfuse attach P vol
dev=$(thinfuse attach "$P" vol); loops+=("$dev"); echo "$dev"
step mkfs.xfs -q "$dev" '&&' mount "$dev" base
mkfs.xfs -q "$dev"
mount "$dev" "$work/base"; mounts+=("$work/base")
step 'cp -r src base/ && sync'
cp -r src "$work/base/" && sync
step thinfuse snapshot P vol vol-snap --freeze base
thinfuse snapshot "$P" vol vol-snap --freeze "$work/base"
step 'thinfuse attach P vol-snap && mount -o nouuid /dev/loopN snap'
sdev=$(thinfuse attach "$P" vol-snap); loops+=("$sdev")
mount -o nouuid "$sdev" "$work/snap"; mounts+=("$work/snap")
step 'echo changed > snap/new-file; diff -r base/src snap/src'
echo changed > "$work/snap/new-file"
diff -r "$work/base/src" "$work/snap/src" && echo "the snapshot holds the same files; base does not see snap's new file: $(ls "$work/base" | tr '\n' ' ')"
step thinfuse status P
thinfuse status "$P"
step thinfuse ls P
thinfuse ls "$P"
step 'umount, detach, stop serve, thin_check'
umount "$work/snap" "$work/base"; mounts=()
thinfuse detach "$P" vol-snap; thinfuse detach "$P" vol; loops=()
kill -TERM "$serve_pid"
while kill -0 "$serve_pid" 2>/dev/null; do sleep 0.2; done
serve_pid=""
thin_check "$P/metadata"

echo
echo "--- Docker-style layers: images and containers as snapshots ---"
step 'npx tsx scripts/busybox-image.ts busybox.tar   # an OCI image: busybox-static, and a layer deleting /etc/gone.txt'
npx tsx scripts/busybox-image.ts "$work/busybox.tar"
step thinfuse layer init L --storage-opt dm.basesize=512M --storage-opt dm.loopdatasize=4G --storage-opt dm.loopmetadatasize=256M
thinfuse layer init "$L" --storage-opt dm.basesize=512M --storage-opt dm.loopdatasize=4G --storage-opt dm.loopmetadatasize=256M
step thinfuse image import L busybox.tar
thinfuse image import "$L" "$work/busybox.tar"
step thinfuse container create L busybox:demo c1
thinfuse container create "$L" busybox:demo c1
step thinfuse container mount L c1 rootfs
mkdir -p "$work/rootfs"
thinfuse container mount "$L" c1 "$work/rootfs"
step "chroot rootfs /bin/sh -c 'cat /etc/motd; ls /etc/gone.txt; echo hi > /root/hi'"
chroot "$work/rootfs" /bin/sh -c 'cat /etc/motd; ls /etc/gone.txt 2>&1; echo hi > /root/hi' || true
step thinfuse container ls L
thinfuse container ls "$L"
step thinfuse info L
thinfuse info "$L"
step 'thinfuse container unmount L c1; thinfuse container rm L c1; thinfuse image rm L busybox:demo'
thinfuse container unmount "$L" c1
thinfuse container rm "$L" c1
thinfuse image rm "$L" busybox:demo
step thin_check L/metadata
thin_check "$L/metadata"
echo
echo "demo: ok"
