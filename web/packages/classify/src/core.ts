/**
 * What Node.js and the browser share: the model's metadata and its checks, the typed errors, raw pixels,
 * and the classifier itself (decode -> Pillow-exact 32x32 pixels -> batches through ONNX Runtime -> ranked
 * `{ label, score, index, superclass? }`). Each platform entry (node.ts, browser.ts) supplies its decoder and
 * its ONNX Runtime.
 */
import type { InferenceSession, Tensor } from "onnxruntime-common";
import { EXPORT_SCHEMA } from "./export-schema.js";
import { DEFAULT_FIT, SIZE, toModelPixels, type Fit, type RGBAImage } from "./preprocess.js";
import { fitHead, headProbabilities, headProblem, TeachError, type Head, type TeachProgress } from "./teach.js";

export * from "./teach.js";

/** The same limit as the Python side (cifarkit.images.MAX_PIXELS): larger pictures are refused, not decoded. */
export const MAX_PIXELS = 40_000_000;

import { CifarkitError } from "./errors.js";

export { CifarkitError };
/** The input is not a picture this platform can decode (empty, text, truncated, unsupported...). */
export class NotAnImageError extends CifarkitError {}
/** The picture has more than MAX_PIXELS pixels: refused before it is decoded (decompression bombs). */
export class ImageTooLargeError extends CifarkitError {}
/** The model is missing, damaged, or not a cifarkit export. */
export class ModelLoadError extends CifarkitError {}
/** The classifier was disposed: before a call, or while a call was in flight. */
export class ClassifierDisposedError extends CifarkitError {}

/** The metadata versions this library reads (export-metadata.schema.json's "version"). Version 2 adds the
 * `features` and `outlier` fields; a version 1 export still classifies, but cannot say "none of these". */
export const MODEL_INFO_VERSIONS = [1, 2] as const;

/** model.json, as `cifarkit export` writes it beside model.onnx: the fields of export-metadata.schema.json
 * (cifarkit's published contract; test/schema.test.ts checks the two agree). */
export interface ModelInfoFields {
  format: "cifarkit-onnx";
  /** absent in exports from before the field existed: version 1 */
  version?: number;
  model: string;
  dataset: string;
  classes: string[];
  superclasses: string[] | null;
  fine_to_coarse: number[] | null;
  input?: { name: string; dtype: string; shape: (string | number)[]; layout: string; channels: string;
            range: number[]; resize?: string };
  output?: { name: string; dtype: string; shape: (string | number)[] };
  /** version 2: the `features` output, (batch, D), and the fingerprint of the network that makes them */
  features?: { name: "features"; dtype: string; shape: (string | number)[]; fingerprint: string };
  /** version 2, where fitted: the `outlier_score` output; a picture is known when its score <= threshold */
  outlier?: { name: "outlier_score"; dtype: string; shape: (string | number)[]; score: string; threshold: number;
              known_rate?: number | null };
  preprocess?: Record<string, unknown>;
  /** baked into the model: its probabilities are softmax(logits / temperature) */
  temperature?: number;
  source_checkpoint?: string;
  source_checkpoint_sha256?: string;
  step?: number;
  val?: { top1?: number; [key: string]: unknown } | null;
  test?: { top1?: number; [key: string]: unknown } | null;
  parity?: Record<string, unknown>;
  quantization?: Record<string, unknown>;
  model_file?: string;
  model_sha256?: string;
}
export type ModelInfo = ModelInfoFields & { [key: string]: unknown };

/** Every field ModelInfoFields declares (the schema test compares them with the schema's properties). */
export const MODEL_INFO_FIELDS = [
  "format", "version", "model", "dataset", "classes", "superclasses", "fine_to_coarse", "input", "output",
  "features", "outlier", "preprocess", "temperature", "source_checkpoint", "source_checkpoint_sha256", "step", "val", "test", "parity",
  "quantization", "model_file", "model_sha256",
] as const satisfies readonly (keyof ModelInfoFields)[];
// ...and none is left out of the list: a field added to the interface alone fails to compile here
type UnlistedField = Exclude<keyof ModelInfoFields, (typeof MODEL_INFO_FIELDS)[number]>;
const everyFieldListed: [UnlistedField] extends [never] ? true : never = true;
void everyFieldListed;

