/**
 * Teach a model new classes: a linear head on its frozen features, fitted exactly as cifarkit's Python side
 * fits it (src/cifarkit/teach.py, which documents the method): standardised features; with 3 or more examples in
 * every class a class-balanced, L2-penalised softmax regression by full-batch L-BFGS from zero (deterministic: the
 * same head on every run), its penalty and a temperature picked on every 5th example of each class when every
 * class has 5 or more; with fewer, the nearest class mean. A head is plain JSON (`cifarkit-head`, version 1),
 * tied to the model by the fingerprint of its features.
 */

import { CifarkitError } from "./errors.js";

export const HEAD_FORMAT = "cifarkit-head";
export const HEAD_VERSION = 1;
export const MAX_CLASSES = 100;
export const MAX_LABEL_LENGTH = 100;
const MIN_PER_CLASS_FOR_SOFTMAX = 3;
const MIN_PER_CLASS_TO_HOLD_OUT = 5;
const HOLD_OUT_EVERY = 5;
const REGULARIZATIONS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0];
const DEFAULT_REGULARIZATION = 1e-2;
const MAX_ITERATIONS = 500;
// the fit stops when no gradient entry exceeds this, or the objective moves by less than CHANGE_TOLERANCE
const GRADIENT_TOLERANCE = 1e-6;
const CHANGE_TOLERANCE = 1e-10;
const SCALE_FLOOR = 1e-6;

/** A taught head: what `teach` returns and `loadHead` reads (the same JSON as `cifarkit teach` writes). */
export interface Head {
  format: typeof HEAD_FORMAT;
  version: number;
  model: { fingerprint: string; feature_dim: number };
  labels: string[];
  examples: Record<string, number>;
  standardize: { mean: number[]; scale: number[] };
  method: "softmax" | "nearest-class-mean";
  weights: number[][];
  bias: number[];
  temperature: number;
  regularization: number | null;
  held_out: { images: number; accuracy: number; log_loss: number } | null;
}

/** Examples that cannot teach a head, or a head that cannot be used. */
export class TeachError extends CifarkitError {}

export interface TeachProgress {
  /** fits done, of `total` (one per candidate penalty, then the final one) */
  done: number;
  total: number;
}

export function checkLabels(labels: readonly unknown[]): void {
  const names = [...new Set(labels)];
  if (names.length < 2) {
    throw new TeachError(`teaching needs at least 2 classes, got ${names.length}; add pictures of another class`);
  }
  if (names.length > MAX_CLASSES) throw new TeachError(`teaching takes at most ${MAX_CLASSES} classes, got ${names.length}`);
  for (const name of names) {
    if (typeof name !== "string" || !name.trim() || name.length > MAX_LABEL_LENGTH) {
      throw new TeachError(`class names must be non-empty text of at most ${MAX_LABEL_LENGTH} characters, ` +
                           `got ${JSON.stringify(name)}`);
    }
  }
}

/** Python's sorted() order for names: by code point. */
function byCodePoint(a: string, b: string): number {
  const x = [...a].map((c) => c.codePointAt(0)!), y = [...b].map((c) => c.codePointAt(0)!);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
  return x.length - y.length;
}

type Matrix = Float64Array[];

function logits(z: Matrix, w: Float64Array, b: Float64Array, k: number, d: number): Float64Array[] {
  return z.map((row) => {
    const out = new Float64Array(k);
    for (let c = 0; c < k; c++) {
      let s = b[c]!;
      for (let j = 0; j < d; j++) s += w[c * d + j]! * row[j]!;
      out[c] = s;
    }
    return out;
  });
}

function logSoftmax(row: Float64Array, temperature = 1): Float64Array {
  let max = -Infinity;
  for (const v of row) max = Math.max(max, v / temperature);
  let sum = 0;
  for (const v of row) sum += Math.exp(v / temperature - max);
  const log = Math.log(sum);
  return row.map((v) => v / temperature - max - log);
}

function logLoss(rows: Float64Array[], y: number[], temperature = 1): number {
  let total = 0;
  rows.forEach((row, i) => { total -= logSoftmax(row, temperature)[y[i]!]!; });
  return total / rows.length;
}

/** Class-balanced, L2-penalised softmax regression by full-batch L-BFGS from zero. The features live in one
 * flat row-major array, so the two passes over them per evaluation run over contiguous memory. */
