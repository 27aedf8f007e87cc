#!/usr/bin/env bash
# FUSE benchmark: thinfuse against the shared harness's anchors (../shared/bench),
# in both loop direct-io modes, plus a profiling run of the daemon; writes the
# results into BENCHMARKS.md between <!-- fuse:begin --> and <!-- fuse:end -->
# (the engine section is left alone).
#
#   sudo scripts/bench.sh                 # build, freeze the build, 2 measured runs + profile runs, write
#   sudo scripts/bench.sh --no-build      # use dist/ as it is (still frozen into the output dir)
#   scripts/bench.sh --report OUTDIR      # only rewrite BENCHMARKS.md from a previous OUTDIR
#
# Options: --no-build, --no-profile, --no-write, --report OUTDIR.
# Environment: TARGETS (default "raw nullfuse passfuse qsd thinfuse"), MODES
# (loop direct-io modes measured, default "off on"), PROFILE_MODES (default
# "off on"), OUT (output dir, default $WORK/thinfuse-bench/<stamp>), HARNESS
# (default ../shared/bench), WORK (default /tmp/bench-work), and every knob of
# the harness (IMG_SIZE, SEQ_SIZE, RAND_SIZE, CHAIN_DEPTH, ...).
#
# Each measured run is one harness run with all targets side by side (a few
# minutes each). The profiling runs run only thinfuse, with serve under
# `node --cpu-prof` (THINFUSE_BENCH_PROF=1); their throughput is not reported.
# Per-workload daemon samples (status --json: cache counters; peak RSS; CPU)
# come from scripts/bench/thinfuse.sh's hook, in each run's t/thinfuse*/samples.jsonl.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${HARNESS:=$(cd "$ROOT/../shared/bench" 2>/dev/null && pwd || echo "$ROOT/../shared/bench")}"
: "${WORK:=/tmp/bench-work}"
export WORK
: "${TARGETS:=raw nullfuse passfuse qsd thinfuse}"
: "${MODES:=off on}"
: "${PROFILE_MODES:=off on}"

build=1 profile=1 write=1 report_only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --no-profile) profile=0 ;;
    --no-write) write=0 ;;
    --report) report_only="$2"; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '[bench.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Other processes on this machine (outside this script's session; kernel
# threads not counted) compete for the same CPUs. cpu-monitor.js samples their
# CPU time every second: `wait` blocks until they used less than QUIET_PCT of
# one CPU over QUIET_SECS seconds (at most QUIET_WAIT s), `watch` logs it for
# the duration of a run (summarised in the report).
: "${QUIET_PCT:=15}"
: "${QUIET_SECS:=10}"
: "${QUIET_WAIT:=900}"
write_monitor() {
  cat > "$1" <<'JS'
'use strict'
// usage: node cpu-monitor.js wait|watch SID [PCT SECS MAXWAIT | OUTFILE]
const fs = require('fs')
const [mode, sidArg, a, b, c] = process.argv.slice(2)
const sid = Number(sidArg)
const tck = 100
let last = new Map()
function sample () {
  const now = new Map(); let delta = 0; const who = new Map()
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    let s
    try { s = fs.readFileSync(`/proc/${d}/stat`, 'utf8') } catch (e) { continue }
    const close = s.lastIndexOf(')')
    const comm = s.slice(s.indexOf('(') + 1, close)
    const f = s.slice(close + 2).split(' ')
    const session = Number(f[3]); const ticks = Number(f[11]) + Number(f[12])
    if (session === 0 || session === sid || f[0] === 'Z') continue
    now.set(d, ticks)
    const prev = last.get(d)
    const dt = prev === undefined ? 0 : ticks - prev
    if (dt > 0) { delta += dt; who.set(comm, (who.get(comm) || 0) + dt) }
  }
  last = now
  return { cpu: delta / tck, who }
}
sample()
if (mode === 'wait') {
  const pct = Number(a); const secs = Number(b); const maxWait = Number(c)
  const win = []; const t0 = Date.now()
  const iv = setInterval(() => {
    win.push(sample().cpu)
    if (win.length > secs) win.shift()
    const used = win.reduce((x, y) => x + y, 0) / Math.max(1, win.length) * 100
    if (win.length >= secs && used < pct) { console.log(`quiet: other processes used ${used.toFixed(0)}% of a CPU over ${secs} s`); clearInterval(iv) }
    else if (Date.now() - t0 > maxWait * 1000) { console.log(`not quiet after ${maxWait} s: other processes use ${used.toFixed(0)}% of a CPU; going on`); clearInterval(iv) }
  }, 1000)
} else {
  const out = a; const t0 = Date.now(); let total = 0; let peak = 0; const byComm = new Map(); const win = []
  const iv = setInterval(() => {
    const { cpu, who } = sample()
    total += cpu
    win.push(cpu); if (win.length > 10) win.shift()
    peak = Math.max(peak, win.reduce((x, y) => x + y, 0) / win.length)
    for (const [k, v] of who) byComm.set(k, (byComm.get(k) || 0) + v / tck)
  }, 1000)
  const stop = () => {
    clearInterval(iv)
    const secs = (Date.now() - t0) / 1000
    const top = [...byComm.entries()].sort((x, y) => y[1] - x[1]).slice(0, 5).map(([k, v]) => [k, +v.toFixed(1)])
    fs.writeFileSync(out, JSON.stringify({ secs: +secs.toFixed(1), cpu_s: +total.toFixed(1), mean_pct: +(100 * total / secs).toFixed(1), peak10s_pct: +(100 * peak).toFixed(1), top }) + '\n')
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}
JS
}