/** One ranked class: best first. `superclass` is there for models that have them (CIFAR-100). */
export interface Classification {
  label: string;
  score: number;
  index: number;
  superclass?: string;
}

/** Decoded pixels: 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) interleaved 8-bit channels, row-major. */
export interface RawPixels {
  data: Uint8Array | Uint8ClampedArray;
  width: number;
  height: number;
  channels: 1 | 2 | 3 | 4;
}

/** A picture's ranked classes, and whether it looks like one of them at all (cifarkit's `assess`). */
export interface Assessment {
  ranked: Classification[];
  /** higher = less likely one of the model's classes; null for a model exported without an outlier score */
  outlierScore: number | null;
  /** false: none of the model's classes (the ranked ones are only the closest); null as outlierScore */
  known: boolean | null;
}

export interface ClassifyOptions {
  /** classes per picture (default 5) */
  topK?: number;
  /** how a picture becomes square before it is shrunk to 32x32: "squash" (default) or "crop" (its centre) */
  fit?: Fit;
}

export function isRawPixels(input: unknown): input is RawPixels {
  return typeof input === "object" && input !== null && "data" in input && "width" in input && "height" in input &&
    "channels" in input;
}

/** Width and height read from the header of a PNG, GIF, JPEG, WebP or BMP file (the first bytes only), or
 * null for another format or a header that does not say: so that a picture over the pixel limit is refused
 * before a decoder allocates it (a 48 KB PNG can declare 20000x20000 pixels). */
export function headerSize(bytes: Uint8Array): { width: number; height: number } | null {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const ascii = (at: number, text: string) =>
    bytes.length >= at + text.length && [...text].every((c, i) => bytes[at + i] === c.charCodeAt(0));
  if (ascii(1, "PNG") && bytes.length >= 24) return { width: view.getUint32(16), height: view.getUint32(20) };
  if ((ascii(0, "GIF87a") || ascii(0, "GIF89a")) && bytes.length >= 10) {
    return { width: view.getUint16(6, true), height: view.getUint16(8, true) };
  }
  if (ascii(0, "BM") && bytes.length >= 26) {
    return { width: Math.abs(view.getInt32(18, true)), height: Math.abs(view.getInt32(22, true)) };
  }
  if (ascii(0, "RIFF") && ascii(8, "WEBP") && bytes.length >= 30) {
    if (ascii(12, "VP8X")) {
      return { width: 1 + (view.getUint32(24, true) & 0xffffff), height: 1 + (view.getUint32(27, true) & 0xffffff) };
    }
    if (ascii(12, "VP8L")) {
      const bits = view.getUint32(21, true);
      return { width: 1 + (bits & 0x3fff), height: 1 + ((bits >>> 14) & 0x3fff) };
    }
    if (ascii(12, "VP8 ")) return { width: view.getUint16(26, true) & 0x3fff, height: view.getUint16(28, true) & 0x3fff };
  }
  if (bytes[0] === 0xff && bytes[1] === 0xd8) {  // JPEG: walk the segments to the first start-of-frame
    let at = 2;
    while (at + 9 < bytes.length) {
      if (bytes[at] !== 0xff) return null;
      const marker = bytes[at + 1]!;
      if (marker === 0xff) { at += 1; continue; }
      if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
        return { width: view.getUint16(at + 7), height: view.getUint16(at + 5) };
      }
      at += 2 + view.getUint16(at + 2);
    }
  }
  return null;
}

export function checkSize(width: number, height: number, what = "the picture"): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new NotAnImageError(`${what} has no pixels (${width}x${height})`);
  }
  if (width * height > MAX_PIXELS) {
    throw new ImageTooLargeError(`${what}: ${width}x${height} pixels is over the limit of ` +
      `${MAX_PIXELS.toLocaleString("en-US")} (a decompression bomb?); refusing to decode it`);
  }
}

