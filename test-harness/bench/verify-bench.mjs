// `make bench-verify`: runs nhi-verify-bench natively and, as wasm32-wasip1, inside
// V8 through Node.js's node:wasi (V8 is the engine Envoy embeds), then prints one
// table: µs per signature check for each algorithm and backend, in both.
//
// Usage: node verify-bench.mjs NATIVE_BINARY WASM_FILE [SECONDS_PER_CASE]

import { execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WASI } from 'node:wasi';

const [native, wasmPath, seconds = '1'] = process.argv.slice(2);
if (!native || !wasmPath) {
  console.error('usage: verify-bench.mjs NATIVE_BINARY WASM_FILE [SECONDS_PER_CASE]');
  process.exit(2);
}

function parse(tsv) {
  const rows = new Map();
  for (const line of tsv.split('\n').filter(Boolean)) {
    const [alg, backend, us] = line.split('\t');
    rows.set(`${alg}\t${backend}`, Number(us));
  }
  return rows;
}

console.error(`native: ${native}`);
const nativeRows = parse(execFileSync(native, [seconds], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }));

console.error(`V8 ${process.versions.v8} (Node.js ${process.version}): ${wasmPath}`);
const dir = mkdtempSync(join(tmpdir(), 'verify-bench-'));
const out = join(dir, 'stdout.tsv');
const fd = openSync(out, 'w');
const wasi = new WASI({ version: 'preview1', args: ['nhi-verify-bench', seconds], env: {}, stdout: fd, returnOnExit: true });
const module = await WebAssembly.compile(readFileSync(wasmPath));
// The filter's proxy-wasm host calls may still be imported, though never called here.
const imports = wasi.getImportObject();
for (const { module: from, name, kind } of WebAssembly.Module.imports(module)) {
  if (from !== 'wasi_snapshot_preview1' && kind === 'function') {
    imports[from] ??= {};
    imports[from][name] = () => { throw new Error(`host call ${from}.${name} in the benchmark`); };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
// The filter's `_initialize` (proxy-wasm's entry point) is exported too; node:wasi
// refuses to start a module exporting both, so hand it the command's exports only.
const code = wasi.start({ exports: { memory: instance.exports.memory, _start: instance.exports._start } });
closeSync(fd);
const v8Rows = parse(readFileSync(out, 'utf8'));
rmSync(dir, { recursive: true });
if (code !== 0) {
  console.error(`the wasm benchmark exited with ${code}`);
  process.exit(1);
}

const header = ['alg', 'backend', 'µs/verify native', 'µs/verify V8'];
const table = [...nativeRows.keys()].map((key) => {
  const [alg, backend] = key.split('\t');
  const fmt = (v) => (v === undefined ? '-' : v.toFixed(1));
  return [alg, backend, fmt(nativeRows.get(key)), fmt(v8Rows.get(key))];
});
const widths = header.map((h, i) => Math.max(h.length, ...table.map((r) => r[i].length)));
const line = (cells) => `| ${cells.map((c, i) => (i >= 2 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join(' | ')} |`;
console.log(line(header));
console.log(`|${widths.map((w, i) => (i >= 2 ? '-'.repeat(w + 1) + ':' : '-'.repeat(w + 2))).join('|')}|`);
for (const row of table) console.log(line(row));