function softmaxFit(z: Matrix, y: number[], k: number, regularization: number): { w: Float64Array; b: Float64Array } {
  const n = z.length, d = z[0]!.length;
  const flat = new Float64Array(n * d);
  z.forEach((row, i) => flat.set(row, i * d));
  const counts = new Array<number>(k).fill(0);
  for (const c of y) counts[c]! += 1;
  const weightSum = y.reduce((a, c) => a + n / (k * counts[c]!), 0);
  const share = Float64Array.from(y, (c) => n / (k * counts[c]!) / weightSum);
  const size = k * d + k;
  const scores = new Float64Array(k);
  const objective = (x: Float64Array): [number, Float64Array] => {
    const grad = new Float64Array(size);
    let value = 0;
    for (let i = 0; i < n; i++) {
      const offset = i * d;
      let max = -Infinity;
      for (let c = 0; c < k; c++) {
        let s = x[k * d + c]!;
        const row = c * d;
        for (let j = 0; j < d; j++) s += x[row + j]! * flat[offset + j]!;
        scores[c] = s;
        if (s > max) max = s;
      }
      let sum = 0;
      for (let c = 0; c < k; c++) sum += Math.exp(scores[c]! - max);
      const log = Math.log(sum) + max;
      value -= share[i]! * (scores[y[i]!]! - log);
      for (let c = 0; c < k; c++) {
        const delta = share[i]! * (Math.exp(scores[c]! - log) - (c === y[i] ? 1 : 0));
        grad[k * d + c]! += delta;
        const row = c * d;
        for (let j = 0; j < d; j++) grad[row + j]! += delta * flat[offset + j]!;
      }
    }
    for (let j = 0; j < k * d; j++) {
      value += 0.5 * regularization * x[j]! * x[j]!;
      grad[j]! += regularization * x[j]!;
    }
    return [value, grad];
  };
  const x = lbfgs(objective, new Float64Array(size));
  return { w: x.slice(0, k * d), b: x.slice(k * d) };
}

const dot = (a: Float64Array, b: Float64Array) => { let s = 0; for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!; return s; };

/** Limited-memory BFGS (two-loop recursion, 10 pairs) with a backtracking Armijo line search: deterministic. */
export function lbfgs(f: (x: Float64Array) => [number, Float64Array], x0: Float64Array,
                      maxIterations = MAX_ITERATIONS): Float64Array {
  let x: Float64Array<ArrayBuffer> = x0.slice();
  let [value, grad] = f(x);
  const s: Float64Array[] = [], yv: Float64Array[] = [];
  for (let iteration = 0; iteration < maxIterations; iteration++) {
    if (grad.reduce((m, g) => Math.max(m, Math.abs(g)), 0) <= GRADIENT_TOLERANCE) break;
    const q = grad.slice();
    const alpha: number[] = [];
    for (let i = s.length - 1; i >= 0; i--) {
      const a = dot(s[i]!, q) / dot(yv[i]!, s[i]!);
      alpha[i] = a;
      for (let j = 0; j < q.length; j++) q[j]! -= a * yv[i]![j]!;
    }
    const gamma = s.length ? dot(s[s.length - 1]!, yv[yv.length - 1]!) / dot(yv[yv.length - 1]!, yv[yv.length - 1]!)
      : Math.min(1, 1 / grad.reduce((m, g) => m + Math.abs(g), 0));
    for (let j = 0; j < q.length; j++) q[j]! *= gamma;
    for (let i = 0; i < s.length; i++) {
      const beta = dot(yv[i]!, q) / dot(yv[i]!, s[i]!);
      for (let j = 0; j < q.length; j++) q[j]! += s[i]![j]! * (alpha[i]! - beta);
    }
    const direction = q.map((v) => -v);
    const slope = dot(grad, direction);
    if (slope >= 0) break;  // not a descent direction: at the optimum, to rounding
    let step = 1, next: Float64Array | null = null, nextValue = value, nextGrad = grad;
    for (let tries = 0; tries < 60; tries++) {
      const candidate = x.map((v, j) => v + step * direction[j]!);
      const [cv, cg] = f(candidate);
      if (cv <= value + 1e-4 * step * slope) {
        next = candidate; nextValue = cv; nextGrad = cg;
        break;
      }
      step /= 2;
    }
    if (next === null) break;
    const sk = next.map((v, j) => v - x[j]!), yk = nextGrad.map((v, j) => v - grad[j]!);
    if (dot(sk, yk) > 1e-12) {
      s.push(sk); yv.push(yk);
      if (s.length > 10) { s.shift(); yv.shift(); }
    }
    const change = Math.abs(nextValue - value);
    x = next as Float64Array<ArrayBuffer>; value = nextValue; grad = nextGrad;
    if (change < CHANGE_TOLERANCE) break;
  }
  return x;
}