/** Raw pixels of 1-4 channels as RGBA, as Pillow converts L, LA and RGB. */
export function rawToRGBA(raw: RawPixels): RGBAImage {
  const { width, height, channels, data } = raw;
  checkSize(width, height, "raw pixels");
  if (![1, 2, 3, 4].includes(channels)) throw new NotAnImageError(`raw pixels need 1-4 channels, got ${channels}`);
  if (!(data instanceof Uint8Array || data instanceof Uint8ClampedArray)) {
    throw new NotAnImageError("raw pixels must be a Uint8Array (8 bits per channel)");
  }
  if (data.length !== width * height * channels) {
    throw new NotAnImageError(`raw pixels: ${data.length} bytes is not ${width}x${height}x${channels}`);
  }
  if (channels === 4) return { width, height, data };
  const out = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    const grey = channels <= 2;
    out[i * 4] = data[i * channels]!;
    out[i * 4 + 1] = grey ? data[i * channels]! : data[i * channels + 1]!;
    out[i * 4 + 2] = grey ? data[i * channels]! : data[i * channels + 2]!;
    out[i * 4 + 3] = channels === 2 ? data[i * 2 + 1]! : 255;
  }
  return { width, height, data: out };
}

type Schema = { type?: string | readonly string[]; const?: unknown; enum?: readonly unknown[]; required?: readonly string[];
                properties?: Record<string, Schema>; items?: Schema; minItems?: number };

const JSON_TYPES: Record<string, (value: unknown) => boolean> = {
  object: (v) => typeof v === "object" && v !== null && !Array.isArray(v), array: Array.isArray,
  string: (v) => typeof v === "string", integer: Number.isInteger, number: (v) => typeof v === "number",
  null: (v) => v === null, boolean: (v) => typeof v === "boolean",
};
const PYTHON_TYPE_NAMES = (v: unknown) => v === null ? "NoneType" : Array.isArray(v) ? "list"
  : typeof v === "string" ? "str" : typeof v === "boolean" ? "bool" : typeof v === "number"
  ? (Number.isInteger(v) ? "int" : "float") : typeof v === "object" ? "dict" : typeof v;

/** What in `value` breaks `schema`: the same rules, in the same order, as cifarkit's schema_problems. */
function schemaProblems(value: unknown, schema: Schema, where = "metadata"): string[] {
  const problems: string[] = [];
  if ("const" in schema && value !== schema.const) {
    problems.push(`${where} must be ${JSON.stringify(schema.const)}, got ${JSON.stringify(value)}`);
  }
  if (schema.enum && !schema.enum.some((option) => option === value)) {
    problems.push(`${where} must be one of ${schema.enum.map((o) => JSON.stringify(o)).join(", ")}, ` +
                  `got ${JSON.stringify(value)}`);
  }
  if (schema.type !== undefined) {
    const kinds = typeof schema.type === "string" ? [schema.type] : schema.type;
    if (!kinds.some((k) => JSON_TYPES[k]!(value))) {
      return [...problems, `${where} should be ${kinds.join(" or ")}, got ${PYTHON_TYPE_NAMES(value)}`];
    }
  }
  if (JSON_TYPES.object!(value)) {
    const object = value as Record<string, unknown>;
    for (const key of schema.required ?? []) {
      if (!Object.hasOwn(object, key)) problems.push(`${where} lacks '${key}'`);
    }
    for (const [key, sub] of Object.entries(schema.properties ?? {})) {
      if (Object.hasOwn(object, key)) problems.push(...schemaProblems(object[key], sub, `${where}.${key}`));
    }
  }
  if (Array.isArray(value)) {
    if (value.length < (schema.minItems ?? 0)) problems.push(`${where} needs at least ${schema.minItems} items`);
    if (schema.items) value.forEach((item, i) => problems.push(...schemaProblems(item, schema.items!, `${where}[${i}]`)));
  }
  return problems;
}

const FORBIDDEN_KEYS = ["__proto__", "constructor", "prototype"];

