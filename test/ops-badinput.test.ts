// Bad auto-extend settings: a threshold outside 50-100, a percent of 0, a
// max below the pool's data size now, and values that are no numbers. Each
// gets one clear error line and a non-zero exit, and POOL/config is left
// byte for byte as it was (pool create makes nothing). Ends with thin_check.
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cli, cliOk, thinTool } from './_helpers/cli.js';

test('bad auto-extend settings: one line each, exit 2, config unchanged', (t) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-ops-bad-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  const P = path.join(d, 'P');
  cliOk(['pool', 'create', P, '--data-size', '256M', '--metadata-size', '8M']);
  cliOk(['pool', 'set', P, '--autoextend-threshold', '80', '--autoextend-percent', '20', '--autoextend-max', '1G']);
  const config = fs.readFileSync(path.join(P, 'config'));
  const cases: Array<[string[], RegExp]> = [
    [['--autoextend-threshold', '49'], /^--autoextend-threshold takes a whole percent from 50 to 100 \(100 turns auto-extend off\), not 49$/],
    [['--autoextend-threshold', '101'], /^--autoextend-threshold takes a whole percent from 50 to 100 .*, not 101$/],
    [['--metadata-autoextend-threshold', '20'], /^--metadata-autoextend-threshold takes a whole percent from 50 to 100 .*, not 20$/],
    [['--autoextend-percent', '0'], /^--autoextend-percent takes a whole percent from 1 to 1000 \(of the size at the time\), not 0$/],
    [['--metadata-autoextend-percent', '0'], /^--metadata-autoextend-percent takes a whole percent from 1 to 1000 .*, not 0$/],
    [['--autoextend-max', '128M'], /^--autoextend-max 128MiB is below the pool's data size now \(256MiB\); give a larger size, or 0 for no limit$/],
    [['--autoextend-threshold', 'high'], /^--autoextend-threshold takes a whole percent, not 'high'$/],
    [['--autoextend-percent', '-5'], /^--autoextend-percent takes a whole percent, not '-5'$/],
    [['--autoextend-max', 'lots'], /^--autoextend-max: cannot parse size 'lots'/],
    // A bad setting next to a good one changes neither.
    [['--low-water-mark', '5', '--autoextend-percent', '0'], /^--autoextend-percent takes/],
  ];
  for (const [args, message] of cases) {
    const r = cli(['pool', 'set', P, ...args]);
    const what = `pool set ${args.join(' ')}`;
    t.is(r.status, 2, `${what}: exit status`);
    const lines = r.stderr.split('\n').filter(Boolean);
    t.is(lines.length, 1, `${what}: one line: ${r.stderr}`);
    t.regex(lines[0]!.replace(/^thinfuse: /, ''), message, what);
    t.is(r.stdout.length, 0, `${what}: nothing on stdout`);
    t.true(fs.readFileSync(path.join(P, 'config')).equals(config), `${what}: config unchanged`);
  }
  // pool create takes the same settings and refuses the same way, making nothing.
  for (const args of [['--autoextend-threshold', '30'], ['--autoextend-percent', '0'], ['--autoextend-max', '64M']]) {
    const Q = path.join(d, 'Q');
    const r = cli(['pool', 'create', Q, '--data-size', '128M', ...args]);
    t.is(r.status, 2, `pool create ${args.join(' ')}`);
    t.is(r.stderr.split('\n').filter(Boolean).length, 1, r.stderr);
    t.false(fs.existsSync(Q), `pool create ${args.join(' ')}: nothing made`);
  }
  cliOk(['pool', 'create', path.join(d, 'R'), '--data-size', '128M', '--autoextend-threshold', '75', '--autoextend-max', '1G']);
  t.like(JSON.parse(fs.readFileSync(path.join(d, 'R', 'config'), 'utf8')).autoextend, { threshold: 75, percent: 20, max: 1024 ** 3 });
  const json = cli(['pool', 'set', P, '--autoextend-threshold', '40', '--json']);
  t.is(json.status, 2);
  t.like(JSON.parse(json.stdout.toString()), { ok: false, error: { code: 'EINVAL_ARG' } });
  t.is(JSON.parse(cliOk(['info', P, '--json'])).result.autoextend.max, 1024 ** 3);
  const check = thinTool('thin_check', [path.join(P, 'metadata')]);
  t.is(check.status, 0, check.stderr);
});

test('a config file with a bad autoextend section is refused, naming the field', (t) => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'thinfuse-ops-bad-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  const P = path.join(d, 'P');
  cliOk(['pool', 'create', P, '--data-size', '64M', '--metadata-size', '8M']);
  const file = path.join(P, 'config');
  const good = JSON.parse(fs.readFileSync(file, 'utf8'));
  fs.writeFileSync(file, JSON.stringify({ ...good, autoextend: { ...good.autoextend, threshold: 'often' } }));
  const r = cli(['info', P]);
  t.not(r.status, 0);
  t.regex(r.stderr, /^thinfuse: .*config: autoextend "threshold" is not a whole number >= 0; fix or remove it\n$/);
  fs.writeFileSync(file, JSON.stringify({ ...good, autoextend: { sometimes: 1 } }));
  t.regex(cli(['info', P]).stderr, /unknown autoextend setting "sometimes"/);
  fs.writeFileSync(file, JSON.stringify(good));
  cliOk(['info', P]);
  const check = thinTool('thin_check', [path.join(P, 'metadata')]);
  t.is(check.status, 0, check.stderr);
});
