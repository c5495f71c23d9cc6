#!/usr/bin/env node
// Test harness for wavelet.js:
//
//   node wavelet-cli.mjs FILE [LEVEL] [--repeat N] [--out RAW] [--info]
//
// prints one JSON line: rows, columns, frames, samples, shape, dtype, sha256
// of the decoded samples as little-endian bytes in C order (frame, row,
// column, sample), and ms (wall time of the first decode; with --repeat N
// also ms_best, the fastest of N further decodes). --out RAW also writes
// those bytes to the file RAW. --info prints info()
// instead. Errors go to stderr with exit status 1.

import { readFileSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { endianness } from "node:os";
import { performance } from "node:perf_hooks";
import { decode, info } from "./wavelet.js";

function main(argv) {
  const args = [];
  let repeat = 0, showInfo = false, outFile = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--repeat") repeat = Number(argv[++i]);
    else if (argv[i] === "--info") showInfo = true;
    else if (argv[i] === "--out") outFile = argv[++i];
    else args.push(argv[i]);
  }
  if (args.length < 1 || args.length > 2) {
    process.stderr.write("usage: node wavelet-cli.mjs FILE [LEVEL] [--repeat N] [--out RAW] [--info]\n");
    return 2;
  }
  const bytes = new Uint8Array(readFileSync(args[0]));
  if (showInfo) {
    process.stdout.write(JSON.stringify(info(bytes)) + "\n");
    return 0;
  }
  const level = args.length > 1 ? Number(args[1]) : 0;
  if (!Number.isInteger(level) || level < 0) {
    process.stderr.write(`wavelet-cli: bad LEVEL ${args[1]}\n`);
    return 2;
  }
  const t0 = performance.now();
  const img = decode(bytes, level);
  const ms = performance.now() - t0;
  let best = null;
  for (let i = 0; i < repeat; i++) {
    const t = performance.now();
    decode(bytes, level);
    const dt = performance.now() - t;
    if (best === null || dt < best) best = dt;
  }
  let raw = new Uint8Array(img.data.buffer, img.data.byteOffset, img.data.byteLength);
  const size = img.data.BYTES_PER_ELEMENT;
  if (endianness() !== "LE" && size > 1) {
    raw = raw.slice();
    for (let i = 0; i < raw.length; i += size) raw.subarray(i, i + size).reverse();
  }
  if (outFile !== null) writeFileSync(outFile, raw);
  const out = {
    rows: img.rows,
    columns: img.columns,
    frames: img.frames,
    samples: img.samples,
    shape: img.shape,
    dtype: img.dtype,
    level: img.level,
    lossy: img.lossy,
    sha256: createHash("sha256").update(raw).digest("hex"),
    ms: Math.round(ms * 1000) / 1000,
  };
  if (best !== null) out.ms_best = Math.round(best * 1000) / 1000;
  process.stdout.write(JSON.stringify(out) + "\n");
  return 0;
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`wavelet-cli: ${err && err.name ? err.name : "Error"}: ${err && err.message ? err.message : err}\n`);
  process.exitCode = 1;
}