function forbiddenKey(value: unknown, where = "metadata"): string | null {
  if (Array.isArray(value)) {
    for (const [i, item] of value.entries()) {
      const found = forbiddenKey(item, `${where}[${i}]`);
      if (found) return found;
    }
  } else if (typeof value === "object" && value !== null) {
    for (const key of Object.keys(value)) {
      if (FORBIDDEN_KEYS.includes(key)) return `${where} holds a key named '${key}'`;
      const found = forbiddenKey((value as Record<string, unknown>)[key], `${where}.${key}`);
      if (found) return found;
    }
  }
  return null;
}

/** Every reason to refuse this model.json (empty: it is read): the rules of cifarkit's
 * export_metadata.metadata_problems, which serve-web applies, so that both give one verdict. */
export function metadataProblems(info: unknown): string[] {
  if (typeof info !== "object" || info === null || Array.isArray(info)) return ["it is not a JSON object"];
  const value = info as Record<string, unknown>;
  if (value.format !== "cifarkit-onnx") return ["it is not a cifarkit export (no \"format\": \"cifarkit-onnx\")"];
  const version = Object.hasOwn(value, "version") ? value.version : 1;
  if (!(MODEL_INFO_VERSIONS as readonly unknown[]).includes(version)) {
    return [`its metadata version is ${JSON.stringify(version)} and this library reads versions ` +
      `${MODEL_INFO_VERSIONS.join(", ")}; export the model with a matching cifarkit, or upgrade @cifarkit/classify`];
  }
  const schema = EXPORT_SCHEMA as unknown as Schema;
  const problems = schemaProblems(value, { ...schema, required: schema.required!.filter((k) => k !== "version") });
  const forbidden = forbiddenKey(value);
  if (forbidden) problems.push(forbidden);
  const { classes, fine_to_coarse: coarse, superclasses: names } = value;
  if (Array.isArray(classes) && Array.isArray(coarse) && (coarse.length !== classes.length || !Array.isArray(names) ||
      !coarse.every((c) => Number.isInteger(c) && c >= 0 && c < names.length))) {
    problems.push("its superclass map does not give each class a superclass it names");
  }
  const temperature = value.temperature;
  if (Object.hasOwn(value, "temperature") && !(typeof temperature === "number" && Number.isFinite(temperature) &&
      temperature >= 0.05 && temperature <= 20)) {
    problems.push("its temperature must be a number in [0.05, 20.0]");
  }
  if (Object.hasOwn(value, "model_sha256") && !(typeof value.model_sha256 === "string" &&
      /^[0-9a-f]{64}$/.test(value.model_sha256))) {
    problems.push("its model_sha256 is not a SHA-256 digest (64 hexadecimal digits)");
  }
  const features = value.features as Record<string, unknown> | undefined;
  if (features && typeof features === "object" && !(typeof features.fingerprint === "string" &&
      /^[0-9a-f]{64}$/.test(features.fingerprint))) {
    problems.push("its features fingerprint is not a SHA-256 digest (64 hexadecimal digits)");
  }
  const outlier = value.outlier as Record<string, unknown> | undefined;
  if (outlier && typeof outlier === "object" && !(typeof outlier.threshold === "number" &&
      Number.isFinite(outlier.threshold))) {
    problems.push("its outlier threshold is not a finite number");
  }
  const parity = value.parity as Record<string, unknown> | undefined;
  if (parity && typeof parity === "object" && Object.hasOwn(parity, "max_abs_difference") &&
      !(typeof parity.max_abs_difference === "number" && Number.isFinite(parity.max_abs_difference))) {
    problems.push("its outputs were not finite numbers when it was exported (a model that diverged)");
  }
  return problems;
}

/** model.json must be a cifarkit export of a version this library reads, complete and consistent: the verdict
 * serve-web gives (see metadataProblems). */
