// dependency-cruiser (v16) rules: the layering of thinfuse.
//
//   src/base  ->  src/io  ->  src/metadata  ->  src/pool  ->  src/frontends/*
//
// A layer imports only layers to its left: base imports none of the others,
// io imports base, metadata imports base and io, pool imports base, io and
// metadata, frontends may import anything below them. No cycle may run through
// two layers.
//
//   npx depcruise --config scripts/deps-rules.cjs src      (npm run layers)
//
// npm run layers also runs scripts/file-lines.mjs: no file under src/ may
// grow past 600 lines.
//
// Sources are TypeScript with NodeNext `.js` specifiers (`./foo.js` is
// foo.ts); the tsconfig makes the resolver map those, and type-only imports
// count (tsPreCompilationDeps), since a type import couples layers as well.

const path = require('node:path');

const LAYERS = ['base', 'io', 'metadata', 'pool', 'frontends'];

/** One rule per layer: it may not reach any layer above it. */
const layerRules = LAYERS.slice(0, -1).map((layer, i) => {
  const above = LAYERS.slice(i + 1);
  return {
    name: `layer-${layer}`,
    comment:
      `src/${layer} may import only ${LAYERS.slice(0, i).map((l) => `src/${l}`).join(', ') || 'nothing of the other layers'}; ` +
      `it must not import ${above.map((l) => `src/${l}`).join(', ')}.`,
    severity: 'error',
    from: { path: `^src/${layer}/` },
    to: { path: `^src/(${above.join('|')})/` },
  };
});

// Inside src/pool, the parts of an open pool (see the header of
// src/pool/pool.ts) are ordered the same way: each may import only the
// parts before it, and pool.ts, the facade, wires them all.
const POOL_PARTS = ['context', 'modes', 'commit', 'provision', 'quiesce', 'io-path', 'devices', 'resize'];

const poolPartRules = POOL_PARTS.map((part, i) => ({
  name: `pool-part-${part}`,
  comment: `src/pool/${part}.ts must not import the facade pool.ts or the pool parts after it: ${POOL_PARTS.slice(i + 1).join(', ') || 'none'}.`,
  severity: 'error',
  from: { path: `^src/pool/${part}\\.ts$` },
  to: { path: `^src/pool/(${[...POOL_PARTS.slice(i + 1), 'pool'].join('|')})\\.ts$` },
}));

module.exports = {
  forbidden: [
    ...layerRules,
    ...poolPartRules,
    {
      name: 'no-cycle-across-layers',
      comment:
        'A circular dependency that runs through more than one layer. (The layer rules already make ' +
        'one impossible; this names the problem outright should a layer rule ever be loosened.)',
      severity: 'error',
      from: { path: `^src/(${LAYERS.join('|')})/` },
      to: { circular: true, via: { pathNot: '^src/$1/' } },
    },
    {
      name: 'no-cycle-within-layer',
      comment: 'A circular dependency inside one layer: legal in ESM, but usually a module boundary in the wrong place.',
      severity: 'warn',
      from: { path: `^src/(${LAYERS.join('|')})/` },
      to: { circular: true, viaOnly: { path: '^src/$1/' } },
    },
    {
      name: 'not-to-unresolvable',
      comment:
        'An import the resolver cannot find. Besides being a bug, an unresolved import would slip past the ' +
        'layer rules above, which match on resolved paths.',
      severity: 'error',
      from: { path: '^src/' },
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '(^|/)(dist|native-deps)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: path.join(__dirname, '..', 'tsconfig.json') },
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types', 'typings'],
    },
    reporterOptions: {
      text: { highlightFocused: true },
    },
  },
};