function fitTemperature(rows: Float64Array[], y: number[]): number {
  let lo = Math.log(0.05), hi = Math.log(20);
  const ratio = (Math.sqrt(5) - 1) / 2;
  let a = hi - ratio * (hi - lo), b = lo + ratio * (hi - lo);
  let fa = logLoss(rows, y, Math.exp(a)), fb = logLoss(rows, y, Math.exp(b));
  for (let i = 0; i < 60; i++) {
    if (fa <= fb) {
      hi = b; b = a; fb = fa; a = hi - ratio * (hi - lo); fa = logLoss(rows, y, Math.exp(a));
    } else {
      lo = a; a = b; fa = fb; b = lo + ratio * (hi - lo); fb = logLoss(rows, y, Math.exp(b));
    }
  }
  return Math.exp((lo + hi) / 2);
}

/** Every 5th example of each class, in the order given. */
export function heldOutMask(y: number[]): boolean[] {
  const seen = new Map<number, number>();
  return y.map((c) => {
    const count = (seen.get(c) ?? 0) + 1;
    seen.set(c, count);
    return count % HOLD_OUT_EVERY === 0;
  });
}

/** Fit a head for `labels` from their features (one row of D numbers each). */
export function fitHead(features: ArrayLike<number>[], labels: string[], fingerprint: string,
                        onProgress?: (progress: TeachProgress) => void): Head {
  checkLabels(labels);
  if (features.length !== labels.length) throw new TeachError("features and labels differ in number");
  const names = [...new Set(labels)].sort(byCodePoint);
  const index = new Map(names.map((name, k) => [name, k]));
  const y = labels.map((name) => index.get(name)!);
  const k = names.length, n = features.length, d = features[0]!.length;
  const x = features.map((row) => Float64Array.from(row));
  if (x.some((row) => row.length !== d || row.some((v) => !Number.isFinite(v)))) {
    throw new TeachError("the model gave non-finite or ragged features; it cannot be taught");
  }
  const mean = new Float64Array(d), scale = new Float64Array(d);
  for (const row of x) for (let j = 0; j < d; j++) mean[j]! += row[j]! / n;
  for (const row of x) for (let j = 0; j < d; j++) scale[j]! += (row[j]! - mean[j]!) ** 2 / n;
  for (let j = 0; j < d; j++) scale[j] = Math.max(Math.sqrt(scale[j]!), SCALE_FLOOR);
  const z = x.map((row) => row.map((v, j) => (v - mean[j]!) / scale[j]!));
  const counts = names.map((_, c) => y.filter((v) => v === c).length);
  const head = {
    format: HEAD_FORMAT, version: HEAD_VERSION, model: { fingerprint, feature_dim: d }, labels: names,
    examples: Object.fromEntries(names.map((name, c) => [name, counts[c]!])),
    standardize: { mean: Array.from(mean), scale: Array.from(scale) },
  } as const;
  const toRows = (w: Float64Array) => Array.from({ length: k }, (_, c) => Array.from(w.subarray(c * d, (c + 1) * d)));
  if (Math.min(...counts) < MIN_PER_CLASS_FOR_SOFTMAX) {
    const means = names.map((_, c) => {
      const m = new Float64Array(d);
      z.forEach((row, i) => { if (y[i] === c) for (let j = 0; j < d; j++) m[j]! += row[j]! / counts[c]!; });
      return m;
    });
    return { ...head, method: "nearest-class-mean", weights: means.map((m) => Array.from(m)),
             bias: means.map((m) => -0.5 * dot(m, m)), temperature: 1, regularization: null, held_out: null };
  }
  let regularization = DEFAULT_REGULARIZATION, temperature = 1;
  let heldOut: Head["held_out"] = null;
  const total = REGULARIZATIONS.length + 1;
  if (Math.min(...counts) >= MIN_PER_CLASS_TO_HOLD_OUT) {
    const mask = heldOutMask(y);
    const fitZ = z.filter((_, i) => !mask[i]), fitY = y.filter((_, i) => !mask[i]);
    const checkZ = z.filter((_, i) => mask[i]), checkY = y.filter((_, i) => mask[i]);
    const scores = REGULARIZATIONS.map((candidate, i) => {
      const { w, b } = softmaxFit(fitZ, fitY, k, candidate);
      onProgress?.({ done: i + 1, total });
      return logLoss(logits(checkZ, w, b, k, d), checkY);
    });
    let best = 0;  // ties: the stronger penalty
    scores.forEach((score, i) => { if (score <= scores[best]!) best = i; });
    regularization = REGULARIZATIONS[best]!;
    const { w, b } = softmaxFit(fitZ, fitY, k, regularization);
    const rows = logits(checkZ, w, b, k, d);
    temperature = fitTemperature(rows, checkY);
    const correct = rows.filter((row, i) => argmax(row) === checkY[i]).length;
    heldOut = { images: checkY.length, accuracy: correct / checkY.length, log_loss: logLoss(rows, checkY, temperature) };
  }
  const { w, b } = softmaxFit(z, y, k, regularization);
  onProgress?.({ done: total, total });
  return { ...head, method: "softmax", weights: toRows(w), bias: Array.from(b), temperature, regularization,
           held_out: heldOut };
}