export function checkModelInfo(info: unknown, where: string): ModelInfo {
  const problems = metadataProblems(info);
  if (problems.length) {
    const first = problems[0]!;
    if (first.startsWith("it is not")) {
      throw new ModelLoadError(`${where} is not the metadata of a cifarkit export (make one with ` +
        `\`cifarkit export --onnx model.onnx\`): ${first}`);
    }
    throw new ModelLoadError(`${where}: ${first}${first.includes("; export") ? "" : "; export the model again"}`);
  }
  return info as ModelInfo;
}

/** The session must be a cifarkit export that agrees with its metadata: named input and output, and one
 * probe picture run through it gives one float32 probability per class that model.json names. A model.json
 * from another export (100 classes named, 1,000 outputs) is refused here, not answered with wrong labels. */
export async function checkSession(session: InferenceSession, where: string, info: ModelInfo,
                                   tensor: (pixels: Uint8Array, batch: number) => Tensor): Promise<void> {
  if (!session.inputNames.includes("pixels") || !session.outputNames.includes("probabilities")) {
    throw new ModelLoadError(`${where} is an ONNX model but not a cifarkit export (it has inputs ` +
      `${session.inputNames.join(", ")} and outputs ${session.outputNames.join(", ")}; a cifarkit model takes ` +
      "`pixels` and gives `probabilities`)");
  }
  for (const declared of [info.features?.name, info.outlier?.name]) {
    if (declared !== undefined && !session.outputNames.includes(declared)) {
      throw new ModelLoadError(`${where} has no \`${declared}\` output but its metadata describes one: the model and ` +
        "its model.json do not belong together (export them again with `cifarkit export`)");
    }
  }
  let output: Tensor | undefined;
  try {
    output = (await session.run({ pixels: tensor(new Uint8Array(SIZE * SIZE * 3), 1) }))["probabilities"];
  } catch (error) {
    throw new ModelLoadError(`${where} does not take a batch of ${SIZE}x${SIZE}x3 uint8 pictures as \`pixels\` ` +
      `(${String(error).split("\n")[0]})`, { cause: error });
  }
  if (output?.type !== "float32" || output.data.length !== info.classes.length) {
    throw new ModelLoadError(`${where} gives ${output?.data.length ?? 0} ${output?.type ?? ""} outputs per picture but ` +
      `its metadata names ${info.classes.length} classes: the model and its model.json do not belong together ` +
      "(export them again with `cifarkit export`)");
  }
}

/** How to open a model, on either platform (each option says where it applies). */
export interface LoadOptions {
  /** model.json's contents (default: read or fetched from beside the model; required when the model is bytes) */
  info?: ModelInfo;
  /** pictures per ONNX Runtime call (default 64) */
  batchSize?: number;
  /** execution providers, tried in order (browsers: default WebGPU where present, then "wasm"; Node.js: "cpu"
   * with onnxruntime-node, "wasm" with onnxruntime-web) */
  executionProviders?: string[];
  /** Node.js: ONNX Runtime threads within an operator (default: ONNX Runtime's choice; 1 for WebAssembly) */
  threads?: number;
  /** Node.js: which ONNX Runtime runs the model. Default: onnxruntime-node (native) where it is installed, else
   * onnxruntime-web (WebAssembly, installed with this package: no install script, no download) */
  runtime?: "onnxruntime-node" | "onnxruntime-web";
  /** browsers: where onnxruntime-web's .wasm files are served from (default: onnxruntime-web's own choice) */
  wasmPaths?: string;
}

/** The part of an ONNX Runtime module (onnxruntime-node or onnxruntime-web) a classifier uses. */
export interface OrtModule {
  InferenceSession: { create(model: Uint8Array, options?: InferenceSession.SessionOptions): Promise<InferenceSession> };
  Tensor: new (type: "uint8", data: Uint8Array, dims: readonly number[]) => Tensor;
}

/** What a loader has found before opening a model: its bytes, its metadata, and its platform's runtime. */
export interface ModelSource<Input> {
  bytes: Uint8Array;
  /** the model, as error messages name it (a path, a URL, "the model bytes") */
  where: string;
  info: unknown;
  /** the metadata, as error messages name it */
  infoWhere: string;
  ort: OrtModule;
  /** execution providers to try, in order, unless `options.executionProviders` names others */
  backends: string[];
  decode: (input: Input) => Promise<RGBAImage>;
  sessionOptions?: InferenceSession.SessionOptions;
}