# one harness run; copies results and thinfuse's samples/profiles into $OUT
harness_run() { # NAME LOOP_DIO TARGETS...
  local name="$1" dio="$2"; shift 2
  local log="$OUT/$name.log" rundir d inst sid mon rc=0
  sid=$(awk '{s=$0; sub(/^.*\) /, "", s); split(s, f, " "); print f[4]}' /proc/$$/stat)
  say "waiting until other processes use < $QUIET_PCT% of a CPU for $QUIET_SECS s (at most $QUIET_WAIT s)"
  node "$OUT/cpu-monitor.js" wait "$sid" "$QUIET_PCT" "$QUIET_SECS" "$QUIET_WAIT" | tee "$OUT/$name.quiet.txt" >&2
  node "$OUT/cpu-monitor.js" watch "$sid" "$OUT/$name.foreign.json" &
  mon=$!
  say "harness run $name: LOOP_DIO=$dio targets: $*"
  # from the harness's own dir: its fuse-native check must not find this
  # checkout's node_modules (nullfuse.js and passfuse.js resolve from there)
  (cd "$HARNESS" && LOOP_DIO="$dio" THINFUSE_CLI="$FROZEN/dist/frontends/cli/main.js" BENCH_TARGETS_DIR="$ROOT/scripts/bench" \
    ./run.sh "$@") > "$log" 2>&1 || rc=$?
  kill -TERM "$mon" 2>/dev/null; wait "$mon" 2>/dev/null || true
  [ "$rc" = 0 ] || { say "harness run $name failed; see $log"; tail -n 20 "$log" >&2; return 1; }
  [ -f "$OUT/$name.foreign.json" ] && say "other processes during $name: $(cat "$OUT/$name.foreign.json")"
  rundir=$(sed -n 's/^results: .* (run dir \(.*\))$/\1/p' "$log" | tail -n 1)
  [ -n "$rundir" ] && [ -f "$rundir/results.json" ] || { say "no results in $log"; return 1; }
  echo "$rundir" > "$OUT/$name.rundir"
  cp "$rundir/results.json" "$OUT/$name.results.json"
  for d in "$rundir"/t/thinfuse*; do
    [ -d "$d" ] || continue
    inst=$(basename "$d")
    [ -f "$d/samples.jsonl" ] && cp "$d/samples.jsonl" "$OUT/$name.$inst.samples.jsonl"
    if [ -d "$d/prof" ]; then
      local p
      p=$(ls -t "$d"/prof/*.cpuprofile 2>/dev/null | head -n 1)
      [ -n "$p" ] && cp "$p" "$OUT/$name.$inst.cpuprofile"
    fi
  done
  sed -n '/^workload /,/^results:/p' "$log" >&2
}

if [ -z "$report_only" ]; then
  [ "$(id -u)" = 0 ] || { echo "bench.sh: run as root (the harness needs losetup, mount, drop_caches)" >&2; exit 1; }
  [ -x "$HARNESS/run.sh" ] || { echo "bench.sh: no harness at $HARNESS" >&2; exit 1; }
  for c in fio qemu-storage-daemon qemu-img mkfs.xfs fusermount; do
    command -v "$c" > /dev/null || { say "installing harness requirements ($c missing)"; "$HARNESS/setup.sh"; break; }
  done
  : "${OUT:=$WORK/thinfuse-bench/$(date +%Y%m%d-%H%M%S)}"
  mkdir -p "$OUT"
  write_monitor "$OUT/cpu-monitor.js"
  if [ "$build" = 1 ]; then
    say "npm run build"
    (cd "$ROOT" && npm run build > "$OUT/build.log" 2>&1) || { tail -n 20 "$OUT/build.log" >&2; exit 1; }
  fi
  # Freeze the build: the runs use this copy, so a rebuild of the checkout
  # during the runs cannot change the code under test half-way.
  FROZEN="$OUT/build"
  rm -rf "$FROZEN"; mkdir -p "$FROZEN/native-deps"
  cp -a "$ROOT/dist" "$ROOT/package.json" "$FROZEN/"
  cp -a "$ROOT/native-deps/build" "$FROZEN/native-deps/"
  ln -s "$ROOT/node_modules" "$FROZEN/node_modules"
  {
    echo "commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "src_dirty=$(git -C "$ROOT" status --porcelain -- src native-deps 2>/dev/null | wc -l)"
    echo "built=$(stat -c %y "$ROOT/dist/frontends/cli/main.js")"
  } > "$OUT/build.txt"
  say "output in $OUT ($(tr '\n' ' ' < "$OUT/build.txt"))"

  # shellcheck disable=SC2086
  for m in $MODES; do harness_run "dio-$m" "$m" $TARGETS; done
  if [ "$profile" = 1 ]; then
    for m in $PROFILE_MODES; do THINFUSE_BENCH_PROF=1 harness_run "prof-$m" "$m" thinfuse; done
  fi
  mkdir -p "$WORK/thinfuse-bench" && ln -sfn "$OUT" "$WORK/thinfuse-bench/latest"
else
  OUT=$(cd "$report_only" && pwd)
fi

# ------------------------------------------------------------------ report
node - "$OUT" "$ROOT/BENCHMARKS.md" "$write" "$MODES" <<'NODE'
'use strict'
const fs = require('fs')
const path = require('path')
const [out, benchMd, write, modesArg] = process.argv.slice(2)
const modes = modesArg.split(/\s+/).filter(Boolean).filter(m => fs.existsSync(`${out}/dio-${m}.results.json`))
if (modes.length === 0) { console.error('no results in ' + out); process.exit(1) }
const load = f => JSON.parse(fs.readFileSync(f, 'utf8'))
const res = Object.fromEntries(modes.map(m => [m, load(`${out}/dio-${m}.results.json`)]))
const build = fs.existsSync(`${out}/build.txt`)
  ? Object.fromEntries(fs.readFileSync(`${out}/build.txt`, 'utf8').trim().split('\n').map(l => l.split('=', 2))) : {}

const ROWS = [
  ['seqwrite', 'seq write 1M qd16 {SEQ} +end_fsync'],
  ['seqread', 'seq read 1M qd16 {SEQ} (cold)'],
  ['randread', 'rand read 4k qd32 {RAND} (cold)'],
  ['randwrite', 'rand write 4k qd32 {RAND} overwrite +fsync'],
  ['randwrite_fresh', 'rand write 4k qd32 {RAND} unprovisioned +fsync'],
  ['snap/snapshot_create', 'snap: snapshot step, 1 snapshot'],
  ['snap/snap_seqread', 'snap: seq read {SEQ} (via origin)'],
  ['snap/snap_randread', 'snap: rand read 4k qd32 (depth 1)'],
  ['snap/cow_randwrite', 'snap: 1st 4k write per 64k blk (CoW) +fsync'],
  ['snap/cow_rewrite', 'snap: rewrite same blocks +fsync'],
  ['chain/snapshot_create', 'chain: snapshot step, {N} snapshots'],
  ['chain/chain_seqread', 'chain: seq read {SEQ} (depth {N})'],
  ['chain/chain_randread', 'chain: rand read 4k qd32 (depth {N})'],
  ['mkfs_xfs_nodiscard', 'mkfs.xfs -K {IMG}'],
  ['mkfs_xfs', 'mkfs.xfs {IMG} (discards)'],
  ['untar', 'xfs: untar {FILES} files + syncfs'],
  ['xfs_fsync', 'xfs: 4k write+fsync qd1']
]
const cfg0 = res[modes[0]].meta.config
let files = '?'
try { files = JSON.parse(cfg0.smallfiles).files } catch (e) {}
const label = t => t.replace(/\{SEQ\}/g, cfg0.SEQ_SIZE).replace(/\{RAND\}/g, cfg0.RAND_SIZE)
  .replace(/\{IMG\}/g, cfg0.IMG_SIZE).replace(/\{N\}/g, cfg0.CHAIN_DEPTH).replace(/\{FILES\}/g, files)
const rowKey = r => !r.variant ? r.workload : r.variant.startsWith('chain') ? 'chain/' + r.workload : r.variant + '/' + r.workload
const index = results => {
  const m = {}
  for (const r of results.records) m[rowKey(r) + '|' + r.target] = r
  return m
}
const idx = Object.fromEntries(modes.map(m => [m, index(res[m])]))
const targetsOf = results => [...new Set(results.records.map(r => r.target))]
const fmt = v => v >= 10000 ? Math.round(v).toLocaleString('en-US') : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)
const lat = us => us == null ? '' : us >= 1000 ? ` p99 ${(us / 1000).toFixed(us >= 100000 ? 0 : 1)}ms` : ` p99 ${us.toFixed(0)}us`
const cell = r => !r ? '-' : r.error ? 'ERR' : `${fmt(r.value)} ${r.metric === 's' ? 's' : r.metric}${r.metric === 's' ? '' : lat(r.p99_us)}`
// speed ratio a over b: higher is better for a (times are inverted)
const ratio = (a, b) => (!a || !b || a.error || b.error || !a.value || !b.value) ? null
  : a.metric === 's' ? b.value / a.value : a.value / b.value
const rfmt = x => x == null ? '-' : x.toFixed(2) + 'x'

const L = []
const p = s => L.push(s)
const meta = res[modes[0]].meta
p(`## FUSE: thinfuse against the shared harness, ${meta.started.slice(0, 10)}`)
p('')
p(`Generated by \`scripts/bench.sh\` (${modes.length} harness runs, one per loop direct-io mode, all targets side by side in each; ` +
  `${fs.readdirSync(out).some(f => f.endsWith('.cpuprofile')) ? 'then profiling runs of thinfuse alone' : 'no profiling runs'}). Machine: ${cfg0.cpus} vCPUs, ${Math.round(cfg0.mem_kib / 1048576)} GiB, kernel ${cfg0.kernel}, ` +
  `node ${cfg0.node}, ${cfg0.qemu}, work dir on ${cfg0.work_fs} (${cfg0.work_dev}). ` +
  `Harness defaults: IMG_SIZE ${cfg0.IMG_SIZE}, SEQ_SIZE ${cfg0.SEQ_SIZE}, RAND_SIZE ${cfg0.RAND_SIZE} (one pass or ${cfg0.RAND_RUNTIME} s), CHAIN_DEPTH ${cfg0.CHAIN_DEPTH}. ` +
  `thinfuse build: commit ${build.commit || '?'}${build.src_dirty && build.src_dirty !== '0' ? ` plus ${build.src_dirty} uncommitted src/native-deps files` : ''}, ` +
  'shipped defaults: `serve` with `--cache-size 64M --metadata-cache-size 32M`, pool with 64 KiB blocks and block zeroing on ' +
  '(target file `scripts/bench/thinfuse.sh`; pool data 2 x image size and metadata 1G, both sparse). ' +
  'Values are MB/s (10^6 bytes/s), IOPS or seconds; p99 is fio\'s completion latency (fsync latency for xfs_fsync). ' +
  'Ratios are speed ratios (for times, the other target\'s time over thinfuse\'s), so above 1 means thinfuse is faster. ' +
  'Single runs: the harness README puts run-to-run noise at about ±10% for most cells and more for raw\'s writes.')
p('')
for (const m of modes) {
  const r = res[m]
  const ts = targetsOf(r)
  const dio = [...new Set(r.records.map(x => x.loop_dio).filter(Boolean))].join(',')
  p(`### loop direct-io ${m} (sysfs dio=${dio}), run ${r.meta.started}`)
  p('')
  const head = ['workload', ...ts]
  const hasQ = ts.includes('qsd'); const hasP = ts.includes('passfuse')
  if (ts.includes('thinfuse')) { if (hasQ) head.push('thinfuse/qsd'); if (hasP) head.push('thinfuse/passfuse') }
  p('| ' + head.join(' | ') + ' |')
  p('|' + head.map((_, i) => i === 0 ? ' --- ' : ' ---: ').join('|') + '|')
  for (const [k, l] of ROWS) {
    const cells = ts.map(t => cell(idx[m][k + '|' + t]))
    if (cells.every(c => c === '-')) continue
    const tf = idx[m][k + '|thinfuse']
    const row = [label(l), ...cells]
    if (ts.includes('thinfuse')) {
      if (hasQ) row.push(rfmt(ratio(tf, idx[m][k + '|qsd'])))
      if (hasP) row.push(rfmt(ratio(tf, idx[m][k + '|passfuse'])))
    }
    p('| ' + row.join(' | ') + ' |')
  }
  const fj = `${out}/dio-${m}.foreign.json`
  if (fs.existsSync(fj)) {
    const fo = load(fj)
    p('')
    p(`Other processes on the machine during this run (outside the benchmark's session, kernel threads excluded): ${fo.mean_pct}% of one CPU on average, ` +
      `${fo.peak10s_pct}% at the busiest 10 s, over ${fo.secs} s (top: ${fo.top.map(([k, v]) => `${k} ${v} s`).join(', ') || 'none'}).`)
  }
  const errs = r.records.filter(x => x.error)
  for (const e of errs) p(`\nERR ${e.target}${e.variant ? '/' + e.variant : ''} ${e.workload}: ${e.error}`)
  p('')
}

// ---- goals
p('### Goals (issue 3)')
p('')
p('Workloads by their key in the tables above (snap/ = depth 1, chain/ = depth ' + cfg0.CHAIN_DEPTH + ').')
p('')
p('| goal | ' + modes.map(m => `dio ${m}`).join(' | ') + ' |')
p('| --- |' + modes.map(() => ' --- |').join(''))
const goalQsd = m => {
  const miss = []; let n = 0
  for (const [k, l] of ROWS) {
    const x = ratio(idx[m][k + '|thinfuse'], idx[m][k + '|qsd'])
    if (x == null) continue
    n++
    if (x < 1.0) miss.push(`${k} ${x.toFixed(2)}x`)
  }
  return n === 0 ? 'not run' : miss.length === 0 ? `holds on all ${n}` : `**missed on ${miss.length} of ${n}**: ${miss.join('; ')}`
}
const goalPass = m => ['seqwrite', 'seqread'].map(k => {
  const x = ratio(idx[m][k + '|thinfuse'], idx[m][k + '|passfuse'])
  return x == null ? `${k} -` : `${k} ${x.toFixed(2)}x ${x >= 0.8 ? '(holds)' : '(**missed**)'}`
}).join('; ')
const goalDepth = m => {
  const x = ratio(idx[m]['chain/chain_randread|thinfuse'], idx[m]['snap/snap_randread|thinfuse'])
  const q = ratio(idx[m]['chain/chain_randread|qsd'], idx[m]['snap/snap_randread|qsd'])
  const s = ratio(idx[m]['chain/chain_seqread|thinfuse'], idx[m]['snap/snap_seqread|thinfuse'])
  return x == null ? '-' : `${x.toFixed(2)}x ${x >= 0.9 ? '(holds)' : '(**missed**)'} (seq read ${s == null ? '-' : s.toFixed(2) + 'x'}; qsd rand ${q == null ? '-' : q.toFixed(2) + 'x'})`
}
p('| thinfuse >= 1.0x qsd, every workload | ' + modes.map(goalQsd).join(' | ') + ' |')
p('| seq write/read >= 0.8x passfuse | ' + modes.map(goalPass).join(' | ') + ' |')
// the ceiling: how a JS FUSE daemon with no thin logic at all (passfuse) fares against qsd
const ceiling = (m, t) => {
  const below = []; let n = 0
  for (const [k, l] of ROWS) {
    const x = ratio(idx[m][k + '|' + t], idx[m][k + '|qsd'])
    if (x == null) continue
    n++
    if (x < 1.0) below.push(`${k} ${x.toFixed(2)}x`)
  }
  return n === 0 ? '-' : `below qsd on ${below.length} of ${n}${below.length ? ': ' + below.join('; ') : ''}`
}
p('| (reference) passfuse/qsd: the same FUSE stack with no thin logic | ' + modes.map(m => ceiling(m, 'passfuse')).join(' | ') + ' |')
p('| (reference) nullfuse/qsd: fuse-native answering without any I/O | ' + modes.map(m => ceiling(m, 'nullfuse')).join(' | ') + ' |')
p(`| 4k rand read depth ${cfg0.CHAIN_DEPTH} >= 0.9x depth 1 | ` + modes.map(goalDepth).join(' | ') + ' |')
p('')

// ---- daemon samples: cache hit rates, RSS, CPU
const readSamples = f => fs.existsSync(f) ? fs.readFileSync(f, 'utf8').trim().split('\n').filter(Boolean).map(l => JSON.parse(l)) : []
const INST = [['thinfuse', ''], ['thinfuse-snap', 'snap'], ['thinfuse-chain', 'chain']]
function windows (samples) {
  const w = []
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1]; const b = samples[i]
    const dc = k => b.status && a.status ? b.status.result.dataCache[k] - a.status.result.dataCache[k] : NaN
    const mc = k => b.status && a.status ? b.status.result.cache[k] - a.status.result.cache[k] : NaN
    w.push({
      label: b.label, from: a.uptime, to: b.uptime,
      dHits: dc('hits'), dMiss: dc('misses'), dEvict: dc('evictions'),
      mHits: mc('hits'), mMiss: mc('misses'),
      hwm: b.hwm_kb, rss: b.rss_kb,
      cpuMain: (b.cpu_main_ticks - a.cpu_main_ticks) / b.clk_tck,
      cpuAll: (b.cpu_all_ticks - a.cpu_all_ticks) / b.clk_tck
    })
  }
  return w
}
const pct = (a, b) => (a + b) > 0 ? (100 * a / (a + b)).toFixed(1) + '%' : '-'
const mib = kb => kb == null ? '-' : (kb / 1024).toFixed(0)
p('### thinfuse daemon per workload: cache hit rates, peak RSS, CPU')
p('')
let unit = '?'
try { unit = String(+/export const CACHE_UNIT = ([0-9* ]+);/.exec(fs.readFileSync(`${out}/build/dist/io/cached-backing.js`, 'utf8'))[1].split('*').reduce((a, b) => a * b, 1) / 1024) + ' KiB' } catch (e) {}
p('From `status --json` and /proc/PID after each workload (scripts/bench/thinfuse.sh\'s hook). Data cache hits and misses count cache units ' +
  `(CACHE_UNIT in src/io/cached-backing.ts: ${unit} in the build measured); hit % = hits / (hits + misses) in that workload. ` +
  'Peak RSS = VmHWM since the previous ' +
  'workload (reset through clear_refs). JS thread = CPU seconds of the main thread over the fio runtime (100% = the JS thread never idles); ' +
  'process = all threads (libuv pool, FUSE threads) over the same time. Rows marked "(+fill)" also include the unrecorded fill before the snapshot (no CPU share given: the fill is not timed); CPU shares are left out for workloads shorter than 1 s (10 ms ticks).')
p('')
const peak = {}
for (const m of modes) {
  p(`#### dio ${m}`)
  p('')
  p('| workload | data cache hits / misses (hit %) | evictions | metadata cache hit % | peak RSS MiB | JS thread busy | process CPU |')
  p('| --- | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const [inst, variant] of INST) {
    const s = readSamples(`${out}/dio-${m}.${inst}.samples.jsonl`)
    for (const w of windows(s)) {
      if (w.label === 'teardown') continue
      const key = (variant ? variant + '/' : '') + w.label
      const rec = idx[m][key + '|thinfuse']
      const secs = rec && !rec.error ? (rec.runtime_s || (rec.metric === 's' ? rec.value : null)) : null
      const busy = x => secs >= 1 && w.label !== 'snapshot_create' ? (100 * x / secs).toFixed(0) + '%' : '-'
      peak[m] = Math.max(peak[m] || 0, w.hwm || 0)
      const name = (variant ? variant + '/' : '') + w.label + (w.label === 'snapshot_create' ? ' (+fill)' : '')
      p(`| ${name} | ${w.dHits} / ${w.dMiss} (${pct(w.dHits, w.dMiss)}) | ${w.dEvict} | ${pct(w.mHits, w.mMiss)} | ${mib(w.hwm)} | ${busy(w.cpuMain)} | ${busy(w.cpuAll)} |`)
    }
  }
  p('')
  p(`Peak RSS of the serve process over the whole run (dio ${m}): **${mib(peak[m])} MiB** with the default caches (64 MiB data + 32 MiB metadata).`)
  p('')
}

// ---- profiles
function sourceMapper () {
  const cache = new Map()
  const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
  function decode (mappings) {
    const lines = []; let src = 0; let sl = 0; let sc = 0
    for (const line of mappings.split(';')) {
      const segs = []; let col = 0
      for (const seg of line.split(',')) {
        if (!seg) continue
        const v = []; let val = 0; let shift = 0
        for (const ch of seg) {
          let d = B64.indexOf(ch); const cont = d & 32; d &= 31
          val += d << shift
          if (cont) { shift += 5 } else { v.push(val & 1 ? -(val >> 1) : val >> 1); val = 0; shift = 0 }
        }
        col += v[0]
        if (v.length >= 4) { src += v[1]; sl += v[2]; sc += v[3]; segs.push([col, src, sl]) }
      }
      lines.push(segs)
    }
    return lines
  }
  return (url, line, col) => { // 0-based JS line and column -> "src/x.ts:N" (our own build only)
    if (!url.startsWith('file://') || !url.includes('/build/dist/')) return null
    const file = url.slice(7)
    if (!cache.has(file)) {
      let m = null
      try {
        const j = JSON.parse(fs.readFileSync(file + '.map', 'utf8'))
        m = { sources: j.sources.map(s => path.resolve(path.dirname(file), s)), lines: decode(j.mappings) }
      } catch (e) {}
      cache.set(file, m)
    }
    const m = cache.get(file)
    if (!m || !m.lines[line] || m.lines[line].length === 0) return null
    let seg = m.lines[line][0]
    for (const x of m.lines[line]) { if (x[0] <= col) seg = x; else break }
    const src = m.sources[seg[1]]
    const i = src.lastIndexOf('/src/')
    return (i >= 0 ? src.slice(i + 1) : path.basename(src)) + ':' + (seg[2] + 1)
  }
}
const mapSrc = sourceMapper()
function frameName (cf) {
  const fn = cf.functionName || '(anonymous)'
  if (!cf.url) return fn
  const mapped = mapSrc(cf.url, cf.lineNumber, cf.columnNumber)
  if (mapped) return `${fn} ${mapped}`
  let u = cf.url.replace(/^file:\/\//, '').replace(/^node:/, 'node:')
  const nm = u.lastIndexOf('node_modules/')
  if (nm >= 0) return `${fn} ${u.slice(nm + 13).split('/')[0]}`
  else if (u.includes('/native-deps/')) u = u.slice(u.indexOf('native-deps/'))
  else if (u.includes('/dist/')) u = u.slice(u.indexOf('dist/'))
  return `${fn} ${u}:${cf.lineNumber + 1}`
}
function profileWindows (prof, samples) {
  const byId = new Map(prof.nodes.map(n => [n.id, n]))
  const times = []; let t = prof.startTime
  for (const d of prof.timeDeltas) { t += d; times.push(t) }
  const ws = windows(samples)
  return ws.map(w => {
    const from = w.from * 1e6; const to = w.to * 1e6
    const self = new Map(); const byFile = new Map(); let total = 0; let idle = 0
    for (let i = 0; i < prof.samples.length; i++) {
      if (times[i] <= from || times[i] > to) continue
      const n = byId.get(prof.samples[i])
      const name = frameName(n.callFrame)
      if (n.callFrame.functionName === '(idle)') { idle++; continue }
      total++
      self.set(name, (self.get(name) || 0) + 1)
      const file = /^\([^)]*\)$/.test(name) || !name.includes(' ') ? name : name.slice(name.lastIndexOf(' ') + 1).replace(/:\d+$/, '')
      byFile.set(file, (byFile.get(file) || 0) + 1)
    }
    return { label: w.label, total, idle, secs: w.to - w.from, top: [...self.entries()].sort((a, b) => b[1] - a[1]), files: [...byFile.entries()].sort((a, b) => b[1] - a[1]) }
  })
}
const profModes = ['off', 'on'].filter(m => INST.some(([inst]) => fs.existsSync(`${out}/prof-${m}.${inst}.cpuprofile`)))
if (profModes.length) {
  p('### Profile of the serve process (separate runs under `node --cpu-prof`, thinfuse alone)')
  p('')
  p('Self time by function (source-mapped to src/), per workload window, as % of the non-idle samples in that window; ' +
    '"busy" = non-idle samples x 1 ms sampling interval over the window\'s wall time (JS thread occupancy, profiler overhead included). ' +
    '`(program)` is native code outside JS (fuse-native\'s C, libuv, V8 internals), `(garbage collector)` is GC. ' +
    'Throughput in these runs is lower than in the tables above because of the profiler. Native functions without a file (`read`, `writeBuffer`, `fsync`, ...) are Node\'s fs bindings: ' +
    'for the async calls that is the cost of handing the request to the libuv threadpool (on this VM a thread wake-up is not cheap); ' +
    'time in an N-API call such as `copyFileRange` is charged to the JS function that calls it.')
  p('')
  // every workload for dio off (the default mode), these for the others
  const SHOW = ['seqwrite', 'seqread', 'randread', 'randwrite', 'randwrite_fresh', 'snap/snap_randread', 'snap/cow_randwrite', 'chain/snapshot_create', 'chain/chain_randread', 'untar']
  for (const m of profModes) {
    for (const [inst, variant] of INST) {
      const f = `${out}/prof-${m}.${inst}.cpuprofile`
      const sf = `${out}/prof-${m}.${inst}.samples.jsonl`
      if (!fs.existsSync(f) || !fs.existsSync(sf)) continue
      const pw = profileWindows(load(f), readSamples(sf))
      for (const w of pw) {
        const key = (variant ? variant + '/' : '') + w.label
        if ((m !== 'off' && !SHOW.includes(key)) || w.total === 0 || w.label === 'teardown' || w.label === 'setup') continue
        p(`- **dio ${m}, ${key}** (busy ${(100 * w.total / 1000 / w.secs).toFixed(0)}% of ${w.secs.toFixed(1)} s): ` +
          w.top.slice(0, 8).map(([n, c]) => `\`${n}\` ${(100 * c / w.total).toFixed(1)}%`).join(', ') +
          '; by file: ' + w.files.slice(0, 6).map(([n, c]) => `${n} ${(100 * c / w.total).toFixed(0)}%`).join(', '))
      }
    }
  }
  p('')
}

const gen = L.join('\n')
fs.writeFileSync(`${out}/fuse-section.md`, gen + '\n')
console.log(gen)
if (write === '1') {
  let md = fs.existsSync(benchMd) ? fs.readFileSync(benchMd, 'utf8') : '# Benchmarks\n'
  const B = '<!-- fuse:begin -->'; const E = '<!-- fuse:end -->'
  const AB = '<!-- fuse-analysis:begin -->'; const AE = '<!-- fuse-analysis:end -->'
  let analysis = `${AB}\n### Analysis\n\n(written by hand after a run; scripts/bench.sh keeps this block when it regenerates the numbers above)\n${AE}`
  const bi = md.indexOf(B); const ei = md.indexOf(E)
  if (bi >= 0 && ei > bi) {
    const old = md.slice(bi, ei)
    const ai = old.indexOf(AB); const ae = old.indexOf(AE)
    if (ai >= 0 && ae > ai) analysis = old.slice(ai, ae + AE.length)
    md = md.slice(0, bi) + `${B}\n${gen}\n${analysis}\n` + md.slice(ei)
  } else {
    md = md.replace(/\s*$/, '\n') + `\n${B}\n${gen}\n${analysis}\n${E}\n`
  }
  fs.writeFileSync(benchMd, md)
  console.error(`wrote the fuse section of ${benchMd}`)
}
NODE
