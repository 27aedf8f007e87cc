# shellcheck shell=bash
# thinfuse target for ../shared/bench (load it with BENCH_TARGETS_DIR=scripts/bench).
#
# One thin pool per target instance, in the private DIR the harness gives:
# DIR/pool (sparse data and metadata files), one thin device of the image
# size, served by `thinfuse serve DIR/pool DIR/mnt` in the foreground with the
# shipped defaults (64 KiB blocks, block zeroing on, 64M data cache, 32M
# metadata cache). Snapshots go through the running daemon, one process per
# snapshot, with thinfuse-ctl (`thinfuse-ctl POOL snapshot origin=CUR
# name=NEXT`: the C client of the control socket the README offers scripts;
# THINFUSE_SNAPSHOT_CLIENT=cli uses `thinfuse snapshot POOL CUR NEXT`).
#
# Samples: after every workload the harness records (and once more at
# teardown) this file appends one JSON line to DIR/samples.jsonl: the
# workload, wall and monotonic time, the serve process's peak RSS since the
# previous sample (VmHWM, reset after each sample through clear_refs), its
# RSS, CPU seconds of the main (JS) thread and of the whole process, and the
# full `thinfuse status --json` result (dataCache and metadata cache
# counters). The hook wraps the harness's bench_record; it does nothing for
# other targets.
#
# Knobs (environment):
#   THINFUSE_CLI           the CLI (default: this checkout's dist/frontends/cli/main.js)
#   THINFUSE_CTL           the C client (default: this checkout's native-deps/build/thinfuse-ctl)
#   THINFUSE_SNAPSHOT_CLIENT ctl (default) or cli: which client takes snapshots
#   THINFUSE_SERVE_ARGS    extra `serve` arguments (default none: shipped defaults)
#   THINFUSE_DATA_SIZE     pool data file size (default 2 x image size, sparse)
#   THINFUSE_METADATA_SIZE pool metadata file size (default 1G, sparse)
#   THINFUSE_BENCH_PROF=1  run serve under `node --cpu-prof` (profile in DIR/prof/,
#                          written when serve exits at teardown); for profiling
#                          runs only, it slows the daemon down
thinfuse_caps="block fs snap"
thinfuse_desc="thinfuse serve: dm-thin pool in TypeScript via patched fuse-native (shipped defaults)"

THINFUSE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
: "${THINFUSE_CLI:=$THINFUSE_ROOT/dist/frontends/cli/main.js}"
: "${THINFUSE_CTL:=$THINFUSE_ROOT/native-deps/build/thinfuse-ctl}"
: "${THINFUSE_SNAPSHOT_CLIENT:=ctl}"
: "${THINFUSE_SERVE_ARGS:=}"
: "${THINFUSE_METADATA_SIZE:=1G}"
: "${THINFUSE_BENCH_PROF:=}"

_thinfuse() { node "$THINFUSE_CLI" "$@"; }

thinfuse_setup() {
  local size="$1" dir="$2" data i pid
  [ -f "$THINFUSE_CLI" ] || { echo "no thinfuse CLI at $THINFUSE_CLI (npm run build)" >&2; return 1; }
  [ "$THINFUSE_SNAPSHOT_CLIENT" = cli ] || [ -x "$THINFUSE_CTL" ] || { echo "no thinfuse-ctl at $THINFUSE_CTL (npm run build)" >&2; return 1; }
  mkdir -p "$dir/mnt"
  # data: the image size plus as much again (snapshots' copy-on-write, fills),
  # rounded up to 1 MiB; sparse, so only written blocks take host space
  data=${THINFUSE_DATA_SIZE:-$(( (2 * size + 1048575) / 1048576 * 1048576 ))}
  _thinfuse pool create "$dir/pool" --data-size "$data" --metadata-size "$THINFUSE_METADATA_SIZE" || return 1
  _thinfuse create "$dir/pool" d0 --size "$size" || return 1
  local node_args=()
  if [ -n "$THINFUSE_BENCH_PROF" ]; then
    mkdir -p "$dir/prof"
    node_args=(--cpu-prof --cpu-prof-dir="$dir/prof")
  fi
  # shellcheck disable=SC2086
  bench_spawn "$dir" "$dir/serve.log" node "${node_args[@]}" "$THINFUSE_CLI" serve "$dir/pool" "$dir/mnt" $THINFUSE_SERVE_ARGS
  pid=$BENCH_LAST_PID
  echo "$pid" > "$dir/serve.pid"
  wait_for_mount "$dir/mnt" 15 || { cat "$dir/serve.log" >&2; return 1; }
  # the control socket is up once serve logs "serving"
  for ((i = 0; i < 150; i++)); do
    grep -q ': serving ' "$dir/serve.log" 2>/dev/null && break
    pid_alive "$pid" "$(proc_starttime "$pid")" || break
    sleep 0.1
  done
  grep -q ': serving ' "$dir/serve.log" || { cat "$dir/serve.log" >&2; return 1; }
  [ -f "$dir/mnt/d0" ] || { echo "serve is up but $dir/mnt/d0 is missing" >&2; return 1; }
  echo d0 > "$dir/current"
  echo 0 > "$dir/nsnap"
  _thinfuse_sample "$dir" setup
  echo "$dir/mnt/d0"
}