/** The one way a model is opened, on every platform: metadata and integrity checks, then a session on the
 * first execution provider that loads it and passes the probe (checkSession). */
export async function openClassifier<Input>(source: ModelSource<Input>, options: LoadOptions = {}): Promise<Classifier<Input>> {
  const { bytes, where, ort } = source;
  const info = checkModelInfo(source.info, source.infoWhere);
  await checkModelBytes(bytes, info, where);
  const tensor = (pixels: Uint8Array, batch: number): Tensor => new ort.Tensor("uint8", pixels, [batch, SIZE, SIZE, 3]);
  let lastError: unknown = null;
  for (const backend of options.executionProviders ?? source.backends) {
    try {
      const session = await ort.InferenceSession.create(bytes, { ...source.sessionOptions, executionProviders: [backend] });
      await checkSession(session, where, info, tensor);
      return new Classifier<Input>({ session, tensor, decode: source.decode, backend }, info,
                                   options.batchSize ?? DEFAULT_BATCH);
    } catch (error) {
      if (error instanceof ModelLoadError) throw error;
      lastError = error;
    }
  }
  throw new ModelLoadError(`${where} is not an ONNX model ONNX Runtime can load (${String(lastError).split("\n")[0]})`,
                           { cause: lastError });
}

/** model.json's text as metadata (a clear error when it is not JSON). */
/** model.json's bytes as JSON: strict UTF-8 without a byte-order mark, as cifarkit reads it (a BOM or bytes
 * that are not UTF-8 are refused on both sides). */
export function parseModelInfo(bytes: Uint8Array, where: string): unknown {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes));
  } catch {
    throw new ModelLoadError(`${where} is not JSON (it should be the model.json that \`cifarkit export\` wrote)`);
  }
}

/** What a platform gives the classifier: a session, a way to make input tensors, and a decoder. */
export interface Runtime<Input> {
  session: InferenceSession;
  tensor: (pixels: Uint8Array, batch: number) => Tensor;
  decode: (input: Input) => Promise<RGBAImage>;
  backend: string;
}

export const DEFAULT_BATCH = 64;

export class Classifier<Input> {
  /** @internal: use `loadClassifier` */
  constructor(private readonly runtime: Runtime<Input>, readonly info: ModelInfo, readonly batchSize = DEFAULT_BATCH) {}

  /** Where the model runs: "cpu" in Node.js, "webgpu" or "wasm" in a browser. */
  get backend(): string {
    return this.runtime.backend;
  }

  /** The class names, in the model's order. */
  get labels(): readonly string[] {
    return this.info.classes;
  }

  /** The 32x32x3 uint8 pixels (NHWC, RGB) the model sees for `input`, exactly as `cifarkit predict` makes them
   * (with the same `fit`). */
  async pixels(input: Input, fit: Fit = DEFAULT_FIT): Promise<Uint8Array> {
    return toModelPixels(await this.runtime.decode(input), fit);
  }

  /** Rank the classes of one picture, or of each picture of a list (batched). */
  classify(input: Input, options?: ClassifyOptions): Promise<Classification[]>;
  classify(inputs: Input[], options?: ClassifyOptions): Promise<Classification[][]>;
  async classify(input: Input | Input[], options: ClassifyOptions = {}): Promise<Classification[] | Classification[][]> {
    return overPictures(input, (item) => this.pixels(item, options.fit), (pixels) => this.classifyPixels(pixels, options));
  }

  /** Rank the classes of one picture (or each of a list) and say whether it looks like one of them at all. */
  assess(input: Input, options?: ClassifyOptions): Promise<Assessment>;
  assess(inputs: Input[], options?: ClassifyOptions): Promise<Assessment[]>;
  async assess(input: Input | Input[], options: ClassifyOptions = {}): Promise<Assessment | Assessment[]> {
    return overPictures(input, (item) => this.pixels(item, options.fit), (pixels) => this.assessPixels(pixels, options));
  }

