#!/usr/bin/env bash
# The main job: a small pool, a thin device, a snapshot, the real
# thin-provisioning-tools reading what thinfuse wrote.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f dist/frontends/cli/main.js ]] || npm run build >/dev/null
thinfuse() { node dist/frontends/cli/main.js "$@"; }
work=$(mktemp -d /tmp/thinfuse-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
P=$work/P
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
echo "demo: ok"