# thinfuse_snapshot COUNT DIR: a chain of COUNT snapshots, each of the previous
# one, taken through the running daemon; prints the newest device file
thinfuse_snapshot() {
  local count="$1" dir="$2" cur n i
  cur=$(cat "$dir/current")
  n=$(cat "$dir/nsnap")
  for ((i = 1; i <= count; i++)); do
    n=$((n + 1))
    if [ "$THINFUSE_SNAPSHOT_CLIENT" = cli ]; then
      _thinfuse snapshot "$dir/pool" "$cur" "s$n" > /dev/null || return 1
    else
      "$THINFUSE_CTL" "$dir/pool" snapshot origin="$cur" name="s$n" > /dev/null || return 1
    fi
    cur="s$n"
  done
  echo "$cur" > "$dir/current"
  echo "$n" > "$dir/nsnap"
  [ -f "$dir/mnt/$cur" ] || { echo "snapshot $cur does not show in $dir/mnt" >&2; return 1; }
  echo "$dir/mnt/$cur"
}

thinfuse_teardown() {
  local dir="$1"
  _thinfuse_sample "$dir" teardown
  bench_stop_pids "$dir"     # SIGTERM: serve commits, unmounts (not lazily), exits
  cat "$dir/serve.log" 2>/dev/null | tail -n 5
  rm -rf "$dir/pool"
}

# _thinfuse_sample DIR LABEL: append one sample line to DIR/samples.jsonl
_thinfuse_sample() {
  local dir="$1" label="$2" pid st status hwm rss main all mono wall
  [ -f "$dir/serve.pid" ] || return 0
  pid=$(cat "$dir/serve.pid")
  st=$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null) || return 0
  pid_alive "$pid" "$st" || return 0
  hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status")
  rss=$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status")
  # utime+stime in clock ticks: the main thread (the JS thread), all threads
  main=$(awk '{print $14 + $15}' "/proc/$pid/task/$pid/stat")
  all=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  mono=$(awk '{print $1}' /proc/uptime)
  wall=$(date +%s.%N)
  status=$(_thinfuse status "$dir/pool" --json 2>/dev/null | tr -d '\n')
  [ -n "$status" ] || status=null
  printf '{"label":"%s","variant":"%s","wall":%s,"uptime":%s,"hwm_kb":%s,"rss_kb":%s,"cpu_main_ticks":%s,"cpu_all_ticks":%s,"clk_tck":%s,"status":%s}\n' \
    "$label" "${CUR_VARIANT:-}" "$wall" "$mono" "${hwm:-null}" "${rss:-null}" "${main:-null}" "${all:-null}" \
    "$(getconf CLK_TCK)" "$status" >> "$dir/samples.jsonl"
  # peak RSS per workload: reset VmHWM to the current RSS (Linux >= 4.0)
  echo 5 > "/proc/$pid/clear_refs" 2>/dev/null || true
}

# Hook: after every record the harness writes while thinfuse is the current
# target, take a sample. Wraps bench_record (lib.sh) once.
if declare -F bench_record > /dev/null && ! declare -F _thinfuse_orig_bench_record > /dev/null; then
  eval "$(declare -f bench_record | sed '1s/^bench_record /_thinfuse_orig_bench_record /')"
  bench_record() {
    _thinfuse_orig_bench_record "$@"
    local rc=$?
    if [ "${CUR_TARGET:-}" = thinfuse ] && [ -n "${TDIR:-}" ]; then
      _thinfuse_sample "$TDIR" "$1"
    fi
    return $rc
  }
fi
