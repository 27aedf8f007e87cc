#!/usr/bin/env bash
# Prepares a Debian 12 machine (as root) to build and test thinfuse:
# system packages, the loop and fuse kernel modules, /dev/fuse, node_modules
# and the build. Idempotent: a second run only re-runs `npm run build`.
#
#   bash scripts/setup.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

# chromium: test/show.test.ts renders `thinfuse show`'s page headless and checks the screenshot.
# prometheus: its promtool checks the text `serve --metrics` serves (test/ops-metrics.test.ts).
# containerd, runc: test/snapshotter-containerd.test.ts runs `ctr run` through `thinfuse snapshotter`.
PACKAGES=(thin-provisioning-tools xfsprogs e2fsprogs fuse libfuse2 util-linux fio g++ make python3 kmod patch busybox-static chromium prometheus containerd runc)
# Wait for a dpkg lock held by another apt run instead of failing.
APT=(apt-get -o DPkg::Lock::Timeout=300)

[[ $(id -u) -eq 0 ]] || die "run as root (installs packages, loads kernel modules)"

# ---------------------------------------------------------------- packages
installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "apt-get not found: this script targets Debian 12; install ${missing[*]} by hand"
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # `apt-get update` takes the lists lock, which DPkg::Lock::Timeout may not
  # cover: retry while another apt run holds it.
  for try in $(seq 1 30); do
    if "${APT[@]}" update -q; then break; fi
    ((try < 30)) || die "apt-get update failed"
    say "apt-get update failed (another apt running?); retrying in 10 s"
    sleep 10
  done
  "${APT[@]}" install -y -q "${missing[@]}" || die "apt-get install ${missing[*]} failed"
  for p in "${missing[@]}"; do
    installed "$p" || die "package $p still not installed"
  done
else
  say "system packages present"
fi

# ---------------------------------------------------------- kernel modules
# Best effort: in a container these may be built in, absent or not loadable.
for m in loop fuse; do
  if modprobe "$m" 2>/dev/null; then
    say "module $m loaded"
  else
    say "could not load module $m (built in, or not allowed here): continuing"
  fi
done

if [[ ! -c /dev/fuse ]]; then
  if mknod -m 0666 /dev/fuse c 10 229 2>/dev/null; then
    say "created /dev/fuse"
  else
    say "WARNING: /dev/fuse missing and could not be created: FUSE mounts will not work"
  fi
fi

# --------------------------------------------------------------------- node
command -v node >/dev/null || die "node not found: install Node.js >= 20 (with npm) first"
command -v npm >/dev/null || die "npm not found: install Node.js >= 20 (with npm) first"
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 20)) || die "Node.js $(node -v) is too old: thinfuse needs Node.js >= 20"

# npm writes node_modules/.package-lock.json on every install; it is older
# than package-lock.json exactly when the lock changed since.
if [[ ! -d node_modules || ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  say "npm ci"
  npm ci --no-audit --no-fund
else
  say "node_modules up to date"
fi

say "npm run build"
npm run build

# ------------------------------------------------------------ lab dmsetup
# Where the kernel has no device-mapper, `dmsetup` is thinfuse's lab mode
# (scripts/dmsetup runs the real one if a device-mapper appears later).
if [[ ! -c /dev/mapper/control ]]; then
  ln -sfn "$PWD/scripts/dmsetup" /usr/local/sbin/dmsetup
  say "no kernel device-mapper: /usr/local/sbin/dmsetup is thinfuse dmsetup"
fi

# ----------------------------------------------------------------- report
say "thin-provisioning-tools $(dpkg-query -W -f='${Version}' thin-provisioning-tools) (thin_check --version: $(thin_check --version 2>&1 | head -n1))"
