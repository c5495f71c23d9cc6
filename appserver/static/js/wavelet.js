// Decoder for the progressive wavelet format, version 3 (docs/wavelet-format.md).
//
// A dependency-free ES module for browsers and node:
//
//   import { decode, info } from "./wavelet.js";
//   const meta = info(prefix);          // header + level index (byte ends per level)
//   const img = decode(bytes, level);   // { rows, columns, frames, samples, dtype, shape, data, ... }
//
// `data` holds the samples in C order (frame, row, column, sample) in a typed
// array of the decoded sample type (Uint8Array, Int8Array, Uint16Array,
// Int16Array, Uint32Array, Int32Array, or BigUint64Array/BigInt64Array for
// 8-byte samples). `decode` accepts any prefix of a file that ends at or after
// the boundary of the requested level; `info(prefix).available` tells the
// finest level a prefix holds.

export const MAGIC = "PCWV";
export const VERSION = 3;

export class WaveletError extends Error {
  constructor(message) {
    super(message);
    this.name = this.constructor.name;
  }
}
/** Bad magic, version or flags. */
export class UnsupportedError extends WaveletError {}
/** Data shorter than the header, the index or a needed chunk. */
export class TruncatedError extends WaveletError {}
/** CRC mismatch, inconsistent offsets, a stream overrun, values out of range... */
export class CorruptError extends WaveletError {}
/** A bad argument (e.g. a level the file does not have). */
export class InvalidInputError extends WaveletError {}

const FLAG_SIGNED = 1, FLAG_RCT = 2, FLAG_LOSSY = 4, FLAG_FRAMES = 8, FLAG_SAMPLES = 16;
const HEADER_SIZE = 40;
const ENTRY_SIZE = 16;

// ---------------------------------------------------------------- CRC-32