function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

const isNumber = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

/** Why `head` cannot be used (with the model whose features have `fingerprint`), or null: cifarkit's
 * teach.head_problem, the same rules. */
export function headProblem(head: unknown, fingerprint?: string): string | null {
  if (typeof head !== "object" || head === null || (head as Head).format !== HEAD_FORMAT) {
    return `it is not a cifarkit head (no "format": "${HEAD_FORMAT}"); make one with \`teach\``;
  }
  const h = head as Head;
  if (h.version !== HEAD_VERSION) return `its version is ${JSON.stringify(h.version)} and this library reads version ${HEAD_VERSION}`;
  if (typeof h.model !== "object" || h.model === null || !Number.isInteger(h.model.feature_dim)) {
    return "it does not say which model it was taught on";
  }
  if (fingerprint !== undefined && h.model.fingerprint !== fingerprint) {
    return "it was taught on another model's features (its fingerprint differs); teach it again on this model";
  }
  if (!Array.isArray(h.labels) || !h.labels.every((l) => typeof l === "string")) return "its labels are not a list of names";
  try {
    checkLabels(h.labels);
  } catch (error) {
    return (error as Error).message;
  }
  if (new Set(h.labels).size !== h.labels.length) return "its labels repeat a name";
  const d = h.model.feature_dim, k = h.labels.length;
  const vector = (v: unknown, length: number) => Array.isArray(v) && v.length === length && v.every(isNumber);
  const s = (h.standardize ?? {}) as Head["standardize"];
  if (!Array.isArray(h.weights) || h.weights.length !== k || !h.weights.every((row) => vector(row, d))) {
    return `its weights are not ${k} rows of ${d} finite numbers`;
  }
  if (!vector(h.bias, k)) return `its bias is not ${k} finite numbers`;
  if (!vector(s.mean, d) || !vector(s.scale, d)) return `its standardize.mean and .scale are not ${d} finite numbers`;
  if (!s.scale.every((v) => v > 0)) return "its standardize.scale must be positive";
  if (!(isNumber(h.temperature) && h.temperature >= 0.05 && h.temperature <= 20)) {
    return "its temperature must be a number in [0.05, 20]";
  }
  return null;
}

/** softmax((standardised features . W^T + b) / temperature) for one picture's features. */
export function headProbabilities(head: Head, features: ArrayLike<number>): Float64Array {
  const { mean, scale } = head.standardize;
  const z = Float64Array.from({ length: mean.length }, (_, j) => (features[j]! - mean[j]!) / scale[j]!);
  const row = Float64Array.from(head.weights, (w, c) => head.bias[c]! + dot(Float64Array.from(w), z));
  return logSoftmax(row, head.temperature).map(Math.exp);
}