  /** Rank prepared 32x32x3 pixels (from `pixels`), in batches of `batchSize`. */
  async classifyPixels(pixels: Uint8Array[], options: ClassifyOptions = {}): Promise<Classification[][]> {
    return (await this.assessPixels(pixels, options)).map((a) => a.ranked);
  }

  /** `classifyPixels` with each picture's outlier score and verdict (null for a model without them). */
  async assessPixels(pixels: Uint8Array[], options: ClassifyOptions = {}): Promise<Assessment[]> {
    const topK = options.topK ?? 5;
    if (!Number.isInteger(topK) || topK < 1) throw new RangeError(`topK must be a whole number >= 1, got ${topK}`);
    const out: Assessment[] = [];
    const threshold = this.info.outlier?.threshold;
    const classes = this.info.classes.length;
    for await (const { count, result } of this.runBatches(pixels)) {
      const probabilities = result["probabilities"]!.data as Float32Array;
      const scores = threshold === undefined ? undefined : result["outlier_score"]?.data as Float32Array | undefined;
      for (let i = 0; i < count; i++) {
        const outlierScore = scores?.[i] ?? null;
        out.push({ ranked: this.rank(probabilities.subarray(i * classes, (i + 1) * classes), topK), outlierScore,
                   known: outlierScore === null ? null : outlierScore <= threshold! });
      }
    }
    return out;
  }

  /** Prepared pixels through the session in batches of `batchSize`: each batch's size and outputs. */
  private async *runBatches(pixels: Uint8Array[]):
      AsyncGenerator<{ count: number; result: InferenceSession.OnnxValueMapType }> {
    const size = SIZE * SIZE * 3;
    for (let start = 0; start < pixels.length; start += this.batchSize) {
      const chunk = pixels.slice(start, start + this.batchSize);
      const batch = new Uint8Array(chunk.length * size);
      chunk.forEach((p, i) => {
        if (p.length !== size) throw new NotAnImageError(`prepared pixels must be ${size} bytes, got ${p.length}`);
        batch.set(p, i * size);
      });
      if (this.disposed) throw new ClassifierDisposedError("this classifier was disposed; load another to classify");
      let result: InferenceSession.OnnxValueMapType;
      try {
        result = await this.runtime.session.run({ pixels: this.runtime.tensor(batch, chunk.length) });
      } catch (error) {
        if (this.disposed) {  // dispose() released the session under this call: say so, typed
          throw new ClassifierDisposedError("this classifier was disposed while it was classifying", { cause: error });
        }
        throw error;
      }
      yield { count: chunk.length, result };
    }
  }

  /** The `features` output (the penultimate layer, D numbers) for prepared pixels, in batches. */
  async featuresOfPixels(pixels: Uint8Array[]): Promise<Float32Array[]> {
    if (!this.info.features) {
      throw new TeachError("this model was exported without features (metadata version 1): export it again with " +
                           "cifarkit to teach it");
    }
    const out: Float32Array[] = [];
    for await (const { count, result } of this.runBatches(pixels)) {
      const data = result["features"]!.data as Float32Array, d = data.length / count;
      for (let i = 0; i < count; i++) out.push(data.slice(i * d, (i + 1) * d));
    }
    return out;
  }

  /** Teach new classes from labelled pictures: a head on this model's features (see teach.ts), in seconds. */
  async teach(examples: { label: string; image: Input }[], options: TeachOptions = {}): Promise<TaughtClassifier<Input>> {
    if (!Array.isArray(examples)) throw new TeachError("examples must be a list of { label, image }");
    const pixels = [];
    for (const { image } of examples) pixels.push(await this.pixels(image, options.fit));
    const features = await this.featuresOfPixels(pixels);
    const head = fitHead(features, examples.map((e) => e.label), this.info.features!.fingerprint, options.onProgress);
    return new TaughtClassifier(this, head);
  }