const CRC_TABLE = (() => {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();

export function crc32(bytes, start = 0, end = bytes.length) {
  let c = -1;
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

// ---------------------------------------------------------------- input

function asBytes(buffer) {
  if (buffer instanceof Uint8Array) return buffer;
  if (buffer instanceof ArrayBuffer || (typeof SharedArrayBuffer !== "undefined" && buffer instanceof SharedArrayBuffer)) {
    return new Uint8Array(buffer);
  }
  if (ArrayBuffer.isView(buffer)) return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  throw new InvalidInputError("wavelet: expected an ArrayBuffer or Uint8Array");
}

const u16 = (b, o) => b[o] | (b[o + 1] << 8);
const u32 = (b, o) => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
const i32 = (b, o) => b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24);

// ---------------------------------------------------------------- header and index

// The checks follow the order of the format's section 6, so that every
// decoder names the same error for the same file.
function parseHeader(bytes) {
  if (bytes.length < 5) throw new TruncatedError(`wavelet: ${bytes.length} bytes: shorter than the header`);
  if (bytes[0] !== 0x50 || bytes[1] !== 0x43 || bytes[2] !== 0x57 || bytes[3] !== 0x56) {
    throw new UnsupportedError("wavelet: bad magic (not a PCWV file)");
  }
  const version = bytes[4];
  if (version !== VERSION) throw new UnsupportedError(`wavelet: format version ${version}, this decoder reads ${VERSION}`);
  if (bytes.length < HEADER_SIZE) {
    throw new TruncatedError(`wavelet: ${bytes.length} bytes: the header needs ${HEADER_SIZE}`);
  }
  const flags = bytes[5];
  if (flags & ~31) throw new UnsupportedError(`wavelet: unknown header flags 0x${flags.toString(16)}`);
  if (u16(bytes, 10) !== 0) throw new UnsupportedError("wavelet: reserved header field is not 0");
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  const h = {
    version,
    flags,
    signed: !!(flags & FLAG_SIGNED),
    rct: !!(flags & FLAG_RCT),
    lossy: !!(flags & FLAG_LOSSY),
    frameAxis: !!(flags & FLAG_FRAMES),
    sampleAxis: !!(flags & FLAG_SAMPLES),
    bitsStored: bytes[6],
    itemSize: bytes[7],
    levels: bytes[8],
    samples: bytes[9],
    rows: u32(bytes, 12),
    columns: u32(bytes, 16),
    frames: u32(bytes, 20),
    quantStep: view.getFloat64(24, true),
    targetPsnr: view.getFloat32(32, true),
    reconOffset: view.getFloat32(36, true),
  };
  if (h.frames < 1 || h.frames > 1 << 20) throw new CorruptError(`wavelet: implausible frame count ${h.frames}`);
  h.indexEnd = HEADER_SIZE + ENTRY_SIZE * (h.levels + 1) * h.frames + 4;
  return h;
}

/** Checks 7 and 8 of section 6: the image description, once the CRC holds. */
function checkDescription(h) {
  const B = h.bitsStored;
  if (B < 1 || B > 16 || ![1, 2, 4, 8].includes(h.itemSize) || B > 8 * h.itemSize || h.samples < 1 ||
      h.rows < 1 || h.columns < 1) {
    throw new UnsupportedError(`wavelet: unsupported image description: ${B} bits stored, ${h.itemSize}-byte ` +
      `samples, ${h.samples} samples per pixel, ${h.rows}x${h.columns}`);
  }
  if (h.levels > 30) throw new CorruptError(`wavelet: ${h.levels} levels (at most 30)`);
  if (h.rct && h.samples !== 3) throw new CorruptError(`wavelet: RCT with ${h.samples} samples (needs 3)`);
  if (h.lossy && !(h.quantStep > 0 && Number.isFinite(h.quantStep) && Number.isFinite(h.reconOffset))) {
    throw new CorruptError(`wavelet: lossy file with quantiser step ${h.quantStep}, delta ${h.reconOffset}`);
  }
  if (!h.lossy && (h.quantStep !== 0 || h.targetPsnr !== 0 || h.reconOffset !== 0)) {
    throw new CorruptError("wavelet: lossless file with non-zero lossy parameters");
  }
  h.minValue = h.signed ? -(2 ** (B - 1)) : 0;
  h.maxValue = h.signed ? 2 ** (B - 1) - 1 : 2 ** B - 1;
  h.dtype = (h.signed ? "int" : "uint") + 8 * h.itemSize;
  const shapes = [[h.rows, h.columns]];
  for (let k = 1; k <= h.levels; k++) {
    const [r, c] = shapes[k - 1];
    shapes.push([Math.ceil(r / 2), Math.ceil(c / 2)]);
  }
  h.levelShapes = shapes;
}

function parseIndex(bytes, h) {
  if (bytes.length < h.indexEnd) {
    throw new TruncatedError(`wavelet: ${bytes.length} bytes: the level index ends at byte ${h.indexEnd}`);
  }
  const stored = u32(bytes, h.indexEnd - 4);
  const actual = crc32(bytes, 0, h.indexEnd - 4);
  if (stored !== actual) throw new CorruptError("wavelet: header/index CRC-32 mismatch");
  checkDescription(h);
  const L = h.levels, F = h.frames;
  const n = (L + 1) * F;
  const offset = new Float64Array(n), size = new Float64Array(n), crc = new Uint32Array(n);
  let end = h.indexEnd;
  for (let e = 0; e < n; e++) {
    const o = HEADER_SIZE + ENTRY_SIZE * e;
    const off = u32(bytes, o) + u32(bytes, o + 4) * 4294967296;
    if (off !== end) {
      throw new CorruptError(`wavelet: chunk ${e} at offset ${off}, expected ${end} (chunks must be contiguous)`);
    }
    offset[e] = off;
    size[e] = u32(bytes, o + 8);
    crc[e] = u32(bytes, o + 12);
    end = off + size[e];
  }
  // Entry e = (L - level) * F + frame.
  return { offset, size, crc, fileSize: end };
}

/** Index of the chunk of `frame` at `level`. */
const entryOf = (h, level, frame) => (h.levels - level) * h.frames + frame;

/**
 * Header and level index of a file or of any prefix holding at least the
 * header and index (`indexEnd` bytes).
 *
 * `levels[k].end` is the byte count a client needs to decode level k of every
 * frame (`levels` is ordered k = 0 .. L); `available` is the finest level the
 * given bytes hold (null if not even the coarsest).
 */
export function info(buffer) {
  const bytes = asBytes(buffer);
  const h = parseHeader(bytes);
  const idx = parseIndex(bytes, h);
  const chunks = [];
  for (let l = h.levels; l >= 0; l--) {
    for (let f = 0; f < h.frames; f++) {
      const e = entryOf(h, l, f);
      chunks.push({ frame: f, level: l, offset: idx.offset[e], size: idx.size[e], crc32: idx.crc[e] });
    }
  }
  const levels = [];
  let available = null;
  for (let k = 0; k <= h.levels; k++) {
    const e = entryOf(h, k, h.frames - 1);
    const end = idx.offset[e] + idx.size[e];
    const [rows, columns] = h.levelShapes[k];
    levels.push({ level: k, rows, columns, end });
    if (available === null && end <= bytes.length) available = k;
  }
  return {
    version: h.version,
    rows: h.rows,
    columns: h.columns,
    frames: h.frames,
    samples: h.samples,
    bitsStored: h.bitsStored,
    signed: h.signed,
    itemSize: h.itemSize,
    dtype: h.dtype,
    levelCount: h.levels,
    rct: h.rct,
    lossy: h.lossy,
    quantStep: h.quantStep,
    targetPsnr: h.targetPsnr,
    reconOffset: h.reconOffset,
    frameAxis: h.frameAxis,
    sampleAxis: h.sampleAxis,
    indexEnd: h.indexEnd,
    fileSize: idx.fileSize,
    levels,
    available,
    chunks,
  };
}

// ---------------------------------------------------------------- entropy decoder

const NQL = 30, NQP = 10, NGROUPS = 7;
const RUN_BASE = NGROUPS * NQL * NQP; // 2100
const RUNEND_BASE = RUN_BASE + NGROUPS * 15; // 2205
const MANT_BASE = RUNEND_BASE + NGROUPS; // 2212
const NTABLES = MANT_BASE + NGROUPS * 48 * 10; // 5572
const NSIGN = 6 * 27;
const MAG_LIMIT = 1 << 26;
const TOP = 1 << 24;

const INIT_C = (() => {
  const a = new Int32Array(NTABLES * 17);
  for (let t = 0; t < NTABLES; t++) for (let u = 0; u <= 16; u++) a[t * 17 + u] = 2047 * u;
  return a;
})();

function qlog(x) {
  if (x < 2) return x;
  const b = 32 - Math.clz32(x);
  return 2 * b - 2 + ((x >> (b - 2)) & 1);
}

/** Range decoder, adaptive tables and raw bit reader of one chunk. */
class ChunkCoder {
  constructor() {
    this.c = new Int32Array(NTABLES * 17);
    this.f = new Int32Array(NTABLES * 17);
    this.n = new Int32Array(NTABLES);
    this.sp = new Int32Array(NSIGN);
    this.sn = new Int32Array(NSIGN);
    this.buf = null;
    this.pos = 0;
    this.end = 0;
    this.range = 0;
    this.code = 0;
    this.rawStart = 0;
    this.rawLen = 0;
    this.bitPos = 0;
    this.mant = false;
  }

  start(buf, rcStart, rcLen, rawStart, rawLen, mant) {
    const used = (mant ? NTABLES : MANT_BASE) * 17;
    this.c.set(INIT_C.subarray(0, used));
    if (mant) this.f.set(INIT_C);
    this.n.fill(0);
    this.sp.fill(16352);
    this.sn.fill(0);
    this.mant = mant;
    this.buf = buf;
    this.end = rcStart + rcLen;
    let code = 0;
    for (let i = 0; i < 4; i++) code = code * 256 + (rcStart + i < this.end ? buf[rcStart + i] : 0);
    this.code = code;
    this.range = 0xffffffff;
    this.pos = rcStart + 4;
    this.rawStart = rawStart;
    this.rawLen = rawLen;
    this.bitPos = 0;
  }

  /**
   * Overrun checks (docs/wavelet-format.md 3.4): the range-coder stream may
   * be read up to 4 bytes past its end (those bytes are 0), not more. The raw
   * stream may not be read past its end at all: the reference encoder pads it
   * to a whole byte only, and the reference decoder rejects any read past it
   * (the document's "more than 4 bytes past" is looser than that).
   */
  checkOverrun() {
    if (this.pos > this.end + 4) throw new CorruptError("wavelet: range-coder stream overrun");
    if (this.bitPos > this.rawLen * 8) throw new CorruptError("wavelet: raw bit stream overrun");
  }

  normalize() {
    while (this.range < TOP) {
      this.range *= 256;
      const p = this.pos++;
      this.code = ((this.code << 8) | (p < this.end ? this.buf[p] : 0)) >>> 0;
    }
  }

  /** One symbol 0..15 of table t. */
  sym(t) {
    const c = this.c, base = t * 17;
    const r = this.range >>> 15;
    const code = this.code;
    let s = 0, lo = 0, hi = 0;
    if (!this.mant) {
      for (;;) {
        if (s === 15) { hi = r * 32768; break; }
        hi = r * (c[base + s + 1] + s + 1);
        if (code < hi) break;
        lo = hi;
        s++;
      }
    } else {
      const f = this.f;
      for (;;) {
        if (s === 15) { hi = r * 32768; break; }
        hi = r * (((c[base + s + 1] + f[base + s + 1]) >> 1) + s + 1);
        if (code < hi) break;
        lo = hi;
        s++;
      }
    }
    this.code = code - lo;
    this.range = hi - lo;
    if (this.range < TOP) this.normalize();
    // Adapt.
    const nn = this.n[t];
    const rate = nn < 16 ? 4 : nn < 48 ? 5 : nn < 128 ? 6 : nn < 384 ? 7 : 8;
    if (nn < 384) this.n[t] = nn + 1;
    const split = base + s;
    for (let u = base + 1; u <= split; u++) c[u] += (-c[u]) >> rate;
    for (let u = split + 1, e = base + 16; u < e; u++) c[u] += (32752 - c[u]) >> rate;
    if (this.mant) {
      const f = this.f;
      for (let u = base + 1; u <= split; u++) f[u] += (-f[u]) >> 3;
      for (let u = split + 1, e = base + 16; u < e; u++) f[u] += (32752 - f[u]) >> 3;
    }
    return s;
  }

  /** One binary decision with sign table si. */
  bit(si) {
    const p = this.sp[si];
    const bound = (this.range >>> 15) * (p + 32);
    let bit;
    if (this.code >= bound) {
      bit = 1;
      this.code -= bound;
      this.range -= bound;
    } else {
      bit = 0;
      this.range = bound;
    }
    if (this.range < TOP) this.normalize();
    const nn = this.sn[si];
    const rate = nn < 16 ? 4 : nn < 48 ? 5 : nn < 128 ? 6 : nn < 384 ? 7 : 8;
    if (nn < 384) this.sn[si] = nn + 1;
    this.sp[si] = p + (((bit ? 0 : 32704) - p) >> rate);
    return bit;
  }

  rawBit() {
    const bp = this.bitPos++;
    const i = bp >>> 3;
    if (i >= this.rawLen) return 0;
    return (this.buf[this.rawStart + i] >> (7 - (bp & 7))) & 1;
  }

  /** n raw bits (n may exceed 31), MSB first. */
  rawBits(n) {
    let v = 0;
    while (n > 0) {
      const bp = this.bitPos;
      const i = bp >>> 3;
      const avail = 8 - (bp & 7);
      const take = n < avail ? n : avail;
      const byte = i < this.rawLen ? this.buf[this.rawStart + i] : 0;
      v = v * (1 << take) + ((byte >> (avail - take)) & ((1 << take) - 1));
      this.bitPos = bp + take;
      n -= take;
    }
    return v;
  }

  /** Magnitude M of one value: class symbol of table t, escape, bits below the class (3.4, 3.6). */
  magnitude(t, k, g) {
    let q = this.sym(t);
    if (q === 15) {
      while (this.rawBit()) {
        if (++q > 47) throw new CorruptError("wavelet: escape class above 47");
      }
    }
    if (q === 0) return 0;
    const qq = k > 0 ? q - 1 : q;
    let top, nr;
    if (qq < 2) {
      top = qq;
      nr = k;
    } else {
      const h = qq >> 1;
      top = (2 + (qq & 1)) * (1 << (h - 1));
      nr = k + h - 1;
    }
    if (top * (1 << k) >= MAG_LIMIT) throw new CorruptError("wavelet: magnitude at or above 2^26");
    let R = 0;
    if (nr > 0) {
      if (this.mant) {
        const w = nr < 4 ? nr : 4;
        const u = this.sym(MANT_BASE + (g * 48 + (qq < 47 ? qq : 47)) * 10 + (k < 9 ? k : 9));
        if (u >= 1 << w) throw new CorruptError("wavelet: mantissa symbol out of range");
        R = u * (1 << (nr - w)) + (nr > w ? this.rawBits(nr - w) : 0);
      } else {
        R = this.rawBits(nr);
      }
    }
    const M = top * (1 << k) + R;
    if (M >= MAG_LIMIT) throw new CorruptError("wavelet: magnitude at or above 2^26");
    return M;
  }
}

// Scratch arrays shared between bands (padded magnitudes and signs).
let scratchMag = new Int32Array(0);
let scratchSgn = new Int8Array(0);
let scratchQp = new Uint8Array(0);

function scratch(padded, plain) {
  if (scratchMag.length < padded) {
    scratchMag = new Int32Array(padded);
    scratchSgn = new Int8Array(padded);
  }
  if (scratchQp.length < plain) scratchQp = new Uint8Array(plain);
  scratchMag.fill(0, 0, padded);
  scratchSgn.fill(0, 0, padded);
}

/** LL band of the coarsest level (group 6, MED prediction, raw signs). */
function decodeLL(dec, rows, cols, out) {
  if (rows === 0 || cols === 0) return;
  const PW = cols + 3;
  scratch((rows + 2) * PW, 0);
  const mag = scratchMag;
  const g = 6;
  for (let i = 0; i < rows; i++) {
    const rowP = (i + 2) * PW + 2;
    const rowO = i * cols;
    let j = 0;
    while (j < cols) {
      const p = rowP + j;
      const local = 2 * (mag[p - 1] + mag[p - PW]) + mag[p - PW - 1] + mag[p - PW + 1] + ((mag[p - 2] + mag[p - 2 * PW]) >> 1);
      if (local === 0) {
        // Zero context (qp is always 0 in the LL band): a run of zero residuals.
        let n = 1;
        while (n < 15 && j + n < cols) {
          const pp = p + n;
          if ((mag[pp - PW - 1] | mag[pp - PW] | mag[pp - PW + 1]) !== 0 || mag[pp - 2 * PW] > 1) break;
          n++;
        }
        const run = dec.sym(RUN_BASE + g * 15 + n - 1);
        if (run > n) throw new CorruptError("wavelet: zero run longer than its quiet span");
        for (let t = 0; t < run; t++, j++) out[rowO + j] = medPredict(out, i, j, cols);
        if (run < n) {
          const M = dec.magnitude(RUNEND_BASE + g, 0, g);
          if (M === 0) throw new CorruptError("wavelet: zero value ends a zero run");
          const neg = dec.rawBit();
          mag[rowP + j] = M;
          out[rowO + j] = medPredict(out, i, j, cols) + (neg ? -M : M);
          j++;
        }
      } else {
        const ql = qlog(local) < NQL - 1 ? qlog(local) : NQL - 1;
        const k = ql > 13 ? (ql - 13) >> 1 : 0;
        const M = dec.magnitude((g * NQL + ql) * NQP, k, g);
        let v = 0;
        if (M !== 0) v = dec.rawBit() ? -M : M;
        mag[p] = M;
        out[rowO + j] = medPredict(out, i, j, cols) + v;
        j++;
      }
    }
  }
  dec.checkOverrun();
}

function medPredict(x, i, j, cols) {
  const o = i * cols + j;
  if (i === 0) return j === 0 ? 0 : x[o - 1];
  if (j === 0) return x[o - cols];
  const a = x[o - 1], b = x[o - cols], c = x[o - cols - 1];
  const mx = a > b ? a : b, mn = a > b ? b : a;
  if (c >= mx) return mn;
  if (c <= mn) return mx;
  return a + b - c;
}

/**
 * One detail band (groups 0-5). `ctx` gives the parent band and the cross
 * bands (HL for LH; HL and LH for HH) of the same sample.
 */
function decodeDetail(dec, g, o, rows, cols, out, ctx) {
  if (rows === 0 || cols === 0) return;
  const PW = cols + 3;
  scratch((rows + 2) * PW, rows * cols);
  const mag = scratchMag, sgn = scratchSgn, qpa = scratchQp;
  // Precompute qp = min(qlog(2P + X) >> 1, NQP - 1) for every position.
  const par = ctx.parent, pr = ctx.pr, pc = ctx.pc;
  const hasParent = par !== null && pr > 0 && pc > 0;
  const hl = o >= 1 ? ctx.hl : null, hlr = ctx.hlr, hlc = ctx.hlc;
  const lh = o === 2 ? ctx.lh : null, lhr = ctx.lhr, lhc = ctx.lhc;
  for (let i = 0; i < rows; i++) {
    const prow = hasParent ? (i >> 1 < pr - 1 ? i >> 1 : pr - 1) * pc : 0;
    for (let j = 0; j < cols; j++) {
      let other = 0;
      if (hasParent) {
        const v = par[prow + (j >> 1 < pc - 1 ? j >> 1 : pc - 1)];
        other = 2 * (v < 0 ? -v : v);
      }
      if (hl !== null && i < hlr && j < hlc) {
        const v = hl[i * hlc + j];
        other += v < 0 ? -v : v;
      }
      if (lh !== null && i < lhr && j < lhc) {
        const v = lh[i * lhc + j];
        other += v < 0 ? -v : v;
      }
      let qp = 0;
      if (other >= 2) {
        qp = qlog(other) >> 1;
        if (qp > NQP - 1) qp = NQP - 1;
      }
      qpa[i * cols + j] = qp;
    }
  }
  const signBase = g * 27 + 13; // ((g*3 + w+1)*3 + h+1)*3 + d+1 = g*27 + 9w + 3h + d + 13
  for (let i = 0; i < rows; i++) {
    const rowP = (i + 2) * PW + 2;
    const rowO = i * cols;
    let j = 0;
    while (j < cols) {
      const p = rowP + j;
      const local = 2 * (mag[p - 1] + mag[p - PW]) + mag[p - PW - 1] + mag[p - PW + 1] + ((mag[p - 2] + mag[p - 2 * PW]) >> 1);
      const qp = qpa[rowO + j];
      if (local === 0 && qp === 0) {
        let n = 1;
        while (n < 15 && j + n < cols) {
          const pp = p + n;
          if ((mag[pp - PW - 1] | mag[pp - PW] | mag[pp - PW + 1]) !== 0 || mag[pp - 2 * PW] > 1 || qpa[rowO + j + n] !== 0) break;
          n++;
        }
        const run = dec.sym(RUN_BASE + g * 15 + n - 1);
        if (run > n) throw new CorruptError("wavelet: zero run longer than its quiet span");
        j += run; // out, mag, sgn are already 0
        if (run < n) {
          const M = dec.magnitude(RUNEND_BASE + g, 0, g);
          if (M === 0) throw new CorruptError("wavelet: zero value ends a zero run");
          const q = rowP + j;
          const neg = dec.bit(signBase + 9 * sgn[q - 1] + 3 * sgn[q - PW] + sgn[q - PW - 1]);
          mag[q] = M;
          sgn[q] = neg ? -1 : 1;
          out[rowO + j] = neg ? -M : M;
          j++;
        }
      } else {
        const ql0 = qlog(local);
        const ql = ql0 < NQL - 1 ? ql0 : NQL - 1;
        const k = ql > 13 ? (ql - 13) >> 1 : 0;
        const M = dec.magnitude((g * NQL + ql) * NQP + qp, k, g);
        if (M !== 0) {
          const neg = dec.bit(signBase + 9 * sgn[p - 1] + 3 * sgn[p - PW] + sgn[p - PW - 1]);
          mag[p] = M;
          sgn[p] = neg ? -1 : 1;
          out[rowO + j] = neg ? -M : M;
        }
        j++;
      }
    }
  }
  dec.checkOverrun();
}

// ---------------------------------------------------------------- value tables (3.7)

function parseValueTables(chunk, pos, h) {
  const tables = new Array(h.samples).fill(null);
  for (let s = 0; s < h.samples; s++) {
    if (pos + 8 > chunk.length) throw new CorruptError("wavelet: value table runs past its chunk");
    const first = i32(chunk, pos);
    const span = u32(chunk, pos + 4);
    pos += 8;
    if (span === 0) continue;
    const nbytes = Math.ceil(span / 8);
    if (pos + nbytes > chunk.length) throw new CorruptError("wavelet: value table runs past its chunk");
    if (first < h.minValue || first + span - 1 > h.maxValue) {
      throw new CorruptError(`wavelet: value table ${first}..${first + span - 1} outside the bits stored`);
    }
    const bm = chunk.subarray(pos, pos + nbytes);
    pos += nbytes;
    const bit = (b) => (bm[b >> 3] >> (b & 7)) & 1;
    if (!bit(0) || !bit(span - 1)) throw new CorruptError("wavelet: value table does not start and end with a set bit");
    if (span & 7 && bm[nbytes - 1] >> (span & 7)) throw new CorruptError("wavelet: value table has bits set past its span");
    let n = 0;
    for (let b = 0; b < nbytes; b++) {
      let x = bm[b];
      while (x) { n++; x &= x - 1; }
    }
    const values = new Int32Array(n);
    for (let b = 0, i = 0; b < span; b++) if (bit(b)) values[i++] = first + b;
    tables[s] = values;
  }
  return { tables, pos };
}

// ---------------------------------------------------------------- 5/3 inverse (2)

/**
 * Inverse 2-D 5/3 level: LL (ceil(r/2) x ceil(c/2)), HL, LH, HH -> r x c.
 */
function inverse53(ll, hl, lh, hh, r, c) {
  const rh = (r + 1) >> 1, rd = r >> 1, cw = (c + 1) >> 1, cd = c >> 1;
  // Horizontal: rows of L = [LL | HL] and of H = [LH | HH].
  const L = new Int32Array(rh * c), H = new Int32Array(rd * c);
  for (let i = 0; i < rh; i++) inverseRow(ll, i * cw, hl, i * cd, L, i * c, c);
  for (let i = 0; i < rd; i++) inverseRow(lh, i * cw, hh, i * cd, H, i * c, c);
  // Vertical, vectorised across columns.
  const out = new Int32Array(r * c);
  if (r === 1) {
    out.set(L);
    return out;
  }
  // Even rows: x[2i] = s[i] - floor((d[i-1] + d[i] + 2) / 4).
  for (let i = 0; i < rh; i++) {
    const a = (i > 0 ? i - 1 : 0) * c, b = (i < rd ? i : rd - 1) * c, s = i * c, o = 2 * i * c;
    for (let j = 0; j < c; j++) out[o + j] = L[s + j] - ((H[a + j] + H[b + j] + 2) >> 2);
  }
  // Odd rows: x[2i+1] = d[i] + floor((x[2i] + x[2i+2]) / 2).
  for (let i = 0; i < rd; i++) {
    const e0 = 2 * i * c, e1 = (2 * i + 2 < r ? 2 * i + 2 : 2 * i) * c, d = i * c, o = (2 * i + 1) * c;
    for (let j = 0; j < c; j++) out[o + j] = H[d + j] + ((out[e0 + j] + out[e1 + j]) >> 1);
  }
  return out;
}

function inverseRow(s, so, d, dO, x, xo, n) {
  if (n === 1) {
    x[xo] = s[so];
    return;
  }
  const ns = (n + 1) >> 1, nd = n >> 1;
  let dPrev = d[dO];
  for (let i = 0; i < ns; i++) {
    const dCur = d[dO + (i < nd ? i : nd - 1)];
    x[xo + 2 * i] = s[so + i] - ((dPrev + dCur + 2) >> 2);
    dPrev = dCur;
  }
  for (let i = 0; i < nd; i++) {
    const e1 = 2 * i + 2 < n ? x[xo + 2 * i + 2] : x[xo + 2 * i];
    x[xo + 2 * i + 1] = d[dO + i] + ((x[xo + 2 * i] + e1) >> 1);
  }
}

// ---------------------------------------------------------------- 9/7 inverse (5)

// PyWavelets' bior4.4 synthesis filters (rec_lo, rec_hi), as float64.
const REC_LO = new Float64Array([0, -0.06453888262869706, -0.04068941760916406, 0.41809227322161724, 0.7884856164055829,
  0.41809227322161724, -0.04068941760916406, -0.06453888262869706, 0, 0]);
const REC_HI = new Float64Array([0, -0.03782845550726404, -0.023849465019556843, 0.11062440441843718, 0.37740285561283066,
  -0.8526986790088938, 0.37740285561283066, 0.11062440441843718, -0.023849465019556843, -0.03782845550726404]);

/**
 * PyWavelets' periodization synthesis of one line: a, d of length N at
 * stride `st` -> x of length 2N: x[2m+p] = sum_j lo[2j+p] a[(m+2-j) mod N]
 * + sum_j hi[2j+p] d[(m+2-j) mod N], summed in that order (as pywt does).
 */
function idwtLine(a, ao, d, dO, st, N, x, xo, xst) {
  for (let m = 0; m < N; m++) {
    let e = 0, od = 0;
    for (let j = 0; j < 5; j++) {
      const v = a[ao + ((((m + 2 - j) % N) + N) % N) * st];
      e += REC_LO[2 * j] * v;
      od += REC_LO[2 * j + 1] * v;
    }
    for (let j = 0; j < 5; j++) {
      const v = d[dO + ((((m + 2 - j) % N) + N) % N) * st];
      e += REC_HI[2 * j] * v;
      od += REC_HI[2 * j + 1] * v;
    }
    x[xo + 2 * m * xst] = e;
    x[xo + (2 * m + 1) * xst] = od;
  }
}

/**
 * pywt.idwt2((LL, (cH, cV, cD)), "bior4.4", "periodization") of h x w bands,
 * cropped to r x c. HL = cV, LH = cH, HH = cD.
 */
function inverse97(ll, hl, lh, hh, h, w, r, c) {
  const W2 = 2 * w;
  // Axis 1 first: [LL, HL] -> A (h x 2w), [LH, HH] -> D (h x 2w).
  const A = new Float64Array(h * W2), D = new Float64Array(h * W2);
  for (let i = 0; i < h; i++) {
    idwtLine(ll, i * w, hl, i * w, 1, w, A, i * W2, 1);
    idwtLine(lh, i * w, hh, i * w, 1, w, D, i * W2, 1);
  }
  // Then axis 0: [A, D] -> 2h x 2w, keeping the first r rows and c columns.
  const out = new Float64Array(r * c);
  const col = new Float64Array(2 * h);
  for (let j = 0; j < c; j++) {
    idwtLine(A, j, D, j, W2, h, col, 0, 1);
    for (let i = 0; i < r; i++) out[i * c + j] = col[i];
  }
  return out;
}

// ---------------------------------------------------------------- frames

function bandShapes(h, dl) {
  // Shapes of HL, LH, HH of decomposition level dl (1..L).
  const [r, c] = h.levelShapes[dl - 1];
  const hr = Math.ceil(r / 2), hc = Math.ceil(c / 2);
  if (h.lossy) return [[hr, hc], [hr, hc], [hr, hc]];
  const lr = Math.floor(r / 2), lc = Math.floor(c / 2);
  return [[hr, lc], [lr, hc], [lr, lc]];
}

function chunkBytes(bytes, h, idx, level, frame) {
  const e = entryOf(h, level, frame);
  const off = idx.offset[e], size = idx.size[e];
  if (off + size > bytes.length) {
    throw new TruncatedError(`wavelet: ${bytes.length} bytes: the chunk of frame ${frame} at level ${level} ends at byte ${off + size}`);
  }
  const chunk = bytes.subarray(off, off + size);
  if (crc32(chunk) !== idx.crc[e]) throw new CorruptError(`wavelet: CRC-32 mismatch in the chunk of frame ${frame} at level ${level}`);
  return chunk;
}

/** Decodes the chunks of one frame down to `level`; returns [planes (per sample), value tables]. */
function decodeFrame(bytes, h, idx, frame, level, dec) {
  const L = h.levels, S = h.samples;
  const ll = new Array(S);
  const det = []; // det[dl][o][s]
  let tables = new Array(S).fill(null);
  for (let l = L; l >= level; l--) {
    const chunk = chunkBytes(bytes, h, idx, l, frame);
    if (chunk.length < 5) throw new CorruptError(`wavelet: chunk of frame ${frame} at level ${l} is too short`);
    const cflags = chunk[0];
    if (cflags & ~3) throw new CorruptError(`wavelet: unknown chunk flags 0x${cflags.toString(16)}`);
    let pos = 1;
    if (cflags & 2) {
      if (l !== L || h.lossy) throw new CorruptError("wavelet: value tables outside a lossless level-L chunk");
      ({ tables, pos } = parseValueTables(chunk, pos, h));
    }
    if (pos + 4 > chunk.length) throw new CorruptError("wavelet: chunk too short for its range-coder length");
    const N = u32(chunk, pos);
    pos += 4;
    if (pos + N > chunk.length) throw new CorruptError("wavelet: range-coder stream runs past its chunk");
    dec.start(chunk, pos, N, pos + N, chunk.length - pos - N, (cflags & 1) !== 0);
    if (l === L) {
      const [r, c] = h.levelShapes[L];
      for (let s = 0; s < S; s++) {
        ll[s] = new Int32Array(r * c);
        decodeLL(dec, r, c, ll[s]);
      }
    } else {
      const dl = l + 1;
      const shapes = bandShapes(h, dl);
      const pshapes = dl + 1 <= L ? bandShapes(h, dl + 1) : null;
      const bands = [[], [], []];
      det[dl] = bands;
      for (let s = 0; s < S; s++) {
        for (let o = 0; o < 3; o++) {
          const [r, c] = shapes[o];
          const out = new Int32Array(r * c);
          const ctx = {
            parent: pshapes ? det[dl + 1][o][s] : null,
            pr: pshapes ? pshapes[o][0] : 0,
            pc: pshapes ? pshapes[o][1] : 0,
            hl: bands[0][s] || null, hlr: shapes[0][0], hlc: shapes[0][1],
            lh: bands[1][s] || null, lhr: shapes[1][0], lhc: shapes[1][1],
          };
          decodeDetail(dec, o + (dl < L ? 3 : 0), o, r, c, out, ctx);
          bands[o][s] = out;
        }
      }
    }
  }
  // Reconstruct every sample plane down to `level`.
  const planes = new Array(S);
  for (let s = 0; s < S; s++) {
    if (!h.lossy) {
      let cur = ll[s];
      for (let dl = L; dl > level; dl--) {
        const [r, c] = h.levelShapes[dl - 1];
        cur = inverse53(cur, det[dl][0][s], det[dl][1][s], det[dl][2][s], r, c);
      }
      planes[s] = cur;
    } else {
      const step = h.quantStep, delta = h.reconOffset;
      const deq = (q) => {
        const x = new Float64Array(q.length);
        for (let i = 0; i < q.length; i++) {
          const v = q[i];
          x[i] = v > 0 ? (v + delta) * step : v < 0 ? -((-v + delta) * step) : 0;
        }
        return x;
      };
      let cur = deq(ll[s]);
      for (let dl = L; dl > level; dl--) {
        const [r, c] = h.levelShapes[dl - 1];
        const [bh, bw] = h.levelShapes[dl];
        cur = inverse97(cur, deq(det[dl][0][s]), deq(det[dl][1][s]), deq(det[dl][2][s]), bh, bw, r, c);
      }
      const scale = 2 ** level;
      const out = new Int32Array(cur.length);
      for (let i = 0; i < cur.length; i++) out[i] = rint(level > 0 ? cur[i] / scale : cur[i]);
      planes[s] = out;
    }
  }
  return [planes, tables];
}

/** Round half to even (numpy.rint). */
function rint(x) {
  const r = Math.round(x);
  return r - x === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

const ARRAYS = {
  int8: Int8Array, uint8: Uint8Array, int16: Int16Array, uint16: Uint16Array,
  int32: Int32Array, uint32: Uint32Array, int64: globalThis.BigInt64Array, uint64: globalThis.BigUint64Array,
};

/**
 * Decodes `level` (0 = full resolution) of every frame. `buffer` may be any
 * prefix of the file that holds that level (`info(buffer).levels[level].end`
 * bytes). Throws a WaveletError subclass on truncated or corrupt data.
 */
export function decode(buffer, level = 0) {
  const bytes = asBytes(buffer);
  const h = parseHeader(bytes);
  const idx = parseIndex(bytes, h);
  if (!Number.isInteger(level) || level < 0 || level > h.levels) {
    throw new InvalidInputError(`wavelet: level ${level}: this file has levels 0..${h.levels}`);
  }
  const needEnd = idx.offset[entryOf(h, level, h.frames - 1)] + idx.size[entryOf(h, level, h.frames - 1)];
  if (bytes.length < needEnd) {
    throw new TruncatedError(`wavelet: ${bytes.length} bytes: level ${level} needs the first ${needEnd} bytes`);
  }
  const [rows, columns] = h.levelShapes[level];
  const S = h.samples, F = h.frames, plane = rows * columns;
  const total = F * plane * S;
  const Arr = ARRAYS[h.dtype];
  if (!Arr) throw new UnsupportedError(`wavelet: ${h.dtype} samples are not supported here`);
  const big = h.itemSize === 8;
  const data = new Arr(total);
  const target = big ? new Int32Array(total) : data;
  const lo = h.minValue, hi = h.maxValue;
  const dec = new ChunkCoder();
  for (let f = 0; f < F; f++) {
    const [planes, tables] = decodeFrame(bytes, h, idx, f, level, dec);
    if (h.rct) {
      const [Y, Cb, Cr] = planes;
      for (let i = 0; i < plane; i++) {
        const g = Y[i] - ((Cb[i] + Cr[i]) >> 2);
        planes[0][i] = Cr[i] + g; // R
        planes[2][i] = Cb[i] + g; // B
        planes[1][i] = g; // G
      }
    }
    const base = f * plane * S;
    for (let s = 0; s < S; s++) {
      const p = planes[s], table = tables[s];
      if (table) {
        const n = table.length;
        for (let i = 0; i < plane; i++) {
          let v = p[i];
          if (v < 0 || v >= n) {
            if (level === 0) throw new CorruptError(`wavelet: index ${v} outside the value table of sample ${s} (${n} values)`);
            v = v < 0 ? 0 : n - 1;
          }
          target[base + i * S + s] = table[v];
        }
      } else if (level === 0 && !h.lossy) {
        for (let i = 0; i < plane; i++) {
          const v = p[i];
          if (v < lo || v > hi) throw new CorruptError(`wavelet: value ${v} outside the ${h.bitsStored}-bit range`);
          target[base + i * S + s] = v;
        }
      } else {
        for (let i = 0; i < plane; i++) {
          const v = p[i];
          target[base + i * S + s] = v < lo ? lo : v > hi ? hi : v;
        }
      }
    }
  }
  if (big) for (let i = 0; i < total; i++) data[i] = BigInt(target[i]);
  const shape = [];
  if (h.frameAxis) shape.push(F);
  shape.push(rows, columns);
  if (h.sampleAxis) shape.push(S);
  return {
    rows, columns, frames: F, samples: S, level,
    dtype: h.dtype, shape, data,
    bitsStored: h.bitsStored, signed: h.signed, lossy: h.lossy, rct: h.rct,
    fullRows: h.rows, fullColumns: h.columns, levels: h.levels,
  };
}