  /** A classifier for the classes of a head taught on this model (`toJSON()` of a taught one, or head.json). */
  withHead(head: unknown): TaughtClassifier<Input> {
    const problem = headProblem(head, this.info.features?.fingerprint ?? "");
    if (problem) throw new TeachError(`the head cannot be used with this model: ${problem}`);
    return new TaughtClassifier(this, head as Head);
  }

  private rank(probabilities: Float32Array, topK: number): Classification[] {
    const order = Array.from(probabilities.keys()).sort((a, b) => probabilities[b]! - probabilities[a]! || a - b);
    const { fine_to_coarse: toCoarse, superclasses } = this.info;
    return order.slice(0, topK).map((index) => {
      const item: Classification = { label: this.info.classes[index] ?? String(index), score: probabilities[index]!,
                                     index };
      const coarse = toCoarse?.[index];
      if (coarse !== undefined && superclasses?.[coarse] !== undefined) item.superclass = superclasses[coarse];
      return item;
    });
  }

  private disposed = false;

  /** Free the ONNX Runtime session. Calls in flight, and later ones, fail with ClassifierDisposedError. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.runtime.session.release();
  }
}

/** sha256 of bytes as hex, with the platform's Web Crypto (Node.js 18+ and browsers). */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await globalThis.crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The checks every loader makes: metadata, integrity (when the metadata pins a sha256), session interface. */
export async function checkModelBytes(bytes: Uint8Array, info: ModelInfo, where: string): Promise<void> {
  if (bytes.length === 0) throw new ModelLoadError(`${where} is empty`);
  if (info.model_sha256 && (await sha256Hex(bytes)) !== info.model_sha256) {
    throw new ModelLoadError(`${where} is damaged or not the file its metadata describes (its sha256 does not ` +
      "match model_sha256); export it again");
  }
}

export interface TeachOptions {
  /** how each picture becomes square (as for classify) */
  fit?: Fit;
  /** called after each fit (for a progress bar) */
  onProgress?: (progress: TeachProgress) => void;
}

/** A model taught new classes: the same `classify` shape, over the head's labels. */
export class TaughtClassifier<Input> {
  constructor(readonly base: Classifier<Input>, readonly head: Head) {}

  get labels(): readonly string[] {
    return this.head.labels;
  }

  classify(input: Input, options?: ClassifyOptions): Promise<Classification[]>;
  classify(inputs: Input[], options?: ClassifyOptions): Promise<Classification[][]>;
  async classify(input: Input | Input[], options: ClassifyOptions = {}): Promise<Classification[] | Classification[][]> {
    return overPictures(input, (item) => this.base.pixels(item, options.fit),
                        (pixels) => this.classifyPixels(pixels, options));
  }

  async classifyPixels(pixels: Uint8Array[], options: ClassifyOptions = {}): Promise<Classification[][]> {
    const topK = options.topK ?? 5;
    if (!Number.isInteger(topK) || topK < 1) throw new RangeError(`topK must be a whole number >= 1, got ${topK}`);
    return (await this.base.featuresOfPixels(pixels)).map((features) => {
      const p = headProbabilities(this.head, features);
      const order = Array.from(p.keys()).sort((a, b) => p[b]! - p[a]! || a - b);
      return order.slice(0, topK).map((index) => ({ label: this.head.labels[index]!, score: p[index]!, index }));
    });
  }

  /** The head as JSON (what `cifarkit-classify teach` writes and `withHead` reads). */
  toJSON(): Head {
    return this.head;
  }
}

/** One picture or a list, each prepared, then run as one list: a list in gives a list out, one picture one answer. */
async function overPictures<Input, Out>(input: Input | Input[], prepare: (item: Input) => Promise<Uint8Array>,
                                        run: (pixels: Uint8Array[]) => Promise<Out[]>): Promise<Out | Out[]> {
  const many = Array.isArray(input);
  const pixels = [];
  for (const item of many ? (input as Input[]) : [input as Input]) pixels.push(await prepare(item));
  const out = await run(pixels);
  return many ? out : out[0]!;
}
